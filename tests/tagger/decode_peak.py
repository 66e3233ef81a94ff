"""Peak memory of one decode, for the worst image each colour mode and format allows.

Run as a script (``.venv/bin/python -m tests.tagger.decode_peak``) to print the table in
:mod:`tagger.decode`'s docstring: for each case it finds the largest image of aspect 8:5 that
:func:`tagger.decode.decode_image` accepts (bisection on real files, made with Pillow), then decodes
that file in a fresh process and reports the peak resident memory the decode added (Linux: VmHWM,
reset through ``/proc/self/clear_refs``, minus VmRSS before the decode). tracemalloc cannot see
Pillow's C allocations; the kernel's count can. ``test_decode_memory.py`` uses the same helpers.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tagger.decode import MAX_DECODE_BYTES, ImageError, decode_image
from tagger.preprocess_config import PreprocessConfig

Maker = Callable[[int, int], bytes]

_CHILD = """
import io, json, sys, time
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

from PIL import Image

from tagger.decode import decode_image
from tagger.preprocess_config import PreprocessConfig

data = Path(sys.argv[1]).read_bytes()
config = PreprocessConfig()
Image.open(io.BytesIO(data)).close()  # plugins imported; no pixel decoded (freed buffers would hide the peak)
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
start = time.perf_counter()
out = decode_image(data, config)
seconds = time.perf_counter() - start
print(json.dumps({"peak": status("VmHWM") - before, "seconds": seconds, "size": list(out.size)}))
"""


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _gradient(width: int, height: int) -> Image.Image:
    """A horizontal grey ramp: compresses well, but is not a single colour any codec could special-case."""
    row = np.linspace(0, 255, width).astype(np.uint8)
    return Image.fromarray(np.broadcast_to(row, (height, width)).copy())


def _rgb(width: int, height: int) -> Image.Image:
    grey = _gradient(width, height)
    return Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))


def _rgba(width: int, height: int) -> Image.Image:
    img = _rgb(width, height)
    img.putalpha(_gradient(width, height))
    return img


def _sixteen(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.asarray(_gradient(width, height)).astype(np.uint16) * 257)


_ROTATED = Image.Exif()
_ROTATED[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view

CASES: dict[str, Maker] = {
    "PNG RGB": lambda w, h: _encode(_rgb(w, h), "PNG", compress_level=1),
    "PNG RGB, EXIF-rotated": lambda w, h: _encode(_rgb(w, h), "PNG", compress_level=1, exif=_ROTATED),
    "PNG RGBA": lambda w, h: _encode(_rgba(w, h), "PNG", compress_level=1),
    "PNG L": lambda w, h: _encode(_gradient(w, h), "PNG", compress_level=1),
    "PNG I;16": lambda w, h: _encode(_sixteen(w, h), "PNG", compress_level=1),
    "PNG P, transparency": lambda w, h: _encode(_gradient(w, h).convert("P"), "PNG", compress_level=1, transparency=0),
    "GIF P": lambda w, h: _encode(_gradient(w, h).convert("P"), "GIF"),
    "JPEG RGB baseline": lambda w, h: _encode(_rgb(w, h), "JPEG", quality=80),
    "JPEG RGB progressive 4:2:0": lambda w, h: _encode(_rgb(w, h), "JPEG", quality=80, progressive=True),
    "JPEG CMYK progressive": lambda w, h: _encode(_rgb(w, h).convert("CMYK"), "JPEG", progressive=True),
    "WebP RGB": lambda w, h: _encode(_rgb(w, h), "WEBP", quality=50, method=0),
    "TIFF RGB deflate, one strip": lambda w, h: _encode(
        _rgb(w, h), "TIFF", compression="tiff_deflate", strip_size=w * h * 3
    ),
    "TIFF F": lambda w, h: _encode(
        Image.fromarray(np.asarray(_gradient(w, h), dtype=np.float32)), "TIFF", compression="tiff_deflate"
    ),
    "BMP RGB": lambda w, h: _encode(_rgb(w, h), "BMP"),
}


def accepted(data: bytes, config: PreprocessConfig | None = None) -> bool:
    """Whether the decode takes these bytes (False when it refuses them as a bomb or otherwise)."""
    try:
        decode_image(data, config or PreprocessConfig())
    except ImageError:
        return False
    return True


def worst_allowed(make: Maker, config: PreprocessConfig | None = None) -> tuple[int, int]:
    """The largest (8k, 5k) image ``make`` produces that the decode still accepts (bisection on k)."""
    config = config or PreprocessConfig()
    low, high = 8, int((config.max_pixels / 40) ** 0.5)  # 64x40 is accepted; 40 k^2 = max_pixels
    if accepted(make(8 * high, 5 * high), config):
        return 8 * high, 5 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if accepted(make(8 * middle, 5 * middle), config) else (low, middle)
    return 8 * low, 5 * low


def peak(data: bytes, folder: Path) -> dict[str, Any]:
    """Decode ``data`` in a fresh process; its peak resident memory added by the decode, and the time."""
    path = folder / "image.bin"
    path.write_bytes(data)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=120, check=True, cwd=root
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Print the docstring's table: worst allowed image, and its peak, per case."""
    print(f"budget {MAX_DECODE_BYTES / 2**20:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            width, height = worst_allowed(make)
            result = peak(make(width, height), Path(tmp))
            print(
                f"{name:32s} {width:>5d} x {height:<5d} peak {result['peak'] / 2**20:6.1f} MiB "
                f"{result['seconds']:5.2f} s decoded to {result['size']}"
            )


if __name__ == "__main__":
    main()
