"""A procedural synthetic product catalog: the stand-in for a real catalog in tests, the demo and benchmarks.

``generate_catalog`` renders product photos (JPEG) and writes a manifest (see :mod:`tagger.manifest`)
whose labels follow the default taxonomy. Every label is drawn from the picture, by these rules:

Apparel (flat-lay garment; lengths are ratios, so they read the same at any scale):

- type: t_shirt = plain boxy body, ribbed neck, hem stitch; shirt = button placket with buttons down
  the centre, chest pocket, curved shirttail hem, cuffs; dress = fitted waist seam and A-line skirt;
  skirt = waistband and flared body, no top part; jacket = two pocket flaps, plus lapels over a
  contrasting inner V (collar), an inner V with buttons (v_neck) or a zip and ribbed hem (round).
- sleeve_type: short = short sleeve at 50-65 deg from vertical; long = arm-length sleeve hanging at
  16-28 deg; sleeveless = curved armholes and narrow straps; not_visible = sleeves folded behind the
  body (square shoulders, darker fold bands along both sides); skirts are always not_visible.
- neck_type: round = scooped neckline with a rib; v_neck = V-shaped neckline (or inner V on a jacket);
  collar = pointed shirt collar on a stand (lapels on a jacket, small collar and short placket on a polo);
  not_visible = a swing tag hangs over the neckline; skirts are always not_visible.
- length: shoulder-to-hem height over body width at the armpits: cropped 0.70-0.85, regular
  1.15-1.35, knee 1.80-2.00, maxi 2.55-2.80; skirts: waist-to-hem height over waist width: regular
  0.8-1.1, knee 1.6-2.1, maxi 2.6-3.2 (skirts are never cropped).
- pattern (multi-label, never solid with another): striped = one direction of bands; checked =
  translucent bands both ways (gingham); dotted = small dots on an offset grid; floral = scattered
  five-petal flowers with a centre of another ink; two at once: striped+dotted, checked+floral,
  striped+floral, checked+dotted. Element sizes scale with the garment; inks are far from the main
  colour, which stays the largest plain area of the fabric.
- colour: the fabric's colour, jittered inside a hue/saturation/value box per name (``COLOURS``).

Footwear (side profile, toe left or right):

- type: sneaker = thick two-tone sole with a stripe, laces and a side swoosh, padded collar; boot =
  shaft rising 0.5-0.8 of the length above the footbed; sandal = separate straps (toe, instep, ankle,
  back) with background between them and a buckle; pump = low-cut topline swooping to a low throat,
  lining visible, heel; loafer = low topline, strap band across the vamp and an apron seam.
- heel_height: heel seat above the forefoot sole over shoe length: flat < 0.012, low 0.045-0.065,
  mid 0.11-0.135, high 0.20-0.25 (also readable from the footbed's slope and the gap under the arch).
- heel_style: none = flat sole touching the ground along its whole length; block = broad heel;
  stiletto = thin tapered heel; wedge = banded solid fill from heel to ball; not_visible = the frame
  edge crops the shoe at 0.3 of its length, heel and all.
- gender: women = pointed toe, thin sole, low toe box, slim upper; men = square toe, thick sole with
  welt stitching, high toe box, bulky upper; unisex = round toe, medium sole and toe box.
- colour: the upper's colour (straps and sole on sandals), jittered like apparel colours.

Combinations are consistent: flat <-> none; sneakers flat or a low platform (wedge); pumps are women's,
with stiletto or block heels (low only as a kitten stiletto); men's shoes are flat or low; skirts are
never cropped, t-shirts are cropped or regular. Photos vary in frame aspect (portrait 3:4, some square
or landscape), background (white, light grey, light gradient, faint studio texture), scale (the item
spans 50-95% of the frame), placement, rotation (up to 10 deg), lighting, drop shadow, sensor noise
and JPEG quality (60-95). Each item has its own random streams (labels, pixels, label corruption,
split), seeded by ``[seed, index, stream]``: items do not depend on ``n``, rates do not change
pictures, and ``workers`` does not change the output.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from tagger.errors import TaggerError
from tagger.manifest import SPLITS, CatalogItem, write_manifest
from tagger.synth_render import render_photo
from tagger.synth_shapes import Labels
from tagger.taxonomy import NOT_VISIBLE, Taxonomy, load_taxonomy

GROUPS = ("apparel", "footwear")
LABELS, PIXELS, CORRUPTION, SPLIT = range(4)  # the random streams of one item
Table = dict[str, float]
K = TypeVar("K")

APPAREL_TYPE: Table = {"t_shirt": 0.32, "shirt": 0.22, "dress": 0.20, "skirt": 0.12, "jacket": 0.14}
APPAREL_COLOUR: Table = {
    "black": 0.18, "white": 0.16, "blue": 0.12, "grey": 0.10, "navy": 0.09, "beige": 0.07, "red": 0.06,
    "green": 0.05, "pink": 0.05, "brown": 0.04, "yellow": 0.03, "orange": 0.025, "purple": 0.025,
}  # fmt: skip
PATTERN: dict[tuple[str, ...], float] = {
    ("solid",): 0.6, ("striped",): 0.15, ("dotted",): 0.08, ("floral",): 0.08, ("checked",): 0.03,
    ("striped", "dotted"): 0.025, ("checked", "floral"): 0.01, ("striped", "floral"): 0.015,
    ("checked", "dotted"): 0.01,
}  # fmt: skip
SLEEVE: dict[str, Table] = {
    "t_shirt": {"short": 0.7, "long": 0.15, "sleeveless": 0.15},
    "shirt": {"long": 0.7, "short": 0.25, "sleeveless": 0.05},
    "dress": {"sleeveless": 0.45, "short": 0.35, "long": 0.2},
    "jacket": {"long": 0.92, "sleeveless": 0.05, "short": 0.03},
}
NECK: dict[str, Table] = {
    "t_shirt": {"round": 0.75, "v_neck": 0.2, "collar": 0.05},
    "shirt": {"collar": 0.85, "round": 0.08, "v_neck": 0.07},
    "dress": {"round": 0.45, "v_neck": 0.4, "collar": 0.15},
    "jacket": {"collar": 0.75, "v_neck": 0.15, "round": 0.1},
}
LENGTH: dict[str, Table] = {
    "t_shirt": {"regular": 0.85, "cropped": 0.15},
    "shirt": {"regular": 0.8, "knee": 0.13, "cropped": 0.07},
    "dress": {"knee": 0.52, "regular": 0.33, "maxi": 0.15},
    "skirt": {"knee": 0.5, "regular": 0.35, "maxi": 0.15},
    "jacket": {"regular": 0.62, "knee": 0.2, "cropped": 0.15, "maxi": 0.03},
}
SLEEVE_HIDDEN, NECK_HIDDEN, HEEL_HIDDEN = 0.06, 0.05, 0.05
FOOTWEAR_TYPE: Table = {"sneaker": 0.35, "boot": 0.2, "sandal": 0.18, "loafer": 0.14, "pump": 0.13}
GENDER: dict[str, Table] = {
    "sneaker": {"unisex": 0.6, "women": 0.2, "men": 0.2},
    "boot": {"women": 0.5, "men": 0.4, "unisex": 0.1},
    "sandal": {"women": 0.7, "men": 0.15, "unisex": 0.15},
    "loafer": {"men": 0.6, "women": 0.3, "unisex": 0.1},
    "pump": {"women": 1.0},
}
FLAT_OR_LOW: Table = {"flat/none": 0.6, "low/block": 0.4}
HEEL: dict[str, Table] = {  # "height/style" per type (women) or per type and gender
    "sneaker": {"flat/none": 0.94, "low/wedge": 0.06},
    "boot": {
        "flat/none": 0.3,
        "low/block": 0.25,
        "mid/block": 0.2,
        "high/block": 0.1,
        "high/stiletto": 0.1,
        "mid/wedge": 0.05,
    },
    "boot/men": FLAT_OR_LOW,
    "boot/unisex": {"flat/none": 0.5, "low/block": 0.5},
    "sandal": {
        "flat/none": 0.45,
        "low/block": 0.1,
        "mid/block": 0.1,
        "high/stiletto": 0.15,
        "mid/wedge": 0.12,
        "high/wedge": 0.08,
    },
    "sandal/men": {"flat/none": 0.9, "low/block": 0.1},
    "sandal/unisex": {"flat/none": 0.85, "low/wedge": 0.15},
    "pump": {"low/stiletto": 0.1, "mid/stiletto": 0.3, "high/stiletto": 0.35, "mid/block": 0.15, "high/block": 0.1},
    "loafer": {"flat/none": 0.7, "low/block": 0.3},
}
FOOTWEAR_COLOUR: Table = {
    "black": 0.3, "white": 0.16, "brown": 0.14, "beige": 0.08, "grey": 0.08,
    "navy": 0.06, "blue": 0.05, "red": 0.05, "pink": 0.04, "green": 0.04,
}  # fmt: skip
COLOUR_BY_GENDER = {"men": {"pink": 0.0, "red": 0.5, "black": 1.3, "brown": 1.3}, "women": {"pink": 1.5}}
CATEGORY = {
    "t_shirt": "t-shirts", "shirt": "shirts", "dress": "dresses", "skirt": "skirts", "jacket": "jackets",
    "sneaker": "sneakers", "boot": "boots", "sandal": "sandals", "pump": "pumps", "loafer": "loafers",
}  # fmt: skip
RENDERED = {
    "apparel": {
        "type": set(APPAREL_TYPE), "colour": set(APPAREL_COLOUR), "pattern": {v for p in PATTERN for v in p},
        "sleeve_type": {*SLEEVE["t_shirt"], NOT_VISIBLE}, "neck_type": {*NECK["t_shirt"], NOT_VISIBLE},
        "length": {v for t in LENGTH.values() for v in t},
    },
    "footwear": {
        "type": set(FOOTWEAR_TYPE), "gender": {"women", "men", "unisex"}, "colour": set(FOOTWEAR_COLOUR),
        "heel_height": {"flat", "low", "mid", "high"},
        "heel_style": {"none", "block", "stiletto", "wedge", NOT_VISIBLE},
    },
}  # fmt: skip


class SynthError(TaggerError):
    """The synthetic catalog cannot be made as configured (bad rates, a taxonomy it cannot render)."""


@dataclass(frozen=True)
class SynthConfig:
    """What to generate: size, seed, label corruption rates, image size and split."""

    n: int = 1000
    seed: int = 0
    missing_rate: float = 0.1
    noise_rate: float = 0.03
    alias_rate: float = 0.05
    image_width: int = 240
    image_height: int = 320
    split: str | None = None
    footwear_share: float = 0.4

    def __post_init__(self) -> None:
        rates = (self.missing_rate, self.noise_rate, self.alias_rate, self.footwear_share)
        if self.n < 0 or self.seed < 0:
            raise SynthError(f"n and seed must not be negative (n={self.n}, seed={self.seed})")
        if not all(0.0 <= r <= 1.0 for r in rates) or sum(rates[:3]) > 1.0:
            raise SynthError(
                "missing_rate, noise_rate, alias_rate and footwear_share must be in [0, 1], the rates sum <= 1"
            )
        if min(self.image_width, self.image_height) < 64:
            raise SynthError(f"images must be at least 64 px a side, not {self.image_width}x{self.image_height}")
        if self.split is not None and self.split not in SPLITS:
            raise SynthError(f"split {self.split!r} is not one of {', '.join(SPLITS)} (or None)")


@dataclass(frozen=True)
class SynthItem:
    """One planned item (no pixels): its group, category, true and written labels, and split."""

    index: int
    group: str
    category: str
    truth: Labels
    labels: Labels
    split: str


def item_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random stream of one item (labels, pixels, corruption or split), independent of n."""
    return np.random.default_rng([seed, index, stream])


