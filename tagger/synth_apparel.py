"""Garments of the synthetic catalog: tops, dresses, skirts and jackets, and fabric patterns, in item units.

A top's body is one unit wide at the armpits with its shoulder line at y = 0 (y down); a skirt's
waistband starts at y = 0. The rules that tie each label to something visible are in :mod:`tagger.synth`.
"""

from __future__ import annotations

import numpy as np

from tagger.synth_shapes import (
    RGB,
    Array,
    Colour,
    Labels,
    Op,
    Rng,
    as_points,
    bezier,
    contrast_colour,
    edge_colour,
    inks,
    mirror,
    shade,
    uniform,
)

# Body length (shoulder line to hem) over body width at the armpits, per length value, for tops and
# dresses; for skirts, waist-to-hem height over waist width (half-width 0.34-0.38 below).
LENGTH_RATIO = {"cropped": (0.70, 0.85), "regular": (1.15, 1.35), "knee": (1.80, 2.00), "maxi": (2.55, 2.80)}
SKIRT_LENGTH = {"regular": (0.62, 0.76), "knee": (1.25, 1.42), "maxi": (1.95, 2.20)}


def apparel(rng: Rng, labels: Labels, main: RGB) -> list[Op]:
    """A flat-lay garment (fabric silhouette plus details) whose labels are all visible (see tagger.synth)."""
    kind, length = labels["type"][0], labels["length"][0]
    if kind == "skirt":
        return _skirt(rng, length, main)
    return _top(rng, kind, sleeve=labels["sleeve_type"][0], neck=labels["neck_type"][0], length=length, main=main)


def _skirt(rng: Rng, length: str, main: RGB) -> list[Op]:
    wh, ln, band = uniform(rng, (0.34, 0.38)), uniform(rng, SKIRT_LENGTH[length]), 0.075
    hh = wh + uniform(rng, (0.16, 0.28)) * ln
    left = as_points([(-wh, band), (-hh, ln), (-hh * 0.5, ln + 0.02), (0.0, ln + 0.025)])
    body = np.vstack([left, mirror(left[::-1])])
    edge = edge_colour(main)
    ops = [Op("poly", body, main, layer="fabric", edge=edge)]
    waist = as_points([(-wh - 0.01, 0.0), (wh + 0.01, 0.0), (wh, band), (-wh, band)])
    ops.append(Op("poly", waist, shade(main, 0.86), layer="solid", edge=edge))
    ops.append(Op("dots", as_points([(wh * 0.7, band / 2)]), contrast_colour(main), 0.022))
    return ops + _drape(rng, main, top_half=wh, top=band, hem_half=hh, hem=ln)


def _drape(rng: Rng, main: RGB, *, top_half: float, top: float, hem_half: float, hem: float) -> list[Op]:
    """Two to four soft fold lines fanning from the waist to the hem."""
    fracs = rng.uniform(-0.7, 0.7, int(rng.integers(2, 5)))
    lines = [as_points([(f * top_half, top + 0.05), (f * hem_half * 0.95, hem - 0.03)]) for f in fracs]
    return [Op("line", line, shade(main, 0.86), 0.01) for line in lines]


def _sleeve(rng: Rng, shoulder: Array, armpit: Array, sleeve: str) -> tuple[Array, Array]:
    """A left sleeve polygon and its cuff band; angle from vertical and length depend on the sleeve type."""
    angle = np.radians(uniform(rng, (50, 65)) if sleeve == "short" else uniform(rng, (16, 28)))
    length = uniform(rng, (0.28, 0.36)) if sleeve == "short" else uniform(rng, (1.0, 1.15))
    end_w = uniform(rng, (0.24, 0.28)) if sleeve == "short" else uniform(rng, (0.13, 0.16))
    d = np.array([-np.sin(angle), np.cos(angle)])
    n = np.array([-np.cos(angle), -np.sin(angle)])
    c0 = (shoulder + armpit) / 2
    c1 = c0 + d * length
    poly = np.vstack([shoulder, c1 + n * end_w / 2, c1 - n * end_w / 2, armpit])
    cb = c0 + d * (length - 0.09)
    cuff = np.vstack([cb + n * end_w * 0.53, c1 + n * end_w / 2, c1 - n * end_w / 2, cb - n * end_w * 0.53])
    return poly, cuff


