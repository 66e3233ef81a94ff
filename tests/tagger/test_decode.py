"""Hostile and degenerate images, made here in every allowed format: each ends in an ImageError, fast.

The pixel-level behaviour of decoding (colour modes, orientation, letterboxing) is in
test_preprocess.py; this module covers what :mod:`tagger.decode` refuses and how it bounds the work
of what it accepts. docs/hostile-inputs.md lists each case with its outcome.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tagger.decode import (
    MAX_JPEG_JUNK,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    MAX_RLE_PIXELS,
    DecompressionBombError,
    DegenerateImageError,
    ImageDecodeError,
    ImageError,
)
from tagger.predict import Predictor
from tagger.preprocess import PreprocessConfig, decode_image, preprocess
from tests.tagger.conftest import encode, png_chunk, png_header

CONFIG = PreprocessConfig()
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SECONDS = 2.0  # every refusal here takes milliseconds; the margin is for a busy shared machine
MIB = 2**20


def refused(data: bytes, error: type[ImageError], match: str | None = None, **kwargs: Any) -> ImageError:
    """Decode ``data``, expecting ``error`` (whose message matches ``match``) within SECONDS."""
    start = time.perf_counter()
    with pytest.raises(error, match=match) as excinfo:
        decode_image(data, CONFIG, **kwargs)
    assert time.perf_counter() - start < SECONDS
    return excinfo.value


def centre(img: Image.Image) -> tuple[int, ...]:
    pixel = img.getpixel((img.width // 2, img.height // 2))
    assert isinstance(pixel, tuple)
    return pixel


# --- crafted headers: each declares a size and carries (almost) no pixel data ---------------------------------------


def jpeg_declaring(width: int, height: int, *, progressive: bool = False, padding: int = 0) -> bytes:
    """A small JPEG whose frame header is patched to ``width`` x ``height``; ``padding`` bytes of comments."""
    data = bytearray(encode(Image.new("RGB", (64, 64), RED), "JPEG", progressive=progressive))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    comments = b""
    while padding > 0:
        size = min(padding, 65533)
        comments += b"\xff\xfe" + struct.pack(">H", size + 2) + b"\0" * size
        padding -= size
    return bytes(data[:2]) + comments + bytes(data[2:])


def gif_declaring(width: int, height: int) -> bytes:
    """A small GIF whose screen and first frame are patched to ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (64, 64), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    frame = 13 + 3 * 2 ** ((data[10] & 7) + 1)  # after the global colour table
    while data[frame] == 0x21:  # extensions: skip their sub-blocks
        frame += 2
        while data[frame]:
            frame += data[frame] + 1
        frame += 1
    data[frame + 5 : frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (64, 64), RED), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A WebP with an extended (VP8X) header whose canvas is patched to ``width`` x ``height``."""
    exif = b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0"
    data = bytearray(encode(Image.new("RGB", (64, 64), RED), "WEBP", exif=exif))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def tiff_declaring(
    width: int,
    height: int,
    *,
    compression: int = 8,
    rows: int | None = None,
    tile: tuple[int, int] | None = None,
    strip_bytes: int = 64,
    pixels: bytes = b"\0" * 64,
    pages: int = 1,
) -> bytes:
    """A little-endian RGB TIFF written by hand: ``pixels`` (one strip or tile) at offset 8, then the IFDs.

    Pages after the first are 1x1 and share the strip; each IFD points to the next.
    """
    ifds = b""
    start = 8 + len(pixels)
    for page in range(pages):
        size = (width, height) if page == 0 else (1, 1)
        entries = [(256, 4, size[0]), (257, 4, size[1]), (258, 3, 8), (259, 3, compression), (262, 3, 2), (277, 3, 3)]
        if tile:
            entries += [(322, 4, tile[0]), (323, 4, tile[1]), (324, 4, 8), (325, 4, strip_bytes)]
        else:
            entries += [(273, 4, 8), (278, 4, rows or size[1]), (279, 4, strip_bytes if page == 0 else 3)]
        ifd = b"".join(
            struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
            for tag, kind, value in sorted(entries)
        )
        following = start + len(ifds) + 2 + len(ifd) + 4
        ifds += struct.pack("<H", len(entries)) + ifd + struct.pack("<I", following if page < pages - 1 else 0)
    return b"II*\0" + struct.pack("<I", start) + pixels + ifds


def bmp_rle8(width: int, height: int, rows: bytes) -> bytes:
    """An 8-bit RLE BMP of ``height`` copies of the encoded row ``rows``."""
    body = rows * height + b"\x00\x01"
    palette = b"".join(struct.pack("<BBBB", 255 - i, 0, i, 0) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 0, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


def png_with(*chunks: bytes, size: tuple[int, int] = (64, 64)) -> bytes:
    """A red RGB PNG with ``chunks`` inserted right after its header."""
    data = encode(Image.new("RGB", size, RED), "PNG")
    return data[:33] + b"".join(chunks) + data[33:]


# --- tiny and degenerate pictures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((1, 1), "image is 1x1 pixels; the minimum is 32 px on the shorter side"),
        ((20000, 1), "aspect ratio 20000:1 exceeds 8:1"),
        ((1, 20000), "aspect ratio 20000:1 exceeds 8:1"),
        ((31, 500), "the minimum is 32 px on the shorter side"),
        ((31, 31), "image is 31x31 pixels; the minimum is 32 px"),
        ((600, 70), "aspect ratio 8.6:1 exceeds 8:1"),
    ],
)
def test_degenerate_pictures_are_refused_before_decoding(
    size: tuple[int, int], message: str, loads: list[tuple[int, int]]
) -> None:
    data = encode(Image.new("RGB", size, BLUE), "PNG")
    error = refused(data, DegenerateImageError, message)
    assert error.reason == "degenerate_image" and loads == []
    with pytest.raises(DegenerateImageError):
        preprocess(data, CONFIG)


@pytest.mark.parametrize("size", [(32, 256), (256, 32), (32, 32), (40, 320)])
def test_smallest_and_thinnest_allowed_pictures_decode(size: tuple[int, int]) -> None:
    assert decode_image(encode(Image.new("RGB", size, BLUE), "PNG"), CONFIG).size == size
    assert preprocess(encode(Image.new("RGB", size, BLUE), "JPEG"), CONFIG).shape == (3, 224, 224)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_degenerate_pictures_are_refused_in_every_format(fmt: str) -> None:
    refused(encode(Image.new("RGB", (16, 16), BLUE), fmt), DegenerateImageError, "minimum is 32 px")
    refused(encode(Image.new("RGB", (900, 100), BLUE), fmt), DegenerateImageError, "aspect ratio 9:1")


def test_predictor_refuses_a_one_pixel_image(tiny_model_dir: Any) -> None:
    """The worker tags with Predictor.preprocess and reports any ImageError as DECODE_FAILED."""
    with pytest.raises(ImageError, match="1x1 pixels"):
        Predictor.load(tiny_model_dir, "cpu").preprocess(encode(Image.new("RGB", (1, 1)), "PNG"))


# --- decompression bombs by dimensions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        jpeg_declaring(60000, 60000),
        png_header(60000, 60000),
        gif_declaring(60000, 60000),
        webp_declaring(16384, 16384),
        bmp_declaring(60000, 60000),
        tiff_declaring(60000, 60000),
    ],
    ids=["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"],
)
def test_dimension_bombs_in_every_format(data: bytes, loads: list[tuple[int, int]]) -> None:
    assert refused(data, DecompressionBombError).reason == "decompression_bomb"
    assert loads == []


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (png_header(8000, 4999, depth=16, colour_type=0), "PNG image is 8000x4999 \\(I;16\\)"),
        (png_header(5000, 4000, colour_type=6), "PNG image is 5000x4000 \\(RGBA\\)"),
        (bmp_declaring(5000, 4000), "BMP image is 5000x4000 \\(RGB\\)"),
        (webp_declaring(3000, 3000), "WEBP image is 3000x3000:"),
        (tiff_declaring(3500, 3000), "TIFF image is 3500x3000"),
        (tiff_declaring(4000, 4000, tile=(65536, 65536)), "TIFF image is 4000x4000"),
        (jpeg_declaring(6000, 4000, progressive=True, padding=80_000), "JPEG image is 6000x4000"),
    ],
    ids=["PNG 16-bit grey", "PNG RGBA", "BMP", "WebP canvas", "TIFF one strip", "TIFF huge tile", "JPEG progressive"],
)
def test_images_under_the_pixel_limit_but_over_the_memory_budget(
    data: bytes, what: str, loads: list[tuple[int, int]]
) -> None:
    error = refused(data, DecompressionBombError, what)
    assert "MiB" in str(error) and "MAX_DECODE_BYTES" in str(error)
    assert loads == []


def test_jpeg_declaring_a_huge_size_in_a_tiny_file() -> None:
    # 7000x5000 is under every limit, but 693 bytes cannot code 820,000 blocks (libjpeg would fill them grey).
    refused(jpeg_declaring(7000, 5000), ImageDecodeError, "declares 7000x5000 pixels but has only")


def test_memory_budget_depends_on_the_mode() -> None:
    grey = encode(Image.new("L", (2000, 1500), 128), "PNG")
    rgba = encode(Image.new("RGBA", (2000, 1500), (1, 2, 3, 4)), "PNG")
    assert decode_image(grey, CONFIG, max_decode_bytes=12 * MIB).mode == "RGB"
    refused(rgba, DecompressionBombError, "about 1[0-9] MiB, over the 12 MiB", max_decode_bytes=12 * MIB)
    assert decode_image(rgba, CONFIG).size == (2000, 1500)


def test_images_flattened_in_strips_match_the_whole_image() -> None:
    rng = np.random.default_rng(1)
    tile = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba = Image.fromarray(np.tile(tile, (100, 100, 1)))  # 3000x2000, RGBA
    data = encode(rgba, "PNG", compress_level=1)
    whole = decode_image(data, CONFIG)
    strips = decode_image(data, CONFIG, max_decode_bytes=40 * MIB)  # the whole would need ~50 MB
    assert whole.size == (3000, 2000) and strips.size == (500, 334) and strips.mode == "RGB"  # reduced by 6
    assert (preprocess(data, CONFIG) - preprocess(data, CONFIG, max_decode_bytes=40 * MIB)).abs().mean() < 0.02


def test_sixteen_bit_grey_in_strips_keeps_its_scale() -> None:
    ramp = (np.arange(3000, dtype=np.uint32) * 65535 // 2999).astype(np.uint16)
    data = encode(Image.fromarray(np.tile(ramp, (2000, 1))), "PNG")
    out = np.asarray(decode_image(data, CONFIG, max_decode_bytes=20 * MIB)).astype(int)
    assert out.shape == (334, 500, 3)
    assert out[100, 0, 0] <= 1 and out[100, -1, 0] >= 254 and abs(out[100, 250, 0] - 128) <= 2


def test_orientation_applies_on_the_reduced_path() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img = Image.new("RGB", (3000, 2000), GREEN)
    img.paste(RED, (0, 0, 500, 2000))  # the left edge: the top once upright
    out = decode_image(encode(img, "PNG", exif=exif), CONFIG, max_decode_bytes=40 * MIB)  # rotating the whole: 48 MB
    assert out.size == (334, 500)
    assert centre(out.crop((0, 0, 334, 40))) == RED and centre(out.crop((0, 400, 334, 500))) == GREEN


# --- metadata bombs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk",
    [
        png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"\0" * 100 * MIB, 9)),
        png_chunk(b"iTXt", b"comment\0\x01\0\0\0" + zlib.compress(b"\0" * 100 * MIB, 9)),
        png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * 100 * MIB, 9)),
    ],
    ids=["zTXt", "iTXt", "iCCP"],
)
def test_png_chunk_inflating_to_100_mib(chunk: bytes) -> None:
    error = refused(png_with(chunk), ImageDecodeError, "MAX_TEXT_CHUNK")  # Pillow stops inflating at 1 MiB
    assert error.reason == "decode_failed" and len(chunk) < 200_000


def test_png_text_over_pillows_total() -> None:
    one = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 1_000_000, 9))  # 1 MB each, Pillow's per-chunk cap
    refused(png_with(*[one] * 70), ImageDecodeError, "MAX_TEXT_MEMORY")


def test_png_text_counts_in_the_decode_budget(loads: list[tuple[int, int]]) -> None:
    one = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 1_000_000, 9))
    refused(png_with(*[one] * 40, size=(3000, 2000)), DecompressionBombError, "about 6[0-9] MiB")
    assert loads == []
    assert decode_image(png_with(*[one] * 40), CONFIG).size == (64, 64)  # 40 MB of text on a small image fits


def test_png_with_too_many_chunks() -> None:
    empty = png_chunk(b"tEXt", b"k\0")
    refused(png_with(*[empty] * (MAX_PNG_CHUNKS + 1)), DecompressionBombError, "MAX_PNG_CHUNKS")


# --- animations and pages -------------------------------------------------------------------------------------------


def test_gif_with_ten_thousand_frames_gives_its_first() -> None:
    first = Image.new("P", (64, 64), 1)
    first.putpalette([*RED, *BLUE])
    data = encode(first, "GIF")
    frame = b"\x21\xf9\x04\x00\x01\x00\x00\x00" + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"
    many = data[:-1] + frame * 10_000 + b";"
    start = time.perf_counter()
    assert centre(decode_image(many, CONFIG)) == BLUE
    assert time.perf_counter() - start < SECONDS


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_long_animations_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (64, 64), (0, 0, i % 250 + 1)) for i in range(1000)]
    data = encode(Image.new("RGB", (64, 64), RED), fmt, save_all=True, append_images=frames, lossless=True)
    start = time.perf_counter()
    assert centre(decode_image(data, CONFIG)) == RED
    assert time.perf_counter() - start < SECONDS


def test_tiff_with_thousands_of_pages_gives_its_first() -> None:
    blue = bytes(BLUE) * 64 * 64
    data = tiff_declaring(64, 64, compression=1, strip_bytes=len(blue), pixels=blue, pages=10_000)
    start = time.perf_counter()
    assert centre(decode_image(data, CONFIG)) == BLUE
    assert time.perf_counter() - start < SECONDS


@pytest.mark.parametrize("compression", [1, 8], ids=["raw", "deflate"])
def test_tiff_declaring_a_4_gib_strip(compression: int) -> None:
    refused(tiff_declaring(64, 64, compression=compression, strip_bytes=0xFFFFFFFF), ImageDecodeError)


# --- structures that keep Pillow's Python parsers busy --------------------------------------------------------------


def test_jpeg_with_megabytes_of_junk_between_segments() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG")
    refused(data[:20] + b"x" * (MAX_JPEG_JUNK + 1) + data[20:], DecompressionBombError, "junk bytes")


def test_jpeg_with_thousands_of_segments() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG")
    empty = b"\xff\xe5\x00\x02"  # an APP5 segment with no payload
    refused(data[:2] + empty * (MAX_JPEG_SEGMENTS + 1) + data[2:], DecompressionBombError, "segments")


def test_progressive_jpeg_with_too_many_scans() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG", progressive=True)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    refused(data[:end] + data[last:end] * MAX_JPEG_SCANS + data[end:], DecompressionBombError, "scans")


def test_rle_bmp_over_the_python_decoders_limit() -> None:
    end_of_line = b"\x01\x05\x00\x00"  # one pixel, then padded to the row's end one byte at a time
    refused(bmp_rle8(2500, 2000, end_of_line), DecompressionBombError, "MAX_RLE_PIXELS")
    assert MAX_RLE_PIXELS >= 1000 * 1000
    assert decode_image(bmp_rle8(1000, 1000, end_of_line), CONFIG).size == (1000, 1000)


# --- polyglots ------------------------------------------------------------------------------------------------------


HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"


def test_jpeg_header_followed_by_html() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG")
    refused(data[:20] + HTML * 50, ImageDecodeError, "starts like a JPEG")


def test_html_with_an_image_inside_is_not_an_image() -> None:
    error = refused(HTML + encode(Image.new("RGB", (64, 64), RED), "JPEG"), ImageError, "not an image")
    assert error.reason == "not_an_image"


def test_whole_jpeg_followed_by_html_decodes_its_picture() -> None:
    # Trailing bytes after the end-of-image marker are common (camera trailers); the picture is the JPEG's.
    out = decode_image(encode(Image.new("RGB", (64, 64), RED), "JPEG", quality=95) + HTML, CONFIG)
    assert all(abs(a - b) <= 3 for a, b in zip(centre(out), RED, strict=True))


def test_degenerate_reason_is_stable() -> None:
    assert DegenerateImageError.reason == "degenerate_image" and issubclass(DegenerateImageError, ImageError)
