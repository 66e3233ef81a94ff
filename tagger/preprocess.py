"""Image preprocessing shared by training, evaluation, batch prediction and the streaming worker.

One code path turns untrusted image bytes into the model's input, so what the model sees in
production is exactly what it saw in training:

* :func:`decode_image` (:mod:`tagger.decode`) opens the bytes with an allowlist of formats, refuses
  decompression bombs and degenerate pictures before any pixel is decoded, bounds the memory one
  decode may use, takes the first frame of animations, applies the EXIF orientation and flattens
  every colour mode (transparency, CMYK, palette, 1-bit, 16-bit grey) to 8-bit RGB;
* :func:`letterbox` fits the whole image in a square without cropping (garment length needs the
  whole garment), padding with :attr:`PreprocessConfig.pad_colour`;
* :func:`to_tensor` makes the normalised float32 CHW tensor, in numpy (no torch op: it runs in the
  worker's decode threads); :func:`normalize_uint8` computes the same values for uint8 tensors,
  e.g. batches after training augmentation.

The parameters live in :class:`PreprocessConfig` (:mod:`tagger.preprocess_config`), which travels
inside the model card as JSON. Every failure on bad input is an :class:`ImageError` whose ``reason``
is a short stable code. This module is the public face of all three: import from here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tagger.decode import (
    MAX_ASPECT,
    MAX_DECODE_BYTES,
    MIN_SIDE,
    DecompressionBombError,
    DegenerateImageError,
    EmptyImageError,
    ImageDecodeError,
    ImageError,
    UnsupportedFormatError,
    decode_image,
    to_rgb,
)
from tagger.preprocess_config import RESAMPLE_FILTERS, RGB, PreprocessConfig, PreprocessConfigError, resample_name

__all__ = [
    "MAX_ASPECT",
    "MAX_DECODE_BYTES",
    "MIN_SIDE",
    "RGB",
    "DecompressionBombError",
    "DegenerateImageError",
    "EmptyImageError",
    "ImageDecodeError",
    "ImageError",
    "PreprocessConfig",
    "PreprocessConfigError",
    "UnsupportedFormatError",
    "decode_image",
    "denormalize",
    "letterbox",
    "normalize_uint8",
    "preprocess",
    "preprocess_image",
    "to_tensor",
]

# Pillow's pre-shrink before resampling: fast, and indistinguishable from a plain resize in practice.
_REDUCING_GAP = 3.0


def letterbox(
    img: Image.Image, size: int, pad_colour: RGB = (255, 255, 255), *, resample: str = "bicubic"
) -> Image.Image:
    """Scale ``img`` so its longer side is ``size`` and centre it on a ``size`` x ``size`` canvas; never crops.

    Any Pillow mode is accepted (flattened to RGB as :func:`decode_image` does). An RGB image that is
    already ``size`` x ``size`` is returned as is, not copied.
    """
    if size < 1:
        raise ValueError(f"letterbox size must be at least 1, not {size}.")
    rgb = to_rgb(img, pad_colour)
    width, height = rgb.size
    scale = size / max(width, height)
    new_size = (min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale))))
    if new_size != rgb.size:
        rgb = rgb.resize(new_size, RESAMPLE_FILTERS[resample_name(resample)], reducing_gap=_REDUCING_GAP)
    if new_size == (size, size):
        return rgb
    canvas = Image.new("RGB", (size, size), pad_colour)
    canvas.paste(rgb, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def normalize_uint8(tensor: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Scale a uint8 (3, H, W) or (N, 3, H, W) tensor to 0..1 and normalise it: a new contiguous float32 tensor."""
    if tensor.dtype != torch.uint8 or tensor.dim() not in (3, 4) or tensor.shape[-3] != 3:
        raise ValueError(
            f"normalize_uint8 needs a uint8 (3, H, W) or (N, 3, H, W) tensor, not {tensor.dtype} {tuple(tensor.shape)}."
        )
    mean = torch.tensor(config.mean, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(config.std, device=tensor.device).view(3, 1, 1)
    out = tensor.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return out.div_(255.0).sub_(mean).div_(std)


def to_tensor(img: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """Return ``img`` as a contiguous float32 CHW tensor, scaled to 0..1 and normalised with mean/std.

    Computed in numpy, single-threaded, with :func:`normalize_uint8`'s float32 operations in its order
    (``/ 255``, ``- mean``, ``/ std``), so the values are bit-identical to it. No torch op runs here:
    the worker calls this from its decode threads, and a torch op there starts that thread's own
    intra-op (OpenMP) pool, which competes for the cores with the model's.
    """
    rgb = to_rgb(img, config.pad_colour)
    width, height = rgb.size
    pixels = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3), read-only view: only read
    out = np.empty((3, height, width), dtype=np.float32)
    np.copyto(out, pixels.transpose(2, 0, 1))  # uint8 -> float32 is exact
    mean = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1)
    np.divide(out, np.float32(255.0), out=out)
    np.subtract(out, mean, out=out)
    np.divide(out, std, out=out)
    return torch.from_numpy(out)


def preprocess_image(img: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """Letterbox an already decoded image to ``config.image_size`` and make it a normalised tensor."""
    return to_tensor(letterbox(img, config.image_size, config.pad_colour, resample=config.resample), config)


def preprocess(data: bytes, config: PreprocessConfig, *, max_decode_bytes: int = MAX_DECODE_BYTES) -> torch.Tensor:
    """Turn untrusted image bytes into the model's (3, image_size, image_size) float32 input.

    Raises an :class:`ImageError` subclass (see its ``reason``) when the bytes are not a usable image;
    ``max_decode_bytes`` bounds the memory the decode may use (see :mod:`tagger.decode`).
    """
    return preprocess_image(decode_image(data, config, max_decode_bytes=max_decode_bytes), config)


def denormalize(tensor: torch.Tensor, config: PreprocessConfig) -> Image.Image:
    """Undo :func:`to_tensor` for visualisation: a (3, H, W) or (1, 3, H, W) tensor back to an RGB image."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"denormalize needs a (3, H, W) tensor, not shape {tuple(tensor.shape)}; pass one image.")
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    pixels = (tensor.detach().to("cpu", torch.float32) * std + mean).clamp_(0.0, 1.0).mul_(255.0).round_()
    return Image.fromarray(pixels.to(torch.uint8).permute(1, 2, 0).contiguous().numpy())