def _top(rng: Rng, kind: str, *, sleeve: str, neck: str, length: str, main: RGB) -> list[Op]:
    ln = uniform(rng, LENGTH_RATIO[length])
    nw, bw, ay, sy = uniform(rng, (0.15, 0.19)), 0.49, 0.34, 0.06
    edge, dark = edge_colour(main), shade(main, 0.82)
    if kind == "dress":
        wy = min(0.55, ln * 0.45)
        wh = uniform(rng, (0.36, 0.40))
        hh = wh + uniform(rng, (0.2, 0.26)) * (ln - wy)
        side = [(-hh, ln), (-wh, wy), (-bw, ay)]
    else:
        hh = bw + uniform(rng, (0.0, 0.05)) + max(0.0, ln - 1.4) * 0.06
        side = [(-hh, ln), (-bw, ay)]
    hem = [(0.0, ln + 0.015), (-hh * 0.7, ln - 0.01), (-hh, ln - 0.07)] if kind == "shirt" else [(0.0, ln)]
    if sleeve == "sleeveless":
        shoulder = [*bezier((-bw, ay + 0.02), (-0.3, 0.3), (-nw - 0.12, 0.0))[1:].tolist()]
    else:
        shoulder = [(-0.5, sy)]
    left = as_points([*hem, *side, *shoulder, (-nw, 0.0)])
    # the body keeps a shallow round neckline; deeper necklines are painted over it
    tag = neck == "not_visible"
    shape = "round" if tag or kind == "jacket" or neck == "collar" else neck
    depth = {"round": uniform(rng, (0.09, 0.12)), "v_neck": uniform(rng, (0.32, 0.42))}[shape]
    if kind == "jacket" or neck == "collar":
        depth = 0.07
    t = np.linspace(0.0, np.pi, 9)
    front = (
        np.stack([-nw * np.cos(t), depth * np.sin(t)], axis=1)
        if shape == "round"
        else as_points([(-nw, 0), (0, depth), (nw, 0)])
    )
    body = np.vstack([left, front[1:-1], mirror(left[::-1])])
    ops: list[Op] = []
    if sleeve in ("short", "long"):
        poly, cuff = _sleeve(rng, np.array([-0.5, sy]), np.array([-bw, ay]), sleeve)
        ops += [Op("poly", p, main, layer="fabric", edge=edge) for p in (poly, mirror(poly))]
        if sleeve == "long" and kind in ("shirt", "jacket"):
            ops += [Op("poly", c, dark, layer="solid", edge=edge) for c in (cuff, mirror(cuff))]
    ops.append(Op("poly", body, main, layer="fabric", edge=edge))
    back = np.stack([nw * np.cos(t), 0.035 * np.sin(t)], axis=1)
    ops.append(Op("poly", np.vstack([front, back]), shade(main, 0.55), layer="solid"))
    if sleeve == "not_visible":  # sleeves folded behind the body: square shoulders with fold bands
        for sign in (-1.0, 1.0):
            band = as_points(
                [(0.5 * sign, sy), (0.37 * sign, sy + 0.01), (0.37 * sign, ln - 0.06), (0.5 * sign, ln - 0.06)]
            )
            ops.append(Op("poly", band, (0, 0, 0, 46)))
            ops.append(Op("line", band[1:3], edge, 0.012))
    if not tag:
        ops += _neck_details(rng, kind, neck, nw=nw, front=front, main=main)
    ops += _body_details(rng, kind, neck, ln=ln, hh=hh, main=main)
    if kind == "dress":  # waist seam and drape lines
        ops.append(Op("line", as_points([(-wh, wy), (wh, wy)]), dark, 0.014))
        ops += _drape(rng, main, top_half=wh, top=wy, hem_half=hh, hem=ln)
    if tag:
        ops += _swing_tag(rng)
    return ops


