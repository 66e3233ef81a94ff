"""Sniffing image formats by magic number."""

from __future__ import annotations

import pytest

from streams.images import sniff_image_format
from tests.streams.images.harness import JPEG, PNG


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (JPEG[:32], "JPEG"),
        (PNG[:32], "PNG"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"GIF87a\x01\x00\x01\x00", "GIF"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00", "BMP"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"BMW owners manual, page 1 of 300", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_image_format(head: bytes, expected: str | None) -> None:
    assert sniff_image_format(head) == expected
