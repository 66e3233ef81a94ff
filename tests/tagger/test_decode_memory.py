"""The decode budget holds in practice: the worst image a mode allows peaks under MAX_DECODE_BYTES.

Each case finds the largest accepted image of its kind, then measures the decode's peak resident
memory in a fresh process (see decode_peak.py, which prints the full table for tagger.decode's
docstring).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tagger.decode import MAX_DECODE_BYTES
from tests.tagger.decode_peak import CASES, peak, worst_allowed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs", os.W_OK),
        reason="measures peak memory through Linux's /proc/self/clear_refs and VmHWM",
    ),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["PNG I;16", "PNG RGBA", "JPEG RGB progressive 4:2:0", "WebP RGB"])
def test_worst_allowed_image_peaks_within_the_budget(case: str, tmp_path: Path) -> None:
    make = CASES[case]
    width, height = worst_allowed(make)
    assert width * height > 2_000_000  # the budget still takes ordinary product photos
    result = peak(make(width, height), tmp_path)
    assert result["peak"] <= MAX_DECODE_BYTES, f"{case} {width}x{height}: {result['peak'] / 2**20:.1f} MiB"
