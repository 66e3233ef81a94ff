"""Shapes of the synthetic catalog: garments, shoes, fabric patterns and named colours, in item units.

Everything here is geometry in *item units*, y pointing down: a top's body is one unit wide at the
armpits with its shoulder line at y = 0, a skirt's waistband starts at y = 0, a shoe is one unit long
from the back of the heel (x = 0) to the toe with the ground at y = 0. :func:`tagger.synth.render_item`
rotates, scales and places the resulting :class:`Op` list and paints it; the rules that tie every
label to something visible are listed in :mod:`tagger.synth`.
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

# Body length (shoulder line to hem) over body width at the armpits, per length value, for tops and
# dresses; for skirts, waist-to-hem height over waist width (half-width 0.34-0.38 below).
LENGTH_RATIO = {"cropped": (0.70, 0.85), "regular": (1.15, 1.35), "knee": (1.80, 2.00), "maxi": (2.55, 2.80)}
SKIRT_LENGTH = {"regular": (0.62, 0.76), "knee": (1.25, 1.42), "maxi": (1.95, 2.20)}
# Heel lift (heel seat above the forefoot's sole) over shoe length.
HEEL_LIFT = {"flat": (0.0, 0.012), "low": (0.045, 0.065), "mid": (0.11, 0.135), "high": (0.2, 0.25)}
# Gender cues: toe shape, sole thickness, toe-box height range, bulk (upper heights), sandal strap width.
GENDER_CUES = {
    "women": ("point", 0.022, (0.11, 0.125), 0.9, 0.055),
    "unisex": ("round", 0.034, (0.15, 0.165), 1.0, 0.075),
    "men": ("square", 0.050, (0.19, 0.21), 1.12, 0.095),
}
HEEL_CROP_X = 0.3  # a shoe whose heel is not visible is cropped by the frame edge at this x


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


def _u(rng: Rng, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _pts(points: list[tuple[float, float]] | Array) -> Array:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _mirror(points: Array) -> Array:
    mirrored: Array = points * np.array([-1.0, 1.0])
    return mirrored


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 7) -> Array:
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = np.asarray(p0), np.asarray(p1), np.asarray(p2)
    curve: Array = np.asarray((1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c, dtype=np.float64)
    return curve


def jitter_colour(rng: Rng, name: str) -> RGB:
    """A colour drawn inside the named colour's hue/saturation/value box."""
    hue, sat, val = COLOURS[name]
    r, g, b = colorsys.hsv_to_rgb((_u(rng, hue) % 360) / 360, _u(rng, sat), _u(rng, val))
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


def _edge(main: RGB) -> RGB:
    return shade(main, 0.62) if sum(main) > 150 else shade(main, 1.35)


def _contrast(main: RGB) -> RGB:
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
        chosen.append(_contrast(main))
    return chosen


# ---------------------------------------------------------------- apparel


def apparel(rng: Rng, labels: Labels, main: RGB) -> list[Op]:
    """A flat-lay garment (fabric silhouette plus details) whose labels are all visible (see tagger.synth)."""
    kind, length = labels["type"][0], labels["length"][0]
    if kind == "skirt":
        return _skirt(rng, length, main)
    return _top(rng, kind, sleeve=labels["sleeve_type"][0], neck=labels["neck_type"][0], length=length, main=main)


def _skirt(rng: Rng, length: str, main: RGB) -> list[Op]:
    wh, ln, band = _u(rng, (0.34, 0.38)), _u(rng, SKIRT_LENGTH[length]), 0.075
    hh = wh + _u(rng, (0.16, 0.28)) * ln
    left = _pts([(-wh, band), (-hh, ln), (-hh * 0.5, ln + 0.02), (0.0, ln + 0.025)])
    body = np.vstack([left, _mirror(left[::-1])])
    edge = _edge(main)
    ops = [Op("poly", body, main, layer="fabric", edge=edge)]
    waist = _pts([(-wh - 0.01, 0.0), (wh + 0.01, 0.0), (wh, band), (-wh, band)])
    ops.append(Op("poly", waist, shade(main, 0.86), layer="solid", edge=edge))
    ops.append(Op("dots", _pts([(wh * 0.7, band / 2)]), _contrast(main), 0.022))
    return ops + _drape(rng, main, top_half=wh, top=band, hem_half=hh, hem=ln)