def _pick(rng: np.random.Generator, table: Mapping[K, float]) -> K:
    weights = np.cumsum(list(table.values()))
    return list(table)[min(int(np.searchsorted(weights, rng.random() * weights[-1], side="right")), len(table) - 1)]


def check_taxonomy(taxonomy: Taxonomy, groups: tuple[str, ...] = GROUPS) -> None:
    """Raise SynthError unless every attribute of the groups is one we render, with all our values."""
    for group in groups:
        if group not in taxonomy.groups:
            raise SynthError(f"the taxonomy has no group {group!r}; the synthetic catalog renders {', '.join(GROUPS)}")
        for name, attribute in taxonomy.groups[group].attributes.items():
            if name not in RENDERED[group]:
                raise SynthError(f"{group}.{name} is not an attribute the synthetic catalog can render")
            missing = RENDERED[group][name] - set(attribute.values)
            if missing:
                raise SynthError(
                    f"{group}.{name} lacks value(s) the synthetic catalog renders: {', '.join(sorted(missing))}"
                )


def sample_labels(rng: np.random.Generator, taxonomy: Taxonomy, group: str) -> Labels:
    """The true labels (canonical values, long-tailed, consistent combinations) of one item of a group.

    Returns every attribute the renderer draws, including those the taxonomy's group may lack.
    """
    if group not in GROUPS:
        raise SynthError(f"cannot sample group {group!r}; the synthetic catalog renders {', '.join(GROUPS)}")
    check_taxonomy(taxonomy, (group,))
    if group == "apparel":
        kind = _pick(rng, APPAREL_TYPE)
        colour, length, patterns = _pick(rng, APPAREL_COLOUR), _pick(rng, LENGTH[kind]), _pick(rng, PATTERN)
        top = kind != "skirt"
        hide_sleeve, hide_neck = rng.random() < SLEEVE_HIDDEN, rng.random() < NECK_HIDDEN
        sleeve = _pick(rng, SLEEVE[kind]) if top and not hide_sleeve else NOT_VISIBLE
        neck = _pick(rng, NECK[kind]) if top and not hide_neck else NOT_VISIBLE
        return {
            "type": (kind,), "colour": (colour,), "pattern": patterns,
            "sleeve_type": (sleeve,), "neck_type": (neck,), "length": (length,),
        }  # fmt: skip
    kind = _pick(rng, FOOTWEAR_TYPE)
    gender = _pick(rng, GENDER[kind])
    height, style = _pick(rng, HEEL.get(f"{kind}/{gender}", HEEL[kind])).split("/")
    weights = {c: w * COLOUR_BY_GENDER.get(gender, {}).get(c, 1.0) for c, w in FOOTWEAR_COLOUR.items()}
    colour = _pick(rng, weights)
    if rng.random() < HEEL_HIDDEN:
        style = NOT_VISIBLE
    return {"type": (kind,), "gender": (gender,), "colour": (colour,), "heel_height": (height,), "heel_style": (style,)}