def _neck_details(rng: Rng, kind: str, neck: str, *, nw: float, front: Array, main: RGB) -> list[Op]:
    edge, dark = edge_colour(main), shade(main, 0.82)
    ops: list[Op] = []
    if kind == "jacket" and neck in ("collar", "v_neck"):
        vd = uniform(rng, (0.42, 0.5)) if neck == "collar" else uniform(rng, (0.34, 0.42))
        ops.append(
            Op(
                "poly",
                as_points([(-nw + 0.01, 0.0), (nw - 0.01, 0.0), (0.0, vd)]),
                contrast_colour(main),
                layer="solid",
            )
        )
        if neck == "collar":
            lapel = as_points(
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
            ops += [Op("poly", p, shade(main, 0.92), layer="solid", edge=edge) for p in (lapel, mirror(lapel))]
        else:
            ops += [Op("line", as_points([(s * nw, 0.0), (0.0, vd)]), edge, 0.014) for s in (-1.0, 1.0)]
    elif neck == "collar":
        stand = as_points([(-nw - 0.02, -0.045), (nw + 0.02, -0.045), (nw + 0.01, 0.02), (-nw - 0.01, 0.02)])
        leaf = as_points([(-nw - 0.03, -0.04), (-nw - 0.06, 0.07), (-0.07, 0.21), (0.0, 0.07), (-nw + 0.02, 0.0)])
        ops.append(Op("poly", stand, dark, layer="solid", edge=edge))
        ops += [Op("poly", p, main, layer="solid", edge=edge) for p in (leaf, mirror(leaf))]
    else:
        ops.append(Op("line", front, shade(main, 0.78), 0.03 if kind != "jacket" else 0.05))
    return ops


def _body_details(rng: Rng, kind: str, neck: str, *, ln: float, hh: float, main: RGB) -> list[Op]:
    edge, dark = edge_colour(main), shade(main, 0.82)
    ops: list[Op] = []
    if kind == "t_shirt":
        ops.append(Op("line", as_points([(-hh + 0.01, ln - 0.04), (hh - 0.01, ln - 0.04)]), dark, 0.008))
        if neck == "collar":  # polo: short placket with two buttons
            ops.append(Op("line", as_points([(0.0, 0.07), (0.0, 0.3)]), dark, 0.03))
            ops.append(Op("dots", as_points([(0.0, 0.14), (0.0, 0.25)]), contrast_colour(main), 0.016))
    elif kind == "shirt":
        top = 0.07 if neck == "collar" else 0.12
        ops.append(Op("line", as_points([(0.0, top), (0.0, ln)]), dark, 0.04))
        ops.append(Op("line", as_points([(0.02, top), (0.02, ln)]), edge, 0.006))
        ys = np.arange(top + 0.08, ln - 0.04, 0.14)
        ops.append(Op("dots", np.stack([np.zeros_like(ys), ys], axis=1), contrast_colour(main), 0.017))
        x0 = 0.14 * (1 if rng.random() < 0.5 else -1)
        pocket = as_points([(x0, 0.24), (x0 * 2.2, 0.24), (x0 * 2.2, 0.4), (x0, 0.4), (x0, 0.24)])
        ops.append(Op("line", pocket, edge, 0.009))
    elif kind == "jacket":
        if neck == "round":  # zipped jacket with ribbed hem
            ops.append(Op("line", as_points([(0.0, 0.1), (0.0, ln)]), shade(main, 0.45), 0.025))
            ops.append(
                Op(
                    "poly",
                    as_points([(-hh, ln - 0.07), (hh, ln - 0.07), (hh, ln), (-hh, ln)]),
                    dark,
                    layer="solid",
                    edge=edge,
                )
            )
        else:
            ops.append(Op("line", as_points([(0.0, 0.42), (0.0, ln)]), edge, 0.01))
            ys = np.arange(0.52, ln - 0.05, 0.17)
            ops.append(Op("dots", np.stack([np.full_like(ys, -0.04), ys], axis=1), shade(main, 0.4), 0.022))
        yp = 0.34 + 0.55 * (ln - 0.34)
        for s in (-1.0, 1.0):
            flap = as_points([(0.12 * s, yp), (0.38 * s, yp), (0.37 * s, yp + 0.065), (0.13 * s, yp + 0.065)])
            ops.append(Op("poly", flap, shade(main, 0.8), layer="solid", edge=edge))
    return ops


def _swing_tag(rng: Rng) -> list[Op]:
    """A card tag hung over the neckline: neck type is not visible."""
    a = np.radians(uniform(rng, (-8, 8)))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    card = as_points([(-0.21, -0.06), (0.21, -0.06), (0.21, 0.44), (-0.21, 0.44)]) @ rot.T
    bars = [as_points([(x, 0.22), (x, 0.38)]) @ rot.T for x in np.linspace(-0.14, 0.14, 9)]
    ops = [Op("poly", card, (244, 242, 236), layer="solid", edge=(120, 120, 120))]
    ops += [Op("line", b, (30, 30, 30), 0.012 + 0.01 * (i % 3 == 0)) for i, b in enumerate(bars)]
    ops.append(Op("line", as_points([(-0.1, 0.05), (0.1, 0.05)]) @ rot.T, (60, 60, 60), 0.02))
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
            period = size * (uniform(rng, (0.06, 0.085)) if name == "striped" else uniform(rng, (0.1, 0.13)))
            frac = uniform(rng, (0.28, 0.42)) if name == "striped" else uniform(rng, (0.3, 0.36))
            colour: Colour = ink if name == "striped" else (*ink, int(rng.integers(150, 190)))
            directions = [rng.random() < 0.62] if name == "striped" else [True, False]
            for horizontal in directions:
                lo, hi = (y0, y1) if horizontal else (x0, x1)
                for start in np.arange(lo - period * rng.random(), hi, period):
                    a, b = start, start + period * frac
                    rect = [(x0, a), (x1, a), (x1, b), (x0, b)] if horizontal else [(a, y0), (b, y0), (b, y1), (a, y1)]
                    ops.append(Op("poly", as_points(rect), colour, layer="pattern"))
        elif name == "dotted":
            step = size * uniform(rng, (0.075, 0.095))
            gx, gy = np.meshgrid(np.arange(x0, x1 + step, step), np.arange(y0, y1 + step, step))
            gx = gx + (np.arange(gx.shape[0])[:, None] % 2) * step / 2
            centres = np.stack([gx.ravel(), gy.ravel()], axis=1)
            ops.append(Op("dots", centres, ink, step * uniform(rng, (0.22, 0.28)), layer="pattern"))
        else:  # floral: five-petal flowers with a centre of another ink, on a jittered grid
            step = size * uniform(rng, (0.17, 0.21))
            gx, gy = np.meshgrid(np.arange(x0, x1 + step, step), np.arange(y0, y1 + step, step))
            centres = np.stack([gx.ravel(), gy.ravel()], axis=1) + rng.uniform(-0.2, 0.2, (gx.size, 2)) * step
            radius = step * uniform(rng, (0.28, 0.33))
            turn = rng.uniform(0, 2 * np.pi, len(centres))[:, None] + np.arange(5)[None, :] * 2 * np.pi / 5
            petals = centres[:, None, :] + 0.55 * radius * np.stack([np.cos(turn), np.sin(turn)], axis=2)
            ops.append(Op("dots", petals.reshape(-1, 2), ink, 0.45 * radius, layer="pattern"))
            ops.append(Op("dots", centres, colours[2], 0.28 * radius, layer="pattern"))
    return ops