def _drape(rng: Rng, main: RGB, *, top_half: float, top: float, hem_half: float, hem: float) -> list[Op]:
    """Two to four soft fold lines fanning from the waist to the hem."""
    fracs = rng.uniform(-0.7, 0.7, int(rng.integers(2, 5)))
    lines = [_pts([(f * top_half, top + 0.05), (f * hem_half * 0.95, hem - 0.03)]) for f in fracs]
    return [Op("line", line, shade(main, 0.86), 0.01) for line in lines]


def _sleeve(rng: Rng, shoulder: Array, armpit: Array, sleeve: str) -> tuple[Array, Array]:
    """A left sleeve polygon and its cuff band; angle from vertical and length depend on the sleeve type."""
    angle = np.radians(_u(rng, (50, 65)) if sleeve == "short" else _u(rng, (16, 28)))
    length = _u(rng, (0.28, 0.36)) if sleeve == "short" else _u(rng, (1.0, 1.15))
    end_w = _u(rng, (0.24, 0.28)) if sleeve == "short" else _u(rng, (0.13, 0.16))
    d = np.array([-np.sin(angle), np.cos(angle)])
    n = np.array([-np.cos(angle), -np.sin(angle)])
    c0 = (shoulder + armpit) / 2
    c1 = c0 + d * length
    poly = np.vstack([shoulder, c1 + n * end_w / 2, c1 - n * end_w / 2, armpit])
    cb = c0 + d * (length - 0.09)
    cuff = np.vstack([cb + n * end_w * 0.53, c1 + n * end_w / 2, c1 - n * end_w / 2, cb - n * end_w * 0.53])
    return poly, cuff


def _top(rng: Rng, kind: str, *, sleeve: str, neck: str, length: str, main: RGB) -> list[Op]:
    ln = _u(rng, LENGTH_RATIO[length])
    nw, bw, ay, sy = _u(rng, (0.15, 0.19)), 0.49, 0.34, 0.06
    edge, dark = _edge(main), shade(main, 0.82)
    if kind == "dress":
        wy = min(0.55, ln * 0.45)
        wh = _u(rng, (0.36, 0.40))
        hh = wh + _u(rng, (0.2, 0.26)) * (ln - wy)
        side = [(-hh, ln), (-wh, wy), (-bw, ay)]
    else:
        hh = bw + _u(rng, (0.0, 0.05)) + max(0.0, ln - 1.4) * 0.06
        side = [(-hh, ln), (-bw, ay)]
    hem = [(0.0, ln + 0.015), (-hh * 0.7, ln - 0.01), (-hh, ln - 0.07)] if kind == "shirt" else [(0.0, ln)]
    if sleeve == "sleeveless":
        shoulder = [*_bezier((-bw, ay + 0.02), (-0.3, 0.3), (-nw - 0.12, 0.0))[1:].tolist()]
    else:
        shoulder = [(-0.5, sy)]
    left = _pts([*hem, *side, *shoulder, (-nw, 0.0)])
    # the body keeps a shallow round neckline; deeper necklines are painted over it
    tag = neck == "not_visible"
    shape = "round" if tag or kind == "jacket" or neck == "collar" else neck
    depth = {"round": _u(rng, (0.09, 0.12)), "v_neck": _u(rng, (0.32, 0.42))}[shape]
    if kind == "jacket" or neck == "collar":
        depth = 0.07
    t = np.linspace(0.0, np.pi, 9)
    front = (
        np.stack([-nw * np.cos(t), depth * np.sin(t)], axis=1)
        if shape == "round"
        else _pts([(-nw, 0), (0, depth), (nw, 0)])
    )
    body = np.vstack([left, front[1:-1], _mirror(left[::-1])])
    ops: list[Op] = []
    if sleeve in ("short", "long"):
        poly, cuff = _sleeve(rng, np.array([-0.5, sy]), np.array([-bw, ay]), sleeve)
        ops += [Op("poly", p, main, layer="fabric", edge=edge) for p in (poly, _mirror(poly))]
        if sleeve == "long" and kind in ("shirt", "jacket"):
            ops += [Op("poly", c, dark, layer="solid", edge=edge) for c in (cuff, _mirror(cuff))]
    ops.append(Op("poly", body, main, layer="fabric", edge=edge))
    back = np.stack([nw * np.cos(t), 0.035 * np.sin(t)], axis=1)
    ops.append(Op("poly", np.vstack([front, back]), shade(main, 0.55), layer="solid"))
    if sleeve == "not_visible":  # sleeves folded behind the body: square shoulders with fold bands
        for sign in (-1.0, 1.0):
            band = _pts([(0.5 * sign, sy), (0.37 * sign, sy + 0.01), (0.37 * sign, ln - 0.06), (0.5 * sign, ln - 0.06)])
            ops.append(Op("poly", band, (0, 0, 0, 46)))
            ops.append(Op("line", band[1:3], edge, 0.012))
    if not tag:
        ops += _neck_details(rng, kind, neck, nw=nw, front=front, main=main)
    ops += _body_details(rng, kind, neck, ln=ln, hh=hh, main=main)
    if kind == "dress":  # waist seam and drape lines
        ops.append(Op("line", _pts([(-wh, wy), (wh, wy)]), dark, 0.014))
        ops += _drape(rng, main, top_half=wh, top=wy, hem_half=hh, hem=ln)
    if tag:
        ops += _swing_tag(rng)
    return ops


