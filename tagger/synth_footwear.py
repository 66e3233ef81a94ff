"""Shoes of the synthetic catalog, in side profile, in item units.

A shoe is one unit long from the back of the heel (x = 0) to the toe, with the ground at y = 0. The
rules that tie each label to something visible are in :mod:`tagger.synth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagger.synth_shapes import (
    RGB,
    Array,
    Labels,
    Op,
    Rng,
    as_points,
    bezier,
    contrast_colour,
    edge_colour,
    shade,
    uniform,
)

# Heel lift (heel seat above the forefoot's sole) over shoe length.
HEEL_LIFT = {"flat": (0.0, 0.012), "low": (0.045, 0.065), "mid": (0.11, 0.135), "high": (0.2, 0.25)}
# Gender cues: toe shape, sole thickness, toe-box height range, bulk (upper heights), sandal strap width.
GENDER_CUES = {
    "women": ("point", 0.022, (0.11, 0.125), 0.9, 0.055),
    "unisex": ("round", 0.034, (0.15, 0.165), 1.0, 0.075),
    "men": ("square", 0.050, (0.19, 0.21), 1.12, 0.095),
}
HEEL_CROP_X = 0.3  # a shoe whose heel is not visible is cropped by the frame edge at this x


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
    lift = uniform(rng, HEEL_LIFT[height])
    crop = style == "not_visible"
    if crop:  # the hidden heel is drawn as the usual heel for its height, then cropped away
        style = "none" if height == "flat" else "block" if kind in ("boot", "loafer") else "stiletto"
    xs = np.linspace(0.02, 0.97, 18)
    arch = np.clip((xs - 0.02) / (BALL - 0.02), 0.0, 1.0)
    foot = sole + lift * 0.5 * (1 + np.cos(np.pi * arch))  # footbed: heel seat high, flat from the ball on
    shoe = _Shoe(xs, foot, sole, uniform(rng, tb_range), bulk, sole + lift, toe)
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
    up, k, tb, edge = shoe.up, shoe.bulk, shoe.toe_box, edge_colour(main)
    shaft = up(-0.01, uniform(rng, (0.55, 0.72)) * k)
    tops = {
        "sneaker": [up(0.0, 0.22 * k), up(0.03, 0.35 * k), up(0.13, 0.31 * k), up(0.3, 0.41 * k), up(0.36, 0.36 * k)],
        "boot": [shaft, (0.33, shaft[1]), up(0.39, 0.3 * k), up(0.55, tb + 0.08)],
        "pump": [up(0.0, 0.22 * k), *bezier(up(0.05, 0.21 * k), up(0.32, 0.05), up(0.6, 0.1 * k), 6)[1:].tolist()],
        "loafer": [up(0.0, 0.23 * k), up(0.2, 0.2 * k), up(0.45, 0.2 * k), up(0.6, tb + 0.04)],
    }[kind]
    under = np.stack([shoe.xs, shoe.foot - 0.004], axis=1)[::-1]
    upper = as_points([(0.015, shoe.seat), *tops, *_toe(shoe.toe, shoe.sole, tb)])
    ops = [Op("poly", np.vstack([upper, under]), main, layer="fabric", edge=edge)]
    if kind in ("pump", "loafer"):  # lining seen through the low-cut opening
        lining = shade(main, 0.5) if sum(main) > 200 else (200, 180, 150)
        ops.append(Op("line", as_points(tops) - [0.0, 0.012], lining, 0.018))
    if kind == "sneaker":
        lace = as_points([up(0.36, 0.34 * k), up(0.66, tb + 0.04)])
        ops.append(Op("line", lace - [0.0, 0.05], shade(main, 0.8), 0.03))
        for x in np.linspace(0.38, 0.6, 4):
            y = float(np.interp(x, lace[:, 0], lace[:, 1]))
            ops.append(
                Op("line", as_points([(x - 0.015, y - 0.06), (x + 0.03, y + 0.012)]), contrast_colour(main), 0.022)
            )
        swoosh = bezier(up(0.2, 0.12 * k), up(0.45, 0.03), up(0.68, 0.17 * k), 6)
        ops.append(Op("line", swoosh, contrast_colour(main) if sum(main) < 600 else (60, 90, 170), 0.028))
    elif kind == "boot":
        top = shaft[1] - 0.015
        ops.append(Op("line", as_points([(-0.01, top), (0.33, top)]), shade(main, 0.7), 0.03))
        ops.append(Op("line", as_points([(0.24, top - 0.04), up(0.24, 0.1)]), shade(main, 0.55), 0.012))
    elif kind == "loafer":
        band = as_points([up(0.42, 0.2 * k), up(0.53, 0.21 * k), up(0.53, 0.06), up(0.42, 0.055)])
        ops.append(Op("poly", band, shade(main, 0.8), layer="solid", edge=edge))
        seam = bezier(up(0.55, 0.13 * k), up(0.8, tb * 0.75), up(0.95, tb * 0.45), 9)
        ops.append(Op("dots", seam, edge, 0.007))
    return ops


def _sole(shoe: _Shoe, kind: str, *, gender: str, style: str, sole_c: RGB, heel_c: RGB, main: RGB) -> list[Op]:
    """The sole along the footbed (on the ground everywhere when flat, at the forefoot otherwise) and the heel."""
    xs, extra = shoe.xs, 0.012 if kind == "sandal" else 0.0
    sole_top = np.stack([xs, shoe.foot + extra], axis=1)
    bottom = np.zeros_like(xs) if style == "none" else np.maximum(sole_top[:, 1] - shoe.sole - extra, 0.0)
    tip = _toe(shoe.toe, shoe.sole, shoe.toe_box)[-1]
    outline = [
        as_points([(0.0, bottom[0]), (0.0, shoe.seat)]),
        sole_top,
        as_points([(tip[0], tip[1] * 0.8), (0.97, 0.0)]),
    ]
    sole = np.vstack([*outline, np.stack([xs, bottom], axis=1)[::-1]])
    ops = [Op("poly", sole, sole_c, layer="solid", edge=shade(sole_c, 0.7))]
    if kind == "sneaker":
        stripe = shade(main, 0.9) if sum(main) < 600 else (150, 150, 150)
        ops.append(Op("line", np.stack([xs, np.full_like(xs, shoe.sole * 0.45)], axis=1), stripe, 0.012))
    if gender == "men" and kind != "sneaker":  # welt stitching
        ops.append(Op("dots", np.stack([xs, shoe.foot - 0.008], axis=1)[1:-1], contrast_colour(sole_c), 0.006))
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
        ops.append(Op("poly", as_points(heels[style]), heel_c, layer="solid", edge=shade(heel_c, 0.7)))
    if style == "wedge":  # espadrille-like bands across the wedge
        back = xs <= BALL
        for y in np.arange(0.012, b0 - 0.006, 0.02):
            end = float(np.interp(y, bottom[back][::-1], xs[back][::-1]))
            ops.append(Op("line", as_points([(0.02, y), (end - 0.012, y)]), shade(heel_c, 0.62), 0.007))
    return ops


def _sandal_straps(shoe: _Shoe, strap: float, main: RGB) -> list[Op]:
    """Toe, instep, ankle and back straps with background showing between them, and a buckle."""
    at, k, tb, hs = shoe.up, shoe.bulk, shoe.toe_box, shoe.seat
    toe = as_points([at(0.72, 0.0), at(0.72 + strap, 0.0), at(0.78 + strap, tb * 0.85), at(0.78, tb * 0.85)])
    mid = as_points([at(0.5, 0.0), at(0.5 + strap, 0.0), at(0.56 + strap, 0.16 * k), at(0.56, 0.16 * k)])
    ay, wide = hs + 0.2 * k, strap * 0.8
    ankle = as_points([(-0.005, ay), (0.3, ay + 0.02), (0.3, ay + 0.02 + wide), (-0.005, ay + wide)])
    back = as_points([(0.005, hs), (0.075, hs), (0.065, ay), (-0.005, ay)])
    ops = [Op("poly", p, main, layer="fabric", edge=edge_colour(main)) for p in (toe, mid, ankle, back)]
    buckle = as_points([(0.24, ay - 0.005), (0.28, ay - 0.005), (0.28, ay + 0.025 + wide), (0.24, ay + 0.025 + wide)])
    ops.append(Op("poly", buckle, (176, 176, 170), layer="solid", edge=(90, 90, 90)))
    return ops
