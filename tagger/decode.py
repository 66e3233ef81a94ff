"""Untrusted image bytes to an upright 8-bit RGB picture, in bounded memory and time.

:func:`decode_image` opens the bytes with Pillow restricted to an allowlist of formats (sniffed
from the bytes, never from a file name or content type) and refuses, before any pixel is decoded:

* **degenerate pictures**: shorter side under :data:`MIN_SIDE` (32) pixels, or longer side over
  :data:`MAX_ASPECT` (8) times the shorter: no product photo looks like that, and a model fed a
  letterboxed sliver still answers with confidence (:class:`DegenerateImageError`);
* **decompression bombs** (:class:`DecompressionBombError`): more pixels than
  ``PreprocessConfig.max_pixels``, or an image whose decode would need more than ``max_decode_bytes``
  (:data:`MAX_DECODE_BYTES`, 64 MiB) of pixel buffers at once, a file structure that would keep
  Pillow's pure-Python parsers busy for seconds (more than :data:`MAX_PNG_CHUNKS` PNG chunks,
  :data:`MAX_JPEG_SEGMENTS` JPEG segments before the first scan or :data:`MAX_JPEG_SCANS` scans,
  :data:`MAX_JPEG_JUNK` bytes of junk between segments, an RLE-compressed BMP over
  :data:`MAX_RLE_PIXELS`), and a JPEG whose file is too small for the size it declares.

The memory budget counts, from the header alone, what one decode holds at its peak: Pillow's pixel
buffer (by mode: 1 byte per pixel for 1/L/P, 2 for I;16, and 4 for everything else, RGB included:
Pillow stores RGB pixels in 4 bytes), the decoder's own buffers (a multi-scan JPEG keeps 2 bytes per
DCT coefficient of the whole image; a libtiff strip or tile; libwebp's two RGBA canvases and the
frame Pillow copies out; the RLE BMP decoder's byte string), the text and ICC data a PNG may inflate,
and the flattening to RGB. Where flattening the whole image at once would not fit, it is done in
strips of about 256 K pixels, each reduced (box filter) to the size a JPEG is drafted to; the
picture then comes back smaller than its source, as a large JPEG does. JPEGs are decoded at reduced
size by libjpeg (draft mode): the longer side stays at least twice ``config.image_size``.

So one decode, whatever the bytes, holds at most ``max_decode_bytes`` of pixel and decoder buffers,
plus at most twice the file's size (WebP and libtiff copy the file), plus metadata held as read from
the file (JPEG APP segments, TIFF tags, GIF comments: never more than the file). Peak resident memory
measured per decode of the worst image each mode allows, with the default 64 MiB budget
(``tests/tagger/decode_peak.py``, run as a script; each decode in a fresh process, VmHWM minus VmRSS
before the decode; Pillow 13.0, x86-64):

=================================  ===========  ======================  ==========
worst allowed image                pixels       decoded to              peak (MiB)
=================================  ===========  ======================  ==========
PNG RGB                            4952x3095    full size               58.7
PNG RGB, EXIF orientation 6        4952x3095    282x451, in strips      60.7
PNG RGBA                           4952x3095    451x282, in strips      61.4
PNG L                              8000x5000    471x295, in strips      39.9
PNG I;16 (16-bit grey)             7024x4390    469x293, in strips      62.1
PNG P with transparency            8000x5000    471x295, in strips      40.5
GIF P                              8000x5000    471x295, in strips      40.0
JPEG RGB baseline                  8000x5000    1000x625 (draft 1/8)    3.1
JPEG RGB progressive 4:2:0         5856x3660    732x458 (draft 1/8)     63.3
JPEG CMYK progressive              3616x2260    452x283 (draft 1/8)     63.3
WebP RGB                           2456x1535    full size               58.3
TIFF RGB deflate, one strip        3624x2265    full size               55.0
TIFF F (32-bit float)              4952x3095    451x282, in strips      62.1
BMP RGB                            4952x3095    full size               58.8
=================================  ===========  ======================  ==========

Before these limits, a 16-bit PNG just under ``max_pixels`` (8000x4999) took 464 MiB, an RGBA PNG
305 MiB and a WebP 612 MiB, so memory grew with every preprocessing thread far beyond the fetch cap.
Images of 8:5 shape; "pixels" is the largest such image accepted.

Time is bounded too: every pixel costs C-level work in libjpeg, zlib, libtiff, libwebp or Pillow's
own decoders, and what Pillow parses in Python is capped above (or, for GIF extension blocks, linear
in the file: about 0.2 s per MiB on a busy 2-core machine).

Animations (GIF, APNG, WebP) and multi-page TIFFs give their first frame; later frames are never
read. Every failure on bad input is an :class:`ImageError` whose ``reason`` is a short stable code.
"""

