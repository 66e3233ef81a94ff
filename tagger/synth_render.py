"""How a planned synthetic item becomes a product photo: shapes placed, painted, lit and shot.

:func:`render_photo` takes the item's drawing steps (:mod:`tagger.synth_apparel`,
:mod:`tagger.synth_footwear`), flips, rotates, scales and places them in the frame, paints fabric,
pattern and details over a studio background with an occasional drop shadow, then adds shading,
exposure, white balance and sensor noise. The variations are listed in :mod:`tagger.synth`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from tagger.synth_apparel import apparel, pattern
from tagger.synth_footwear import footwear
from tagger.synth_shapes import Labels, Op, jitter_colour


def render_photo(rng: np.random.Generator, group: str, labels: Labels, width: int, height: int) -> Image.Image:
    """Render one product photo (RGB, width x height) of an apparel or footwear item with these labels."""
    main = jitter_colour(rng, labels["colour"][0])
    crop: float | None = None
    if group == "apparel":
        ops = apparel(rng, labels, main)
    else:
        ops, crop = footwear(rng, labels, main)
    if group == "apparel" and labels["pattern"] != ("solid",):
        fabric = np.vstack([o.pts for o in ops if o.layer == "fabric"])
        ops += pattern(rng, labels["pattern"], (*fabric.min(axis=0), *fabric.max(axis=0)), main)
    silhouette = [o for o in ops if o.layer in ("fabric", "solid")]
    points = np.vstack([o.pts for o in silhouette])
    flip = -1.0 if rng.random() < 0.5 else 1.0
    angle = 0.0 if crop is not None else np.radians(rng.uniform(-10, 10) if group == "apparel" else rng.uniform(-8, 8))
    a = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([flip, 1.0])
    q = points @ a.T
    lo, hi = q.min(axis=0), q.max(axis=0)
    if crop is not None:  # the frame edge cuts the shoe at x = crop, the heel side outside
        lo[0], hi[0] = (crop, hi[0]) if flip > 0 else (lo[0], -crop)
    fill = 0.5 + 0.45 * np.sqrt(rng.random())
    scale = float(fill * min(width / (hi[0] - lo[0]), height / (hi[1] - lo[1])))
    free = np.array([width, height]) - scale * (hi - lo)
    shift = rng.random(2) * free - scale * lo
    if crop is not None:
        shift[0] = -scale * lo[0] - 1.0 if flip > 0 else width + 1.0 - scale * hi[0]
    matrix = scale * a

    def px(pts: NDArray[np.float64]) -> list[float]:
        return list((pts @ matrix.T + shift).ravel())

    mask = Image.new("L", (width, height), 0)
    fabric_mask = Image.new("L", (width, height), 0)
    for o in silhouette:
        ImageDraw.Draw(mask).polygon(px(o.pts), fill=255)
        if o.layer == "fabric":
            ImageDraw.Draw(fabric_mask).polygon(px(o.pts), fill=255)
    solid = np.asarray(mask, dtype=np.float32) / 255.0
    canvas = _background(rng, mask, scale)
    item = Image.new("RGB", (width, height), main)
    _draw(ImageDraw.Draw(item, "RGBA"), [o for o in ops if o.layer == "pattern"], px, scale)
    canvas.paste(item, (0, 0), fabric_mask)
    draw = ImageDraw.Draw(canvas, "RGBA")
    for o in ops:
        if o.layer == "fabric" and o.edge is not None:
            draw.polygon(px(o.pts), outline=o.edge, width=max(1, round(0.01 * scale)))
    _draw(draw, [o for o in ops if o.layer in ("solid", "paint")], px, scale)
    return _light(rng, canvas, solid)


def _draw(
    draw: ImageDraw.ImageDraw, ops: list[Op], px: Callable[[NDArray[np.float64]], list[float]], scale: float
) -> None:
    for o in ops:
        if o.kind == "poly":
            draw.polygon(px(o.pts), fill=o.colour, outline=o.edge, width=max(1, round(0.008 * scale)))
        elif o.kind == "line":
            draw.line(px(o.pts), fill=o.colour, width=max(1, round(o.width * scale)), joint="curve")
        else:
            r = max(1.0, o.width * scale)
            centres = px(o.pts)
            for x, y in zip(centres[::2], centres[1::2], strict=True):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=o.colour)


def _background(rng: np.random.Generator, mask: Image.Image, scale: float) -> Image.Image:
    """White (mostly), light grey, a light gradient or a faint studio texture, with an occasional drop shadow."""
    w, h = mask.size
    kind, tint = rng.random(), rng.uniform(-2, 2, 3)
    if kind < 0.75:
        level = rng.uniform(243, 255) if kind < 0.6 else rng.uniform(205, 232)
        bg = Image.new("RGB", (w, h), tuple(int(c) for c in np.clip(level + tint, 0, 255)))
    elif kind < 0.9:
        column = np.linspace(rng.uniform(238, 255), rng.uniform(208, 232), h)[:, None] + tint
        bg = Image.fromarray(np.clip(column, 0, 255).astype(np.uint8)[:, None, :]).resize(
            (w, h), Image.Resampling.NEAREST
        )
    else:
        coarse = Image.fromarray(rng.uniform(-7, 7, (4, 3)).astype(np.float32), mode="F")
        texture = np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR)) + rng.integers(-3, 4, (h, w))
        bg = Image.fromarray(np.clip(rng.uniform(225, 240) + texture, 0, 255).astype(np.uint8)).convert("RGB")
    if rng.random() < 0.3:
        shadow = Image.new("L", (w, h), 0)
        dx, dy = (int(d) for d in rng.uniform(0.01, 0.04, 2) * scale + 1)
        shadow.paste(mask, (dx, dy))
        shadow = shadow.filter(ImageFilter.GaussianBlur(max(1.0, 0.02 * scale)))
        strength = rng.uniform(0.15, 0.3)
        gain = shadow.point([round(255 - strength * v) for v in range(256)]).convert("RGB")
        bg = ImageChops.multiply(bg, gain)
    return bg


def _light(rng: np.random.Generator, image: Image.Image, solid: NDArray[np.float32]) -> Image.Image:
    """Soft shading across the item, global brightness, contrast and white balance, and sensor noise."""
    h, w = solid.shape
    turn = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(turn) * np.linspace(0, 1, w, dtype=np.float32)[None, :]
    ramp = ramp + np.sin(turn) * np.linspace(0, 1, h, dtype=np.float32)[:, None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    gain = 255.0 * (1.0 - rng.uniform(0.04, 0.12) * ramp * solid)
    image = ImageChops.multiply(image, Image.fromarray(gain.astype(np.uint8)).convert("RGB"))
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(0.95, 1.08)
    balance = rng.uniform(0.985, 1.015, 3)[:, None]
    lut = ((np.arange(256)[None, :] - 128.0) * contrast + 128.0) * brightness * balance
    image = image.point(np.clip(lut, 0, 255).astype(np.uint8).ravel().tolist())
    spread = int(rng.integers(1, 5))
    noise = Image.fromarray(rng.integers(0, 2 * spread + 1, (h, w), dtype=np.uint8)).convert("RGB")
    return ImageChops.add(image, noise, 1.0, -spread)
