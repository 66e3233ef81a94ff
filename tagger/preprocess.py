"""Image preprocessing shared by training, evaluation, batch prediction and the streaming worker.

One code path turns untrusted image bytes into the model's input, so what the model sees in
production is exactly what it saw in training:

* :func:`decode_image` opens the bytes with Pillow restricted to an allowlist of formats (sniffed
  from the bytes, never from a file name or content type), refuses decompression bombs before any
  pixel is decoded, lets libjpeg decode large JPEGs at a reduced size, takes the first frame of
  animations, applies the EXIF orientation and flattens every colour mode (transparency, CMYK,
  palette, 1-bit, 16-bit grey) to 8-bit RGB;
* :func:`letterbox` fits the whole image in a square without cropping (garment length needs the
  whole garment), padding with :attr:`PreprocessConfig.pad_colour`;
* :func:`to_tensor` makes the normalised float32 CHW tensor (:func:`normalize_uint8` does the same
  for uint8 tensors, e.g. after training augmentation).

The parameters live in :class:`PreprocessConfig`, which travels inside the model card as JSON.
Every failure on bad input is an :class:`ImageError` whose ``reason`` is a short stable code.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from tagger.errors import TaggerError

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

_RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# Phone cameras write multi-picture JPEGs; Pillow's JPEG opener hands them back as "MPO", whose
# first picture is an ordinary JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# JPEGs are decoded at a reduced size whose longer side is still at least this many times image_size.
_DRAFT_FACTOR = 2
# Pillow's pre-shrink before resampling: fast, and indistinguishable from a plain resize in practice.
_REDUCING_GAP = 3.0
_SNIFF_BYTES = 16  # what Image.open hands to the plugins' accept() functions


class PreprocessConfigError(TaggerError):
    """The preprocessing parameters (usually read from a model card) are invalid."""


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
    """The image declares more pixels than :attr:`PreprocessConfig.max_pixels` allows."""

    reason: ClassVar[str] = "decompression_bomb"


class ImageDecodeError(ImageError):
    """The image's format is allowed, but its contents are corrupt, truncated or in an unusable colour mode."""

    reason: ClassVar[str] = "decode_failed"


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model inputs; stored in the model card so that serving matches training.

    ``max_pixels`` limits the *source* image (width x height as declared in its header). Pillow has
    its own limit (``Image.MAX_IMAGE_PIXELS``, refused above twice that); images over it are
    refused with :class:`DecompressionBombError` too, whatever ``max_pixels`` says.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pad_colour: RGB = (255, 255, 255)
    max_pixels: int = 40_000_000
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        # Normalise in place (JSON gives lists and ints where tuples and floats are meant) so that
        # equal parameters give equal, hashable configs.
        values: dict[str, object] = {
            "image_size": _positive_int("image_size", self.image_size),
            "mean": _floats3("mean", self.mean, positive=False),
            "std": _floats3("std", self.std, positive=True),
            "pad_colour": _colour("pad_colour", self.pad_colour),
            "max_pixels": _positive_int("max_pixels", self.max_pixels),
            "allowed_formats": _formats(self.allowed_formats),
            "resample": _resample_name(self.resample),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-ready dict (tuples become lists)."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "pad_colour": list(self.pad_colour),
            "max_pixels": self.max_pixels,
            "allowed_formats": list(self.allowed_formats),
            "resample": self.resample,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build a config from :meth:`to_dict`'s output; every key is required and no other is accepted."""
        if not isinstance(data, Mapping):
            raise PreprocessConfigError(
                f"Preprocessing parameters must be a JSON object, not {type(data).__name__}; "
                "check the 'preprocess' section of the model card."
            )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            problems = []
            if unknown:
                problems.append(f"unknown keys {unknown}")
            if missing:
                problems.append(f"missing keys {missing}")
            raise PreprocessConfigError(
                f"Preprocessing parameters have {' and '.join(problems)}; expected exactly {sorted(names)}. "
                "Re-export the model card with PreprocessConfig.to_dict()."
            )
        return cls(**data)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PreprocessConfigError(f"PreprocessConfig.{name} must be a whole number of at least 1, not {value!r}.")
    return value


def _sequence3(name: str, value: object, what: str) -> tuple[object, object, object]:
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise PreprocessConfigError(f"PreprocessConfig.{name} must be a list of 3 {what} (R, G, B), not {value!r}.")
    return value[0], value[1], value[2]


def _floats3(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    items = _sequence3(name, value, "numbers")
    out: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise PreprocessConfigError(f"PreprocessConfig.{name} must hold 3 finite numbers, not {value!r}.")
        if positive and item <= 0:
            raise PreprocessConfigError(f"PreprocessConfig.{name} must hold 3 numbers above 0, not {value!r}.")
        out.append(float(item))
    return out[0], out[1], out[2]


def _colour(name: str, value: object) -> RGB:
    out: list[int] = []
    for item in _sequence3(name, value, "whole numbers 0-255"):
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 255:
            raise PreprocessConfigError(f"PreprocessConfig.{name} must hold 3 whole numbers 0-255, not {value!r}.")
        out.append(item)
    return out[0], out[1], out[2]


def _formats(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple | list) or not value or not all(isinstance(v, str) for v in value):
        raise PreprocessConfigError(
            f"PreprocessConfig.allowed_formats must be a non-empty list of Pillow format names, not {value!r}."
        )
    Image.init()
    names = tuple(dict.fromkeys(v.upper() for v in value))
    unknown = [n for n in names if n not in Image.OPEN]
    if unknown:
        raise PreprocessConfigError(
            f"PreprocessConfig.allowed_formats has formats this Pillow cannot read: {unknown}; "
            f"use names from {sorted(Image.OPEN)}."
        )
    return names


def _resample_name(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in _RESAMPLE:
        raise PreprocessConfigError(f"PreprocessConfig.resample must be one of {sorted(_RESAMPLE)}, not {value!r}.")
    return value.lower()


def decode_image(data: bytes, config: PreprocessConfig) -> Image.Image:
    """Decode untrusted image bytes to an 8-bit RGB image, upright and with transparency flattened.

    Large JPEGs come back smaller than their source (decoded at reduced size, longer side still at
    least twice ``config.image_size``). Raises an :class:`ImageError` subclass on any bad input.
    """
    if not data:
        raise EmptyImageError("The image is empty (0 bytes); send the image file's contents.")
    img = _open(data, config)
    try:
        img.seek(0)  # first frame of GIF / APNG / animated WebP / multi-page TIFF
        source_size = img.size
        target = config.image_size * _DRAFT_FACTOR
        longer = max(source_size)
        # JPEG only (a no-op elsewhere): libjpeg scales by 1/2, 1/4 or 1/8 while both sides stay >= the request.
        request = (
            max(1, math.ceil(source_size[0] * target / longer)),
            max(1, math.ceil(source_size[1] * target / longer)),
        )
        img.draft("RGB", request)
        img.load()
        if img.size != source_size:
            logger.debug("Decoded a %s JPEG at reduced size %s", source_size, img.size)
        _apply_exif_orientation(img)
        return _to_rgb(img, config.pad_colour)
    except Exception as exc:  # Pillow raises a zoo of types (OSError, ValueError, SyntaxError...) on hostile input
        raise ImageDecodeError(
            f"The {img.format} image could not be decoded ({type(exc).__name__}: {exc}); "
            "it is probably truncated or corrupt: re-export or re-upload it."
        ) from exc


def _open(data: bytes, config: PreprocessConfig) -> ImageFile.ImageFile:
    """Read the header only, enforcing the format allowlist and the pixel limit."""
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
    return img


def _unidentified(data: bytes, config: PreprocessConfig) -> ImageError:
    """Explain why Pillow could not open the bytes with the allowed formats."""
    sniffed = _sniff_format(data[:_SNIFF_BYTES])
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


def _sniff_format(prefix: bytes) -> str | None:
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


def _apply_exif_orientation(img: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:  # an unreadable EXIF block should not cost an otherwise good photo
        logger.warning("Ignoring an unreadable EXIF orientation (%s: %s)", type(exc).__name__, exc)


def _to_rgb(img: Image.Image, pad_colour: RGB) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB; transparent areas become ``pad_colour``."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(img, pad_colour)
    if img.has_transparency_data:  # alpha channel, or tRNS / GIF transparency key in img.info
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        canvas = Image.new("RGB", img.size, pad_colour)
        canvas.paste(rgba, (0, 0), rgba)
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image, pad_colour: RGB) -> Image.Image:
    # Pillow's own I -> L conversion clips at 255, turning everything above 1/256 of full scale white.
    values = np.asarray(img)
    if img.mode == "I":
        values = np.clip(values, 0, 65535)
    grey = Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8))  # 0..65535 -> 0..255
    key = img.info.get("transparency")
    if isinstance(key, int):  # 16-bit PNG tRNS: one grey value is fully transparent
        canvas = Image.new("RGB", img.size, pad_colour)
        canvas.paste(grey, (0, 0), Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8)))
        return canvas
    return grey.convert("RGB")