from __future__ import annotations

import io
import logging
import math
from typing import ClassVar

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from tagger.errors import TaggerError
from tagger.image_headers import JPEG_HUFFMAN_SOF, jpeg_blocks, jpeg_layout, png_layout, sniff_format, webp_size
from tagger.preprocess_config import RGB, PreprocessConfig

logger = logging.getLogger(__name__)

MIN_SIDE = 32  # pixels, on the shorter side
MAX_ASPECT = 8  # longer side over shorter side
MAX_DECODE_BYTES = 64 * 2**20  # pixel and decoder buffers one decode may hold at once
MAX_PNG_CHUNKS = 65_536  # Pillow handles each chunk in Python; libpng's 8 KiB IDATs make 1,280 in 10 MiB
MAX_JPEG_SEGMENTS = 1_024  # before the first scan; a camera JPEG has about 20 (an ICC profile up to 255)
MAX_JPEG_SCANS = 100  # progressive encoders write about 10; each scan walks the whole coefficient buffer
MAX_JPEG_JUNK = 64 * 2**10  # bytes between segments, which Pillow skips one at a time
MAX_RLE_PIXELS = 4_000_000  # Pillow decodes RLE BMPs in Python: about 0.1 s per million pixels, or worse

# Phone cameras write multi-picture JPEGs; Pillow's JPEG opener hands them back as "MPO", whose
# first picture is an ordinary JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# JPEGs are decoded (and large images reduced) to a size whose longer side is at least this many times image_size.
_DRAFT_FACTOR = 2
_SNIFF_BYTES = 16  # what Image.open hands to the plugins' accept() functions
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # any other mode: 4
_RGB_BYTES = 4  # Pillow's RGB pixel
_WEBP_DECODER_BYTES = 12  # per pixel: libwebp's current and previous RGBA canvases, and the frame Pillow copies out
_RLE_DECODER_BYTES = 2  # per pixel: the RLE decoder's bytearray and its copy
_COEFFICIENT_BYTES = 128  # per 8x8 block: 64 DCT coefficients of 2 bytes
_WORKSPACE_BYTES = 2**20  # the codecs' own tables and row buffers (libjpeg's measured about 0.6 MiB)
_STRIP_PIXELS = 1 << 18  # source pixels flattened at once on the reduced path
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(TaggerError):
    """The input cannot be turned into a model input; ``reason`` is a short stable code for metrics."""

    reason: ClassVar[str] = "not_an_image"


class EmptyImageError(ImageError):
    """The input has no bytes at all."""

    reason: ClassVar[str] = "not_an_image"


class UnsupportedFormatError(ImageError):
    """The input is an image, but in a format outside :attr:`PreprocessConfig.allowed_formats`."""

    reason: ClassVar[str] = "unsupported_format"


class DecompressionBombError(ImageError):
    """Decoding the image would take more pixels, memory or parsing than the limits allow."""

    reason: ClassVar[str] = "decompression_bomb"


class DegenerateImageError(ImageError):
    """The image is too small (:data:`MIN_SIDE`) or too elongated (:data:`MAX_ASPECT`) to show a product."""

    reason: ClassVar[str] = "degenerate_image"


class ImageDecodeError(ImageError):
    """The image's format is allowed, but its contents are corrupt, truncated or in an unusable colour mode."""

    reason: ClassVar[str] = "decode_failed"


