"""Cheap looks at raw image bytes, before (or beside) Pillow's parsers.

Pillow decides what an image is; these functions only measure what its parsers would have to go
through, so :mod:`tagger.decode` can refuse an input whose structure alone would cost too much time
or memory: the number of PNG chunks and how much text its compressed chunks may expand to, the
number of JPEG segments and scans, a WebP canvas before libwebp allocates it. Each walk touches
only chunk and segment headers (the bytes in between are skipped with one slice or ``bytes.find``),
and stops counting past the limit it is given, so it is fast on any input.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

# zlib cannot expand data by more than about 1032:1 (a run of zeros in maximal-length matches).
_ZLIB_MAX_RATIO = 1032
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COMPRESSED_TEXT = (b"zTXt", b"iTXt")
# Start-of-frame markers; the Huffman-coded ones are the ones every web JPEG uses.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
JPEG_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2})
JPEG_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_SOS = b"\xff\xda"


@dataclass(frozen=True)
class PngLayout:
    """What Pillow's PNG reader would go through: chunks, and the text and ICC data it may inflate."""

    chunks: int  # counted up to one past the limit asked for
    metadata_bytes: int  # upper bound of the text (tEXt/zTXt/iTXt) and ICC profile Pillow keeps in memory


@dataclass(frozen=True)
class JpegLayout:
    """The JPEG's segments up to its first scan, and how many scans follow."""

    sof: int | None  # the start-of-frame marker (0xC0 baseline, 0xC2 progressive, ...)
    components: int  # in the frame
    first_scan_components: int  # in the first scan; fewer than the frame's means several scans
    scans: int  # start-of-scan markers from the first on (an upper bound: trailing data counts too)
    segments: int  # before the first scan, counted up to one past the limit asked for
    junk_bytes: int  # bytes between segments that belong to none (Pillow skips them one at a time)

    @property
    def multi_scan(self) -> bool:
        """libjpeg keeps every DCT coefficient of the image in memory for such files (jdinput.c)."""
        return self.sof in JPEG_PROGRESSIVE_SOF or self.first_scan_components < self.components


def sniff_format(prefix: bytes) -> str | None:
    """Name the format whose magic bytes match, using only the plugins' cheap ``accept`` checks (no parsing)."""
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            result = accept(prefix) if accept is not None else False
        except (IndexError, TypeError, ValueError, struct.error):  # short prefixes trip some checks
            continue
        if result and not isinstance(result, str):  # a str result is Pillow's "maybe, with a warning"
            return fmt
    return None


def png_layout(data: bytes, max_chunks: int) -> PngLayout:
    """Walk a PNG's chunk headers: how many chunks, and how much text and ICC data Pillow may inflate.

    Pillow inflates each zTXt, iTXt and iCCP chunk to at most ``PngImagePlugin.MAX_TEXT_CHUNK`` and
    keeps at most ``MAX_TEXT_MEMORY`` of text; the bound here also uses zlib's maximal ratio, so a
    small compressed chunk is not charged a whole ``MAX_TEXT_CHUNK``.
    """
    pos, chunks, text, icc = len(_PNG_SIGNATURE), 0, 0, 0
    while pos + 8 <= len(data) and chunks <= max_chunks:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if kind == b"tEXt":
            text += length
        elif kind in _PNG_COMPRESSED_TEXT:
            text += min(length * _ZLIB_MAX_RATIO, PngImagePlugin.MAX_TEXT_CHUNK)
        elif kind == b"iCCP":  # Pillow keeps the last one only
            icc = min(length * _ZLIB_MAX_RATIO, PngImagePlugin.MAX_TEXT_CHUNK)
        elif kind == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return PngLayout(chunks, min(text, PngImagePlugin.MAX_TEXT_MEMORY) + icc)


def jpeg_layout(data: bytes, max_segments: int) -> JpegLayout:
    """Walk a JPEG's marker segments up to its first scan (SOS), then count the scans after it."""
    pos, segments, junk = 2, 0, 0  # after SOI
    sof: int | None = None
    components = 0
    while pos + 4 <= len(data) and segments <= max_segments:
        if data[pos] != 0xFF or data[pos + 1] == 0x00:  # not a marker: skip to the next 0xFF
            following = data.find(b"\xff", pos + 1)
            following = len(data) if following < 0 else following
            junk += following - pos
            pos = following
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:  # EOI before any scan
            break
        (length,) = struct.unpack_from(">H", data, pos)
        segments += 1
        if marker in _JPEG_SOF and pos + 8 <= len(data):
            sof, components = marker, data[pos + 7]
        if marker == _SOS[1] and pos + 3 <= len(data):
            scans = 1 + data.count(_SOS, pos + length)
            return JpegLayout(sof, components, data[pos + 2], scans, segments, junk)
        pos += length
    return JpegLayout(sof, components, components, 0, segments, junk)


def jpeg_blocks(size: tuple[int, int], sampling: list[tuple[int, int]]) -> tuple[int, int]:
    """8x8 blocks of a frame: (coded, allocated) for components with these (horizontal, vertical) factors.

    *coded* is the least any scan must code (every block carries at least one Huffman-coded DC
    symbol, so at least one bit); *allocated* is what libjpeg's whole-image coefficient buffer holds
    (each component padded to whole MCUs).
    """
    width, height = size
    h_max = max((h for h, _ in sampling), default=1)
    v_max = max((v for _, v in sampling), default=1)
    coded = allocated = 0
    for h, v in sampling:
        across = math.ceil(math.ceil(width * h / h_max) / 8)
        down = math.ceil(math.ceil(height * v / v_max) / 8)
        coded += across * down
        allocated += math.ceil(across / h) * h * math.ceil(down / v) * v
    return coded, allocated


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file declares in its first chunk (VP8X, VP8L or VP8), or None."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None
