"""Image format sniffing by magic number: what a body starts with, whatever its ``Content-Type`` says.

Only the first bytes are looked at, so a polyglot (a file that starts like a JPEG and goes on as
HTML or JavaScript) is accepted as a JPEG: that is by design. The fetched bytes are only ever
decoded as an image, never rendered or executed, and the decoder is the judge of the rest of the
file (a truncated or corrupt image fails there as ``DECODE_FAILED``, not here).
"""

from __future__ import annotations

from typing import Final

__all__ = ["SNIFF_BYTES", "sniff_image_format"]

SNIFF_BYTES: Final = 32
"""Bytes :func:`sniff_image_format` needs to decide; a download is judged once it has this many."""

_BMP_DIB_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_MAGIC_NUMBERS: Final[tuple[tuple[str, tuple[bytes, ...]], ...]] = (
    ("JPEG", (b"\xff\xd8\xff",)),
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("TIFF", (b"II*\x00", b"MM\x00*")),
)


def sniff_image_format(head: bytes) -> str | None:
    """Name the image format that ``head`` (the first bytes of a file) starts with, by magic number.

    Args:
        head: The first bytes; :data:`SNIFF_BYTES` are plenty.

    Returns:
        ``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``, ``"BMP"`` or ``"TIFF"``, else None.
    """
    for name, magics in _MAGIC_NUMBERS:
        if head.startswith(magics):
            return name
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 18 and head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "BMP"  # "BM" alone is too weak: also require a known DIB header size
    return None