def _neck_details(rng: Rng, kind: str, neck: str, *, nw: float, front: Array, main: RGB) -> list[Op]:
    edge, dark = _edge(main), shade(main, 0.82)
    ops: list[Op] = []
    if kind == "jacket" and neck in ("collar", "v_neck"):
        vd = _u(rng, (0.42, 0.5)) if neck == "collar" else _u(rng, (0.34, 0.42))
        ops.append(Op("poly", _pts([(-nw + 0.01, 0.0), (nw - 0.01, 0.0), (0.0, vd)]), _contrast(main), layer="solid"))
        if neck == "collar":
            lapel = _pts(
                [
                    (-nw - 0.02, -0.045),
                    (-nw + 0.01, 0.0),
                    (-0.02, vd),
                    (-0.2, 0.3),
                    (-0.3, 0.2),
                    (-0.25, 0.16),
                    (-0.26, 0.07),
                ]
            )
            ops += [Op("poly", p, shade(main, 0.92), layer="solid", edge=edge) for p in (lapel, _mirror(lapel))]
        else:
            ops += [Op("line", _pts([(s * nw, 0.0), (0.0, vd)]), edge, 0.014) for s in (-1.0, 1.0)]
    elif neck == "collar":
        stand = _pts([(-nw - 0.02, -0.045), (nw + 0.02, -0.045), (nw + 0.01, 0.02), (-nw - 0.01, 0.02)])
        leaf = _pts([(-nw - 0.03, -0.04), (-nw - 0.06, 0.07), (-0.07, 0.21), (0.0, 0.07), (-nw + 0.02, 0.0)])
        ops.append(Op("poly", stand, dark, layer="solid", edge=edge))
        ops += [Op("poly", p, main, layer="solid", edge=edge) for p in (leaf, _mirror(leaf))]
    else:
        ops.append(Op("line", front, shade(main, 0.78), 0.03 if kind != "jacket" else 0.05))
    return ops


