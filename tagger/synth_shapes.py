"""What the synthetic catalog's shapes share: drawing steps, point helpers and named colours.

Everything here is geometry in *item units*, y pointing down: a top's body is one unit wide at the
armpits with its shoulder line at y = 0, a skirt's waistband starts at y = 0, a shoe is one unit long
from the back of the heel (x = 0) to the toe with the ground at y = 0. This module holds what the
garments (:mod:`tagger.synth_apparel`) and shoes (:mod:`tagger.synth_footwear`) share: the drawing
step :class:`Op`, point helpers and the named colours. :func:`tagger.synth.render_item` rotates,
scales and places the resulting :class:`Op` list and paints it; the rules that tie every label to
something visible are listed in :mod:`tagger.synth`.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
RGB = tuple[int, int, int]
Colour = RGB | tuple[int, int, int, int]
Labels = dict[str, tuple[str, ...]]
Rng = np.random.Generator

# Hue (degrees, may wrap past 360), saturation and value ranges of each named colour. Neighbours are
# kept apart on at least one axis (navy/blue/black by value and saturation, beige/white/brown by
# saturation and value, orange/red/yellow by hue), so jitter never makes one look like another.
COLOURS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "black": ((0, 360), (0.0, 0.25), (0.07, 0.17)),
    "white": ((0, 360), (0.0, 0.04), (0.93, 0.99)),
    "grey": ((0, 360), (0.0, 0.06), (0.42, 0.64)),
    "red": ((352, 366), (0.72, 0.92), (0.62, 0.86)),
    "pink": ((330, 350), (0.28, 0.50), (0.86, 0.98)),
    "orange": ((20, 32), (0.80, 0.95), (0.90, 1.0)),
    "yellow": ((47, 56), (0.65, 0.88), (0.90, 0.99)),
    "green": ((100, 150), (0.45, 0.75), (0.38, 0.65)),
    "blue": ((203, 218), (0.55, 0.78), (0.70, 0.88)),
    "navy": ((222, 234), (0.65, 0.85), (0.24, 0.38)),
    "purple": ((268, 290), (0.45, 0.65), (0.40, 0.62)),
    "brown": ((18, 30), (0.55, 0.75), (0.30, 0.46)),
    "beige": ((30, 42), (0.16, 0.30), (0.80, 0.90)),
}
INKS: tuple[RGB, ...] = (
    (246, 246, 242),
    (28, 28, 30),
    (32, 42, 96),
    (196, 32, 44),
    (238, 200, 48),
    (236, 150, 182),
    (40, 126, 64),
    (64, 122, 212),
    (226, 206, 170),
    (128, 128, 128),
)


@dataclass(frozen=True)
class Op:
    """One drawing step in item units.

    kind: ``poly`` (filled polygon), ``line`` (polyline of ``width``) or ``dots`` (circles of radius
    ``width`` at each point). layer: ``fabric`` (silhouette, painted in the main colour with the
    pattern), ``pattern`` (on the fabric only), ``solid`` (silhouette, painted on top) or ``paint``
    (detail on top). ``edge`` outlines a polygon.
    """

    kind: str
    pts: Array
    colour: Colour
    width: float = 0.0
    layer: str = "paint"
    edge: RGB | None = None


def uniform(rng: Rng, bounds: tuple[float, float]) -> float:
    """A number drawn uniformly between the bounds."""
    return float(rng.uniform(bounds[0], bounds[1]))


def as_points(points: list[tuple[float, float]] | Array) -> Array:
    """Points as an (N, 2) float array."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def mirror(points: Array) -> Array:
    """The points mirrored across x = 0 (the other half of a symmetric garment)."""
    mirrored: Array = points * np.array([-1.0, 1.0])
    return mirrored


def bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 7) -> Array:
    """``n`` points along the quadratic Bezier curve from p0 to p2 pulled towards p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = np.asarray(p0), np.asarray(p1), np.asarray(p2)
    curve: Array = np.asarray((1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c, dtype=np.float64)
    return curve


def jitter_colour(rng: Rng, name: str) -> RGB:
    """A colour drawn inside the named colour's hue/saturation/value box."""
    hue, sat, val = COLOURS[name]
    r, g, b = colorsys.hsv_to_rgb((uniform(rng, hue) % 360) / 360, uniform(rng, sat), uniform(rng, val))
    return round(r * 255), round(g * 255), round(b * 255)


def shade(colour: RGB, factor: float) -> RGB:
    """The colour darkened (factor < 1) or lightened towards white (factor > 1)."""
    if factor <= 1:
        return (round(colour[0] * factor), round(colour[1] * factor), round(colour[2] * factor))
    mix = min(factor - 1, 1.0)
    return (
        round(colour[0] + (255 - colour[0]) * mix),
        round(colour[1] + (255 - colour[1]) * mix),
        round(colour[2] + (255 - colour[2]) * mix),
    )


def _dist(a: RGB, b: RGB) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def edge_colour(main: RGB) -> RGB:
    """Seams and outlines: darker on light colours, lighter on dark ones."""
    return shade(main, 0.62) if sum(main) > 150 else shade(main, 1.35)


def contrast_colour(main: RGB) -> RGB:
    """Off-white on dark colours, near-black on light ones (inner shirts, laces, welt stitches)."""
    return (236, 236, 232) if sum(main) < 400 else (40, 40, 44)


def inks(rng: Rng, main: RGB, count: int) -> list[RGB]:
    """Pattern ink colours far from the main colour (and from each other), so the main colour dominates."""
    chosen: list[RGB] = []
    for ink in (INKS[int(i)] for i in rng.permutation(len(INKS))):
        if _dist(ink, main) > 120 and all(_dist(ink, c) > 90 for c in chosen):
            chosen.append(ink)
            if len(chosen) == count:
                break
    while len(chosen) < count:
        chosen.append(contrast_colour(main))
    return chosen