def corrupt_labels(
    rng: np.random.Generator,
    taxonomy: Taxonomy,
    group: str,
    truth: Labels,
    *,
    missing_rate: float,
    noise_rate: float,
    alias_rate: float,
) -> Labels:
    """The labels written to the manifest: per cell, blank (missing), a wrong value (noise), an alias, or the truth.

    Only the group's attributes in the taxonomy are written; each cell takes exactly two draws.
    """
    written: Labels = {}
    for name, attribute in taxonomy.groups[group].attributes.items():
        true = truth.get(name)
        if not true:
            continue
        u, pick = rng.random(), rng.random()
        if u < missing_rate:
            continue
        if u < missing_rate + noise_rate:
            wrong = [v for v in attribute.values if v not in true]
            written[name] = (wrong[int(pick * len(wrong))],)
        elif u < missing_rate + noise_rate + alias_rate:
            aliases = {v: sorted(a for a, t in attribute.merges.items() if t == v) for v in true}
            written[name] = tuple(aliases[v][int(pick * len(aliases[v]))] if aliases[v] else v for v in true)
        else:
            written[name] = true
    return written


def plan_item(config: SynthConfig, taxonomy: Taxonomy, index: int) -> SynthItem:
    """Everything about item ``index`` except its pixels: cheap, for label statistics."""
    rng = item_rng(config.seed, index, LABELS)
    group = "footwear" if rng.random() < config.footwear_share else "apparel"
    truth = sample_labels(rng, taxonomy, group)
    kind = truth["type"][0]
    if group == "apparel":
        who = "women" if kind in ("dress", "skirt") or rng.random() < 0.6 else "men"
        category = f"{who}/clothing/{CATEGORY[kind]}"
    else:
        gender = truth["gender"][0]
        category = f"shoes/{CATEGORY[kind]}" if gender == "unisex" else f"{gender}/shoes/{CATEGORY[kind]}"
    corrupt = item_rng(config.seed, index, CORRUPTION)
    labels = corrupt_labels(
        corrupt, taxonomy, group, truth,
        missing_rate=config.missing_rate, noise_rate=config.noise_rate, alias_rate=config.alias_rate,
    )  # fmt: skip
    split = config.split
    if split is None:
        u = item_rng(config.seed, index, SPLIT).random()
        split = "train" if u < 0.8 else "val" if u < 0.9 else "test"
    return SynthItem(index, group, category, truth, labels, split)


