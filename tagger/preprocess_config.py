"""The preprocessing parameters: :class:`PreprocessConfig`, which travels inside the model card as JSON.

Every field is validated and normalised on construction, so equal parameters give equal, hashable
configs whether they come from code or from a card.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from tagger.errors import TaggerError

RGB = tuple[int, int, int]

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class PreprocessConfigError(TaggerError):
    """The preprocessing parameters (usually read from a model card) are invalid."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model inputs; stored in the model card so that serving matches training.

    ``max_pixels`` limits the *source* image (width x height as declared in its header). Pillow has
    its own limit (``Image.MAX_IMAGE_PIXELS``, refused above twice that); images over it are
    refused with :class:`~tagger.decode.DecompressionBombError` too, whatever ``max_pixels`` says.
    The other limits on untrusted images (the memory one decode may use, the smallest size and the
    widest aspect ratio) are :mod:`tagger.decode`'s constants: they are not part of the card.
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
            "resample": resample_name(self.resample),
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


def resample_name(value: object) -> str:
    """The canonical (lower-case) name of a resampling filter, or :class:`PreprocessConfigError`."""
    if not isinstance(value, str) or value.lower() not in RESAMPLE_FILTERS:
        raise PreprocessConfigError(
            f"PreprocessConfig.resample must be one of {sorted(RESAMPLE_FILTERS)}, not {value!r}."
        )
    return value.lower()