def _body_details(rng: Rng, kind: str, neck: str, *, ln: float, hh: float, main: RGB) -> list[Op]:
    edge, dark = _edge(main), shade(main, 0.82)
    ops: list[Op] = []
    if kind == "t_shirt":
        ops.append(Op("line", _pts([(-hh + 0.01, ln - 0.04), (hh - 0.01, ln - 0.04)]), dark, 0.008))
        if neck == "collar":  # polo: short placket with two buttons
            ops.append(Op("line", _pts([(0.0, 0.07), (0.0, 0.3)]), dark, 0.03))
            ops.append(Op("dots", _pts([(0.0, 0.14), (0.0, 0.25)]), _contrast(main), 0.016))
    elif kind == "shirt":
        top = 0.07 if neck == "collar" else 0.12
        ops.append(Op("line", _pts([(0.0, top), (0.0, ln)]), dark, 0.04))
        ops.append(Op("line", _pts([(0.02, top), (0.02, ln)]), edge, 0.006))
        ys = np.arange(top + 0.08, ln - 0.04, 0.14)
        ops.append(Op("dots", np.stack([np.zeros_like(ys), ys], axis=1), _contrast(main), 0.017))
        x0 = 0.14 * (1 if rng.random() < 0.5 else -1)
        pocket = _pts([(x0, 0.24), (x0 * 2.2, 0.24), (x0 * 2.2, 0.4), (x0, 0.4), (x0, 0.24)])
        ops.append(Op("line", pocket, edge, 0.009))
    elif kind == "jacket":
        if neck == "round":  # zipped jacket with ribbed hem
            ops.append(Op("line", _pts([(0.0, 0.1), (0.0, ln)]), shade(main, 0.45), 0.025))
            ops.append(
                Op(
                    "poly",
                    _pts([(-hh, ln - 0.07), (hh, ln - 0.07), (hh, ln), (-hh, ln)]),
                    dark,
                    layer="solid",
                    edge=edge,
                )
            )
        else:
            ops.append(Op("line", _pts([(0.0, 0.42), (0.0, ln)]), edge, 0.01))
            ys = np.arange(0.52, ln - 0.05, 0.17)
            ops.append(Op("dots", np.stack([np.full_like(ys, -0.04), ys], axis=1), shade(main, 0.4), 0.022))
        yp = 0.34 + 0.55 * (ln - 0.34)
        for s in (-1.0, 1.0):
            flap = _pts([(0.12 * s, yp), (0.38 * s, yp), (0.37 * s, yp + 0.065), (0.13 * s, yp + 0.065)])
            ops.append(Op("poly", flap, shade(main, 0.8), layer="solid", edge=edge))
    return ops


def _swing_tag(rng: Rng) -> list[Op]:
    """A card tag hung over the neckline: neck type is not visible."""
    a = np.radians(_u(rng, (-8, 8)))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    card = _pts([(-0.21, -0.06), (0.21, -0.06), (0.21, 0.44), (-0.21, 0.44)]) @ rot.T
    bars = [_pts([(x, 0.22), (x, 0.38)]) @ rot.T for x in np.linspace(-0.14, 0.14, 9)]
    ops = [Op("poly", card, (244, 242, 236), layer="solid", edge=(120, 120, 120))]
    ops += [Op("line", b, (30, 30, 30), 0.012 + 0.01 * (i % 3 == 0)) for i, b in enumerate(bars)]
    ops.append(Op("line", _pts([(-0.1, 0.05), (0.1, 0.05)]) @ rot.T, (60, 60, 60), 0.02))
    return ops


