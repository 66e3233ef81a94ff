"""`to_tensor` normalises in numpy, with no torch op: bit-identical to the torch formula it replaced."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from tagger.decode import to_rgb
from tagger.preprocess import PreprocessConfig, normalize_uint8, preprocess_image, to_tensor

CONFIGS = [
    PreprocessConfig(),
    PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    PreprocessConfig(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    PreprocessConfig(mean=(0.123, -0.777, 1.5), std=(0.031, 2.75, 0.333)),
]
SIZES = [(1, 1), (1, 7), (5, 3), (224, 224), (300, 200), (257, 129), (640, 480)]


def torch_formula(img: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """What `to_tensor` computed before: torch ops in float32, / 255, - mean, / std."""
    array = np.array(img.convert("RGB"), dtype=np.uint8)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    out = torch.from_numpy(array).permute(2, 0, 1).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return out.div_(255.0).sub_(mean).div_(std)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"mean{c.mean}")
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_to_tensor_is_bit_identical_to_the_torch_formula(config: PreprocessConfig, size: tuple[int, int]) -> None:
    rng = np.random.default_rng([*size, CONFIGS.index(config)])
    width, height = size
    for _ in range(3):
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        actual = to_tensor(img, config)
        expected = torch_formula(img, config)
        assert actual.dtype == torch.float32 and actual.shape == (3, height, width) and actual.is_contiguous()
        assert torch.equal(actual, expected)
        # and equal to normalize_uint8, which training still uses on uint8 batches
        uint8 = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        assert torch.equal(actual, normalize_uint8(uint8, config))
        assert torch.equal(normalize_uint8(uint8.unsqueeze(0), config)[0], actual)


def test_every_pixel_value_in_every_channel_is_identical() -> None:
    """All 256 values in each channel, in every position modulo the SIMD width."""
    values = np.arange(256, dtype=np.uint8)
    array = np.stack([values, values[::-1], np.roll(values, 77)], axis=-1).reshape(16, 16, 3)
    for config in CONFIGS:
        img = Image.fromarray(array)
        assert torch.equal(to_tensor(img, config), torch_formula(img, config))


def test_other_modes_are_flattened_first() -> None:
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L")
    config = PreprocessConfig()
    for img in (rgba, grey):
        flat = to_rgb(img, config.pad_colour)
        assert flat.mode == "RGB"
        assert torch.equal(to_tensor(img, config), torch_formula(flat, config))


def test_the_result_owns_writable_memory() -> None:
    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    tensor = to_tensor(img, PreprocessConfig())
    tensor.add_(1.0)  # would warn or fail on a read-only buffer
    assert np.asarray(img)[0, 0, 0] == 200


class _Ops(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Records every aten op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_no_torch_op_runs_while_preprocessing() -> None:
    """The decode threads must not start torch's intra-op thread pools: only from_numpy's wrap is seen."""
    rng = np.random.default_rng(8)
    img = Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))
    config = PreprocessConfig(image_size=64)
    with _Ops() as seen:
        tensor = preprocess_image(img, config)
    assert set(seen.ops) <= {"aten.lift_fresh.default"}, seen.ops
    assert tensor.shape == (3, 64, 64)
