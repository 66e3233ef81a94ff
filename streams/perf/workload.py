"""The benchmarks' input: a synthetic catalog served over local HTTP and listing plans built on it.

- ``cold``: every listing has one image nobody has seen (each image is inferred once);
- ``dup80``: one listing in five brings a new image, the other four re-use the URL of an earlier
  one (re-listed photos; the URL cache, in-flight sharing and the prediction cache make them cheap);
- ``soak``: ``dup80`` with a share of broken URLs (404, refused by the SSRF guard, not an image)
  and malformed events mixed in, for hours of steady load.

A ``dup80`` or ``soak`` run longer than the catalog goes on with copies of its images (``?copy=N``:
new bytes, the same picture), so one listing in five brings a never-seen image for the whole run
and the model keeps working; before, a 30-minute soak had seen every image after two minutes.

Listing events are encoded once up front (a publisher sets each one's ``event_time`` when it sends
it); keys are the listing ids, which is how outputs are matched back to their listings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.codec import listing_event_id
from streams.produce import plan_listings
from tagger.synth import SynthConfig, generate_catalog

BROKEN_PATHS = ("no-such-image.jpg", "manifest.csv")  # a 404 and a file that is not an image
REFUSED_URL = "http://169.254.169.254/latest/meta-data/"  # cloud metadata: refused by the SSRF guard
MALFORMED = (b"this is not an Avro event", bytes([0xC3, 0x01]) + b"\x00" * 8)


@dataclass
class Catalog:
    """Unique product images (``records``: one listing event each) under ``base_url``."""

    records: list[dict[str, Any]]
    base_url: str
    root: Path


@dataclass
class Plan:
    """Listing events in publishing order; ``malformed[i]`` goes out before listing ``i`` when present."""

    name: str
    records: list[dict[str, Any]]
    unique_images: int
    malformed_at: dict[int, bytes] = field(default_factory=dict)

    @property
    def outputs_expected(self) -> int:
        """Every listing and every malformed event ends as exactly one attribute event or dead letter."""
        return len(self.records) + len(self.malformed_at)


def make_catalog(root: Path, n: int, seed: int) -> Path:
    """Render ``n`` synthetic products (240x320 JPEGs) under ``root``; returns the manifest."""
    return generate_catalog(root, SynthConfig(n=n, seed=seed, missing_rate=0.0, noise_rate=0.0, alias_rate=0.0))


def catalog(manifest: Path, base_url: str, seed: int) -> Catalog:
    """The catalog's listing events (one per product, its image under ``base_url``)."""
    planned = plan_listings(manifest, base_url, declared_rate=0.3, seed=seed, merchant_id="bench-merchant")
    return Catalog([p.record for p in planned], base_url, manifest.parent)


def plan(kind: str, source: Catalog, listings: int, *, run: str, seed: int = 0) -> Plan:
    """``listings`` events of workload ``kind`` (cold, dup80 or soak), ids unique to ``run``."""
    rng = random.Random(seed)  # noqa: S311 - a workload, not a secret
    if kind == "cold":
        if listings > len(source.records) - SPARE_IMAGES:
            raise ValueError(
                f"cold needs {listings} unique images and {SPARE_IMAGES} spares; the catalog has {len(source.records)}"
            )
        records = [_listing(r, f"{run}-{i}") for i, r in enumerate(source.records[:listings])]
        return Plan(kind, records, listings)
    if kind not in ("dup80", "soak"):
        raise ValueError(f"unknown workload {kind!r}: cold, dup80 or soak")
    records, used = [], 0
    new: list[tuple[dict[str, Any], str]] = []
    malformed: dict[int, bytes] = {}
    for i in range(listings):
        if kind == "soak" and i % 50 == 49:
            malformed[len(records)] = MALFORMED[i // 50 % len(MALFORMED)]
        if kind == "soak" and i % 40 == 39:
            url = REFUSED_URL if i // 40 % 3 == 0 else source.base_url + BROKEN_PATHS[i // 40 % 2]
            records.append(_listing(source.records[0], f"{run}-{i}", url, broken=True))
            continue
        if i % 5 == 0 or used == 0:
            new.append(_image(source, used))
            used += 1
            base, url = new[-1]
        else:
            base, url = new[rng.randrange(used)]
        records.append(_listing(base, f"{run}-{i}", url))
    return Plan(kind, records, used, malformed)


def _image(source: Catalog, n: int) -> tuple[dict[str, Any], str]:
    """The ``n``-th new image of a run: the catalog's images in order, then copies of them (new
    bytes, the same picture: ``?copy=`` of ``swatch serve-images``), so a run of any length keeps
    bringing images nobody has seen."""
    usable = len(source.records) - SPARE_IMAGES
    base = source.records[n % usable]
    url = str(base["image_urls"][0])
    return base, url if n < usable else f"{url}?copy={n // usable}"


def _listing(base: dict[str, Any], listing_id: str, url: str | None = None, *, broken: bool = False) -> dict[str, Any]:
    """A listing like ``base`` under a new id, with ``url`` as its image when given; a ``broken``
    one declares nothing (its outcome is the unusable image alone)."""
    record = dict(base, listing_id=listing_id, event_id=listing_event_id(listing_id, 1))
    if url is not None:
        record["image_urls"] = [url]
    if broken:
        record["declared_attributes"] = {}
    return record


WARM_UP_LISTINGS = 48
SPARE_IMAGES = 16


def warm_up_plan(source: Catalog, run: str) -> Plan:
    """Listings that go through every step before a run and are not counted: the catalog's spare image.

    The rig renders :data:`SPARE_IMAGES` more images than any plan uses; the warm-up listings use
    only those, so no measured image is cached by them. Their burst opens the image connections,
    starts the thread pools and runs the batch shapes a run will use.
    """
    spares = source.records[-SPARE_IMAGES:]
    records = [_listing(spares[i % len(spares)], f"{run}-warm-up-{i}") for i in range(WARM_UP_LISTINGS)]
    return Plan("warm-up", records, len(spares))


def warm_keys(plan: Plan) -> list[bytes]:
    """The Kafka keys of a plan's listings."""
    return [str(r["listing_id"]).encode() for r in plan.records]