def decode_image(data: bytes, config: PreprocessConfig, *, max_decode_bytes: int = MAX_DECODE_BYTES) -> Image.Image:
    """Decode untrusted image bytes to an 8-bit RGB image, upright and with transparency flattened.

    Large images may come back smaller than their source (JPEGs decoded at reduced size, others
    reduced while flattening when the whole would not fit ``max_decode_bytes``; the longer side
    stays at least twice ``config.image_size``). Raises an :class:`ImageError` subclass on any bad input.
    """
    if not data:
        raise EmptyImageError("The image is empty (0 bytes); send the image file's contents.")
    metadata = _check_structure(data, config, max_decode_bytes)
    img = _open(data, config)
    coefficients = _check_jpeg(data, img) if img.format in ("JPEG", "MPO") else 0
    try:
        img.seek(0)  # first frame of GIF / APNG / animated WebP / multi-page TIFF
        source = img.size
        target = config.image_size * _DRAFT_FACTOR
        _draft(img, target)
        base, transient = _buffers(img, data, metadata, coefficients)
        factor = max(1, max(img.size) // target)
        strips = _reduced_bytes(img, factor)
        _check_budget(img.format, source, img.mode, max(base + transient, base + strips), max_decode_bytes)
        img.load()
        method = _orientation(img)
        full = _flatten_bytes(img) + (_RGB_BYTES * img.width * img.height if method is not None else 0)
        rgb = to_rgb(img, config.pad_colour) if base + full <= max_decode_bytes else _reduce_to_rgb(img, factor, config)
        if rgb is not img:
            img.close()  # the source's buffers go before the rotation allocates
        return rgb if method is None else rgb.transpose(method)
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises a zoo of types (OSError, ValueError, SyntaxError...) on hostile input
        raise ImageDecodeError(
            f"The {img.format} image could not be decoded ({type(exc).__name__}: {exc}); "
            "it is probably truncated or corrupt: re-export or re-upload it."
        ) from exc


def _check_structure(data: bytes, config: PreprocessConfig, budget: int) -> int:
    """Checks on the raw bytes that must come before Pillow parses them; returns the PNG metadata bound."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        layout = png_layout(data, MAX_PNG_CHUNKS)
        if layout.chunks > MAX_PNG_CHUNKS:
            raise DecompressionBombError(
                f"The PNG has more than {MAX_PNG_CHUNKS:,} chunks (tagger.decode.MAX_PNG_CHUNKS); re-export it."
            )
        return layout.metadata_bytes
    size = webp_size(data)  # libwebp allocates its canvases when Pillow opens the file
    if size is not None and "WEBP" in config.allowed_formats:
        width, height = size
        _check_budget("WEBP", size, None, width * height * (_RGB_BYTES + _WEBP_DECODER_BYTES), budget)
    return 0


def _open(data: bytes, config: PreprocessConfig) -> ImageFile.ImageFile:
    """Read the header only, enforcing the format allowlist, the pixel limit and the picture's geometry."""
    try:
        img = Image.open(io.BytesIO(data), formats=config.allowed_formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (its warning too, where warnings are turned into errors).
        raise DecompressionBombError(
            f"The image is too large to decode safely ({exc}); resize it to at most {config.max_pixels:,} pixels."
        ) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data, config) from exc
    except Exception as exc:
        raise ImageDecodeError(
            f"The image header could not be read ({type(exc).__name__}: {exc}); re-export or re-upload the image."
        ) from exc
    fmt = img.format or "unknown"
    if fmt not in config.allowed_formats and _FORMAT_ALIASES.get(fmt) not in config.allowed_formats:
        raise UnsupportedFormatError(
            f"{fmt} images are not accepted; convert it to one of {', '.join(config.allowed_formats)}."
        )
    width, height = img.size
    if width * height > config.max_pixels:
        raise DecompressionBombError(
            f"The image is {width}x{height} = {width * height:,} pixels, over the limit of {config.max_pixels:,} "
            "(PreprocessConfig.max_pixels); downscale it before sending it."
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"The {fmt} image declares an empty size {width}x{height}; re-export it.")
    _check_geometry(width, height)
    return img


def _check_geometry(width: int, height: int) -> None:
    shorter, longer = sorted((width, height))
    problems = []
    if longer > MAX_ASPECT * shorter:
        problems.append(f"aspect ratio {_ratio(longer / shorter)}:1 exceeds {MAX_ASPECT}:1")
    if shorter < MIN_SIDE:
        problems.append(f"the minimum is {MIN_SIDE} px on the shorter side")
    if problems:
        raise DegenerateImageError(
            f"The image is {width}x{height} pixels; {' and '.join(problems)}. "
            "A product photo this small or this thin cannot be tagged: send the full picture."
        )


def _check_jpeg(data: bytes, img: ImageFile.ImageFile) -> int:
    """Refuse JPEG structures that cost time out of proportion, and files too small for their declared size.

    Returns the bytes of libjpeg's whole-image coefficient buffer (0 for a single-scan JPEG).
    """
    layout = jpeg_layout(data, MAX_JPEG_SEGMENTS)
    excess = [
        f"{what} ({count:,}, at most {limit:,})"
        for what, count, limit in (
            ("segments before the first scan", layout.segments, MAX_JPEG_SEGMENTS),
            ("scans", layout.scans, MAX_JPEG_SCANS),
            ("junk bytes between segments", layout.junk_bytes, MAX_JPEG_JUNK),
        )
        if count > limit
    ]
    if excess:
        raise DecompressionBombError(f"The JPEG has too many {' and '.join(excess)}; re-export it.")
    coded, allocated = jpeg_blocks(img.size, _sampling(img))
    if layout.sof in JPEG_HUFFMAN_SOF and len(data) * 8 < coded:
        raise ImageDecodeError(
            f"The JPEG declares {img.width}x{img.height} pixels but has only {len(data):,} bytes; even a blank "
            f"picture that size needs {math.ceil(coded / 8):,}: the file is truncated or forged, re-upload it."
        )
    return allocated * _COEFFICIENT_BYTES if layout.multi_scan else 0


def _sampling(img: Image.Image) -> list[tuple[int, int]]:
    """The JPEG components' sampling factors, from Pillow's frame header (``layer``)."""
    return [(int(layer[1]), int(layer[2])) for layer in getattr(img, "layer", [])] or [(1, 1)]


def _draft(img: ImageFile.ImageFile, target: int) -> None:
    """JPEG only (a no-op elsewhere): libjpeg scales by 1/2, 1/4 or 1/8 while both sides stay >= the request."""
    source = img.size
    longer = max(source)
    request = (max(1, math.ceil(source[0] * target / longer)), max(1, math.ceil(source[1] * target / longer)))
    if img.draft("RGB", request) is not None:
        logger.debug("Decoding a %s JPEG at reduced size %s", source, img.size)


def _buffers(img: ImageFile.ImageFile, data: bytes, metadata: int, coefficients: int) -> tuple[int, int]:
    """Bytes the decode holds: (kept until the image is closed, released when loading ends)."""
    pixels = img.width * img.height
    base = _STORAGE_BYTES.get(img.mode, 4) * pixels + metadata + _WORKSPACE_BYTES
    codec = img.tile[0].codec_name if img.tile else ""
    if img.format == "WEBP":
        return base + _WEBP_DECODER_BYTES * pixels + len(data), 0
    if coefficients:
        return base, coefficients
    if codec == "libtiff":
        return base, _tiff_block_bytes(img) + len(data)
    if codec == "bmp_rle":
        if pixels > MAX_RLE_PIXELS:
            raise DecompressionBombError(
                f"The RLE-compressed BMP is {img.width}x{img.height}; at most {MAX_RLE_PIXELS:,} pixels are accepted "
                "(tagger.decode.MAX_RLE_PIXELS: Pillow decodes RLE in Python); save it uncompressed or as PNG."
            )
        return base, _RLE_DECODER_BYTES * pixels
    return base, 0


def _tiff_block_bytes(img: ImageFile.ImageFile) -> int:
    """libtiff's buffer: one decoded strip or tile, as the TIFF's tags declare it."""
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (8,))
    per_pixel = max(4, math.ceil(sum(bits if isinstance(bits, tuple) else (bits,)) / 8))  # the RGBA path uses 4
    if 322 in tags and 323 in tags:
        return int(tags[322]) * int(tags[323]) * per_pixel
    return min(int(tags.get(278, img.height)), img.height) * img.width * per_pixel