def pattern(rng: Rng, patterns: tuple[str, ...], bbox: tuple[float, float, float, float], main: RGB) -> list[Op]:
    """Pattern ops covering bbox; element sizes scale with the garment so they stay visible at any scale."""
    x0, y0, x1, y1 = bbox
    size = max(x1 - x0, y1 - y0)
    ops: list[Op] = []
    colours = inks(rng, main, 3)
    for i, name in enumerate(p for p in patterns if p != "solid"):
        ink = colours[i]
        if name in ("striped", "checked"):
            period = size * (_u(rng, (0.06, 0.085)) if name == "striped" else _u(rng, (0.1, 0.13)))
            frac = _u(rng, (0.28, 0.42)) if name == "striped" else _u(rng, (0.3, 0.36))
            colour: Colour = ink if name == "striped" else (*ink, int(rng.integers(150, 190)))
            directions = [rng.random() < 0.62] if name == "striped" else [True, False]
            for horizontal in directions:
                lo, hi = (y0, y1) if horizontal else (x0, x1)
                for start in np.arange(lo - period * rng.random(), hi, period):
                    a, b = start, start + period * frac
                    rect = [(x0, a), (x1, a), (x1, b), (x0, b)] if horizontal else [(a, y0), (b, y0), (b, y1), (a, y1)]
                    ops.append(Op("poly", _pts(rect), colour, layer="pattern"))
        elif name == "dotted":
            step = size * _u(rng, (0.075, 0.095))
            gx, gy = np.meshgrid(np.arange(x0, x1 + step, step), np.arange(y0, y1 + step, step))
            gx = gx + (np.arange(gx.shape[0])[:, None] % 2) * step / 2
            centres = np.stack([gx.ravel(), gy.ravel()], axis=1)
            ops.append(Op("dots", centres, ink, step * _u(rng, (0.22, 0.28)), layer="pattern"))
        else:  # floral: five-petal flowers with a centre of another ink, on a jittered grid
            step = size * _u(rng, (0.17, 0.21))
            gx, gy = np.meshgrid(np.arange(x0, x1 + step, step), np.arange(y0, y1 + step, step))
            centres = np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.uniform(-0.2, 0.2, (gx.size, 2)) * step
            radius = step * _u(rng, (0.28, 0.33))
            turn = rng.uniform(0, 2 * np.pi, len(centres))[:, None] + np.arange(5)[None, :] * 2 * np.pi / 5
            petals = centres[:, None, :] + 0.55 * radius * np.stack([np.cos(turn), np.sin(turn)], axis=2)
            ops.append(Op("dots", petals.reshape(-1, 2), ink, 0.45 * radius, layer="pattern"))
            ops.append(Op("dots", centres, colours[2], 0.28 * radius, layer="pattern"))
    return ops


# ---------------------------------------------------------------- footwear


def _toe(style: str, st: float, tb: float) -> list[tuple[float, float]]:
    """Toe profile from the top of the toe box down to the sole (y up): pointed, round or square."""
    if style == "point":
        return [(0.74, st + tb), (0.86, st + tb * 0.78), (0.95, st + tb * 0.42), (1.02, st + 0.01)]
    if style == "round":
        return [(0.78, st + tb), (0.9, st + tb * 0.93), (0.96, st + tb * 0.72), (0.99, st + tb * 0.4), (0.985, st)]
    return [(0.8, st + tb), (0.95, st + tb * 0.98), (0.985, st + tb * 0.86), (0.995, st + tb * 0.22), (0.99, st)]


@dataclass(frozen=True)
class _Shoe:
    """Side-profile geometry (y up): footbed line, sole thickness, toe box, bulk and heel seat."""

    xs: Array
    foot: Array
    sole: float
    toe_box: float
    bulk: float
    seat: float
    toe: str

    def up(self, x: float, h: float) -> tuple[float, float]:
        """The point h above the footbed at x."""
        return (x, float(np.interp(x, self.xs, self.foot)) + h)


BALL = 0.68


def footwear(rng: Rng, labels: Labels, main: RGB) -> tuple[list[Op], float | None]:
    """A side-profile shoe and the x where the frame must crop it (heel not visible), or None."""
    kind, gender = labels["type"][0], labels["gender"][0]
    height, style = labels["heel_height"][0], labels["heel_style"][0]
    toe, sole, tb_range, bulk, strap = GENDER_CUES[gender]
    sole *= 1.8 if kind == "sneaker" else 1.25 if kind == "sandal" else 1.0
    lift = _u(rng, HEEL_LIFT[height])
    crop = style == "not_visible"
    if crop:  # the hidden heel is drawn as the usual heel for its height, then cropped away
        style = "none" if height == "flat" else "block" if kind in ("boot", "loafer") else "stiletto"
    xs = np.linspace(0.02, 0.97, 18)
    arch = np.clip((xs - 0.02) / (BALL - 0.02), 0.0, 1.0)
    foot = sole + lift * 0.5 * (1 + np.cos(np.pi * arch))  # footbed: heel seat high, flat from the ball on
    shoe = _Shoe(xs, foot, sole, _u(rng, tb_range), bulk, sole + lift, toe)
    sole_c = (28, 26, 26) if sum(main) < 120 or rng.random() < 0.5 else shade(main, 0.5)
    if kind == "sneaker":
        sole_c = (242, 242, 238) if sum(main) < 600 or rng.random() < 0.5 else (70, 70, 72)
    if kind == "sandal":
        sole_c = shade(main, 0.8)
    heel_c = sole_c if rng.random() < 0.7 else main
    if style == "wedge":
        heel_c = shade(main, 1.45) if sum(main) < 250 else shade(main, 0.75)
    ops = _upper(rng, shoe, kind, main) if kind != "sandal" else _sandal_straps(shoe, strap, main)
    ops += _sole(shoe, kind, gender=gender, style=style, sole_c=sole_c, heel_c=heel_c, main=main)
    flip = np.array([1.0, -1.0])
    return [Op(o.kind, o.pts * flip, o.colour, o.width, o.layer, o.edge) for o in ops], HEEL_CROP_X if crop else None