def letterbox(
    img: Image.Image, size: int, pad_colour: RGB = (255, 255, 255), *, resample: str = "bicubic"
) -> Image.Image:
    """Scale ``img`` so its longer side is ``size`` and centre it on a ``size`` x ``size`` canvas; never crops.

    Any Pillow mode is accepted (flattened to RGB as :func:`decode_image` does). An RGB image that is
    already ``size`` x ``size`` is returned as is, not copied.
    """
    if size < 1:
        raise ValueError(f"letterbox size must be at least 1, not {size}.")
    rgb = _to_rgb(img, pad_colour)
    width, height = rgb.size
    scale = size / max(width, height)
    new_size = (min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale))))
    if new_size != rgb.size:
        rgb = rgb.resize(new_size, _RESAMPLE[_resample_name(resample)], reducing_gap=_REDUCING_GAP)
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
    """Return ``img`` as a contiguous float32 CHW tensor, scaled to 0..1 and normalised with mean/std."""
    rgb = _to_rgb(img, config.pad_colour)
    # np.asarray on a PIL image is read-only and torch.from_numpy warns on those: np.array copies once.
    array = np.array(rgb, dtype=np.uint8)
    return normalize_uint8(torch.from_numpy(array).permute(2, 0, 1), config)


def preprocess_image(img: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """Letterbox an already decoded image to ``config.image_size`` and make it a normalised tensor."""
    return to_tensor(letterbox(img, config.image_size, config.pad_colour, resample=config.resample), config)


def preprocess(data: bytes, config: PreprocessConfig) -> torch.Tensor:
    """Turn untrusted image bytes into the model's (3, image_size, image_size) float32 input.

    Raises an :class:`ImageError` subclass (see its ``reason``) when the bytes are not a usable image.
    """
    return preprocess_image(decode_image(data, config), config)


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