def _flatten_bytes(img: Image.Image) -> int:
    """What :func:`to_rgb` allocates beside the source for the whole image."""
    pixels = img.width * img.height
    if img.mode == "I" or img.mode.startswith("I;16"):
        return pixels * (4 + 1 + _RGB_BYTES + 2)  # a 32-bit copy, grey, RGB, and a transparency mask
    if img.has_transparency_data:
        return pixels * (0 if img.mode == "RGBA" else 4) + pixels * _RGB_BYTES  # RGBA copy, RGB canvas
    if img.mode == "F":
        return pixels * (1 + _RGB_BYTES)  # Pillow converts through L
    return 0 if img.mode == "RGB" else pixels * _RGB_BYTES


def _reduced_bytes(img: Image.Image, factor: int) -> int:
    """What :func:`_reduce_to_rgb` allocates beside the source: one strip at a time, and the output twice (rotation)."""
    rows = factor * max(1, _STRIP_PIXELS // (img.width * factor))
    strip_pixels = min(rows, img.height) * img.width
    per_strip = strip_pixels * (_STORAGE_BYTES.get(img.mode, 4) + 4 + 1 + 2 * _RGB_BYTES)
    out = math.ceil(img.width / factor) * math.ceil(img.height / factor) * _RGB_BYTES
    return per_strip + 2 * out


def _check_budget(fmt: str | None, source: tuple[int, int], mode: str | None, need: int, budget: int) -> None:
    if need <= budget:
        return
    width, height = source
    fits = int(width * height * budget / need)
    raise DecompressionBombError(
        f"The {fmt} image is {width}x{height}{f' ({mode})' if mode else ''}: decoding it needs about {_mib(need)} "
        f"MiB, over the {_mib(budget)} MiB one decode may use (tagger.decode.MAX_DECODE_BYTES); downscale it "
        f"(one like it fits up to about {fits:,} pixels) or re-export it."
    )


def _reduce_to_rgb(img: Image.Image, factor: int, config: PreprocessConfig) -> Image.Image:
    """Flatten to RGB one strip at a time, each box-reduced by ``factor``: the whole image is never converted."""
    width, height = img.size
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)), config.pad_colour)
    rows = factor * max(1, _STRIP_PIXELS // (width * factor))  # whole boxes per strip, so strips join seamlessly
    for top in range(0, height, rows):
        strip = to_rgb(img.crop((0, top, width, min(height, top + rows))), config.pad_colour)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    logger.debug("Flattened a %s %s image in strips, reduced by %d", img.size, img.mode, factor)
    return out


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The transposition the EXIF (or XMP) orientation asks for; None when upright or unreadable."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # an unreadable EXIF block should not cost an otherwise good photo
        logger.warning("Ignoring an unreadable EXIF orientation (%s: %s)", type(exc).__name__, exc)
        return None
    return _ORIENTATION.get(value) if isinstance(value, int) else None


def _unidentified(data: bytes, config: PreprocessConfig) -> ImageError:
    """Explain why Pillow could not open the bytes with the allowed formats."""
    sniffed = sniff_format(data[:_SNIFF_BYTES])
    if sniffed is None:
        return ImageError(
            f"The data is not an image (starts with {data[:8]!r}); send a {', '.join(config.allowed_formats)} file."
        )
    if sniffed in config.allowed_formats or _FORMAT_ALIASES.get(sniffed) in config.allowed_formats:
        return ImageDecodeError(
            f"The data starts like a {sniffed} file but its header is unreadable; "
            "it is probably truncated or corrupt: re-export or re-upload it."
        )
    return UnsupportedFormatError(
        f"The data looks like an image in {sniffed} format, which is not accepted; "
        f"convert it to one of {', '.join(config.allowed_formats)}."
    )


def to_rgb(img: Image.Image, pad_colour: RGB) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB; transparent areas become ``pad_colour``. An RGB image is returned as is."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(img, pad_colour)
    if img.has_transparency_data:  # alpha channel, or tRNS / GIF transparency key in img.info
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        canvas = Image.new("RGB", img.size, pad_colour)
        canvas.paste(rgba, (0, 0), rgba)
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image, pad_colour: RGB) -> Image.Image:
    # Pillow's own I -> L conversion clips at 255, turning everything above 1/256 of full scale white:
    # scale first (0..65535 -> 0..255, rounded; the conversion then clips what lies outside).
    wide = img if img.mode in ("I", "I;16") else img.convert("I")
    grey = wide.point(lambda value: value * (1 / 257) + 0.5).convert("L")
    key = img.info.get("transparency")
    if isinstance(key, int):  # 16-bit PNG tRNS: one grey value is fully transparent
        canvas = Image.new("RGB", img.size, pad_colour)
        canvas.paste(grey, (0, 0), Image.fromarray(np.asarray(wide) != key))  # mode 1: opaque where not the key
        return canvas
    return grey.convert("RGB")


def _ratio(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f}"