def _upper(rng: Rng, shoe: _Shoe, kind: str, main: RGB) -> list[Op]:
    """The closed upper of a sneaker, boot, pump or loafer, with its type's details."""
    up, k, tb, edge = shoe.up, shoe.bulk, shoe.toe_box, _edge(main)
    shaft = up(-0.01, _u(rng, (0.55, 0.72)) * k)
    tops = {
        "sneaker": [up(0.0, 0.22 * k), up(0.03, 0.35 * k), up(0.13, 0.31 * k), up(0.3, 0.41 * k), up(0.36, 0.36 * k)],
        "boot": [shaft, (0.33, shaft[1]), up(0.39, 0.3 * k), up(0.55, tb + 0.08)],
        "pump": [up(0.0, 0.22 * k), *_bezier(up(0.05, 0.21 * k), up(0.32, 0.05), up(0.6, 0.1 * k), 6)[1:].tolist()],
        "loafer": [up(0.0, 0.23 * k), up(0.2, 0.2 * k), up(0.45, 0.2 * k), up(0.6, tb + 0.04)],
    }[kind]
    under = np.stack([shoe.xs, shoe.foot - 0.004], axis=1)[::-1]
    upper = _pts([(0.015, shoe.seat), *tops, *_toe(shoe.toe, shoe.sole, tb)])
    ops = [Op("poly", np.vstack([upper, under]), main, layer="fabric", edge=edge)]
    if kind in ("pump", "loafer"):  # lining seen through the low-cut opening
        lining = shade(main, 0.5) if sum(main) > 200 else (200, 180, 150)
        ops.append(Op("line", _pts(tops) - [0.0, 0.012], lining, 0.018))
    if kind == "sneaker":
        lace = _pts([up(0.36, 0.34 * k), up(0.66, tb + 0.04)])
        ops.append(Op("line", lace - [0.0, 0.05], shade(main, 0.8), 0.03))
        for x in np.linspace(0.38, 0.6, 4):
            y = float(np.interp(x, lace[:, 0], lace[:, 1]))
            ops.append(Op("line", _pts([(x - 0.015, y - 0.06), (x + 0.03, y + 0.012)]), _contrast(main), 0.022))
        swoosh = _bezier(up(0.2, 0.12 * k), up(0.45, 0.03), up(0.68, 0.17 * k), 6)
        ops.append(Op("line", swoosh, _contrast(main) if sum(main) < 600 else (60, 90, 170), 0.028))
    elif kind == "boot":
        top = shaft[1] - 0.015
        ops.append(Op("line", _pts([(-0.01, top), (0.33, top)]), shade(main, 0.7), 0.03))
        ops.append(Op("line", _pts([(0.24, top - 0.04), up(0.24, 0.1)]), shade(main, 0.55), 0.012))
    elif kind == "loafer":
        band = _pts([up(0.42, 0.2 * k), up(0.53, 0.21 * k), up(0.53, 0.06), up(0.42, 0.055)])
        ops.append(Op("poly", band, shade(main, 0.8), layer="solid", edge=edge))
        seam = _bezier(up(0.55, 0.13 * k), up(0.8, tb * 0.75), up(0.95, tb * 0.45), 9)
        ops.append(Op("dots", seam, edge, 0.007))
    return ops