def render_item(
    rng: np.random.Generator, group: str, labels: dict[str, tuple[str, ...]], width: int, height: int
) -> Image.Image:
    """Render one product photo (RGB, width x height) that shows every label (see the module docstring)."""
    if group not in GROUPS:
        raise SynthError(f"cannot render group {group!r}; the synthetic catalog renders {', '.join(GROUPS)}")
    return render_photo(rng, group, labels, width, height)


def _frame(rng: np.random.Generator, group: str, width: int, height: int) -> tuple[int, int]:
    """The configured size (portrait) mostly, else square or landscape of about the same area (shoes more often)."""
    u = rng.random()
    side = round((width * height) ** 0.5)
    portrait, square = (0.75, 0.9) if group == "apparel" else (0.4, 0.7)
    return (width, height) if u < portrait else (side, side) if u < square else (height, width)


def _make_item(job: tuple[Path, SynthConfig, Taxonomy, int]) -> CatalogItem:
    out_dir, config, taxonomy, index = job
    plan = plan_item(config, taxonomy, index)
    rng = item_rng(config.seed, index, PIXELS)
    width, height = _frame(rng, plan.group, config.image_width, config.image_height)
    quality = int(rng.integers(60, 96))
    image = render_item(rng, plan.group, plan.truth, width, height)
    name = f"images/{index:06d}.jpg"
    image.save(out_dir / name, "JPEG", quality=quality)
    return CatalogItem(f"{index:06d}", name, plan.category, plan.split, plan.labels)


def generate_catalog(
    out_dir: Path,
    config: SynthConfig,
    taxonomy: Taxonomy | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> Path:
    """Render config.n images into out_dir/images/*.jpg and write out_dir/manifest.csv; return the manifest path.

    ``workers`` > 1 renders in that many spawned processes; the output is byte-identical to one worker.
    """
    taxonomy = taxonomy if taxonomy is not None else load_taxonomy()
    check_taxonomy(taxonomy, GROUPS if config.footwear_share > 0 else ("apparel",))
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, config, taxonomy, i) for i in range(config.n)]
    items: list[CatalogItem] = []
    if workers <= 1 or config.n < 2:
        results = map(_make_item, jobs)
        for item in results:
            items.append(item)
            if progress is not None:
                progress(len(items), config.n)
    else:
        with multiprocessing.get_context("spawn").Pool(min(workers, config.n)) as pool:
            for item in pool.imap(_make_item, jobs, chunksize=max(1, min(64, config.n // (workers * 4)))):
                items.append(item)
                if progress is not None:
                    progress(len(items), config.n)
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, items, taxonomy.attribute_names())
    return manifest