def _sole(shoe: _Shoe, kind: str, *, gender: str, style: str, sole_c: RGB, heel_c: RGB, main: RGB) -> list[Op]:
    """The sole along the footbed (on the ground everywhere when flat, at the forefoot otherwise) and the heel."""
    xs, extra = shoe.xs, 0.012 if kind == "sandal" else 0.0
    sole_top = np.stack([xs, shoe.foot + extra], axis=1)
    bottom = np.zeros_like(xs) if style == "none" else np.maximum(sole_top[:, 1] - shoe.sole - extra, 0.0)
    tip = _toe(shoe.toe, shoe.sole, shoe.toe_box)[-1]
    outline = [_pts([(0.0, bottom[0]), (0.0, shoe.seat)]), sole_top, _pts([(tip[0], tip[1] * 0.8), (0.97, 0.0)])]
    sole = np.vstack([*outline, np.stack([xs, bottom], axis=1)[::-1]])
    ops = [Op("poly", sole, sole_c, layer="solid", edge=shade(sole_c, 0.7))]
    if kind == "sneaker":
        stripe = shade(main, 0.9) if sum(main) < 600 else (150, 150, 150)
        ops.append(Op("line", np.stack([xs, np.full_like(xs, shoe.sole * 0.45)], axis=1), stripe, 0.012))
    if gender == "men" and kind != "sneaker":  # welt stitching
        ops.append(Op("dots", np.stack([xs, shoe.foot - 0.008], axis=1)[1:-1], _contrast(sole_c), 0.006))
    b0 = float(bottom[0])
    heels = {
        "block": [(0.015, b0), (0.2, float(np.interp(0.2, xs, bottom))), (0.18, 0.0), (0.04, 0.0)],
        "stiletto": [
            (0.02, b0), (0.11, float(np.interp(0.11, xs, bottom))), (0.086, b0 * 0.55),
            (0.083, 0.0), (0.066, 0.0), (0.05, b0 * 0.55),
        ],
        "wedge": [*np.stack([xs, bottom], axis=1)[xs <= BALL].tolist(), (BALL, 0.0), (0.02, 0.0)],
    }  # fmt: skip
    if style in heels:
        ops.append(Op("poly", _pts(heels[style]), heel_c, layer="solid", edge=shade(heel_c, 0.7)))
    if style == "wedge":  # espadrille-like bands across the wedge
        back = xs <= BALL
        for y in np.arange(0.012, b0 - 0.006, 0.02):
            end = float(np.interp(y, bottom[back][::-1], xs[back][::-1]))
            ops.append(Op("line", _pts([(0.02, y), (end - 0.012, y)]), shade(heel_c, 0.62), 0.007))
    return ops


def _sandal_straps(shoe: _Shoe, strap: float, main: RGB) -> list[Op]:
    """Toe, instep, ankle and back straps with background showing between them, and a buckle."""
    at, k, tb, hs = shoe.up, shoe.bulk, shoe.toe_box, shoe.seat
    toe = _pts([at(0.72, 0.0), at(0.72 + strap, 0.0), at(0.78 + strap, tb * 0.85), at(0.78, tb * 0.85)])
    mid = _pts([at(0.5, 0.0), at(0.5 + strap, 0.0), at(0.56 + strap, 0.16 * k), at(0.56, 0.16 * k)])
    ay, wide = hs + 0.2 * k, strap * 0.8
    ankle = _pts([(-0.005, ay), (0.3, ay + 0.02), (0.3, ay + 0.02 + wide), (-0.005, ay + wide)])
    back = _pts([(0.005, hs), (0.075, hs), (0.065, ay), (-0.005, ay)])
    ops = [Op("poly", p, main, layer="fabric", edge=_edge(main)) for p in (toe, mid, ankle, back)]
    buckle = _pts([(0.24, ay - 0.005), (0.28, ay - 0.005), (0.28, ay + 0.025 + wide), (0.24, ay + 0.025 + wide)])
    ops.append(Op("poly", buckle, (176, 176, 170), layer="solid", edge=(90, 90, 90)))
    return ops
