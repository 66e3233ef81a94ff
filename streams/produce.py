"""Publishing listing events: a catalog manifest becomes one ``listing_event`` per row on the listings topic.

This is the merchant side of the demo and a load generator: ``swatch produce --from MANIFEST`` turns
each row of a manifest (:mod:`tagger.manifest`) into a listing event keyed by listing id. Local image
paths become URLs under ``--base-url`` (for example what ``swatch serve-images`` serves); http(s)
images are used as they are.

A share of listings (``declared_rate``) carries merchant-declared attributes copied from the row's
labels, and a share of those declarations (``wrong_declared_rate``) deliberately names another valid
value of the attribute, so the worker's "declared value conflicts with the image" logic has
something to find. Every choice comes from a random stream per (seed, listing id): the same seed
gives the same listings, whatever ``limit`` is.

Publishing waits for every delivery report. A record the broker did not acknowledge is counted
with its reason, and :class:`PublishError` is raised unless the caller asked for the report only.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.codec import Codec
from streams.config import Settings
from streams.errors import ProduceError
from streams.events import listing_event
from streams.kafka import producer_config
from streams.topics import topic_partitions
from tagger.manifest import CatalogItem, read_manifest
from tagger.taxonomy import NOT_VISIBLE, Attribute, Group, Taxonomy, UnknownValueError, load_taxonomy

logger = logging.getLogger(__name__)

DEFAULT_MERCHANT = "demo-merchant"
MAX_DECLARED = 3  # a declaring merchant fills in one to three attributes
DEFAULT_TIMEOUT_S = 60.0
_TITLE_ATTRIBUTES = ("colour", "type")


@dataclass(frozen=True)
class PlannedListing:
    """One listing event built from a manifest row, with what was declared wrongly on purpose.

    ``wrong_declared`` maps each attribute whose declared value contradicts the labels to the
    labelled (canonical) values, so a demo can check that the worker flags exactly these.
    """

    record: dict[str, Any]
    item: CatalogItem
    wrong_declared: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishReport:
    """What a publish did: records acknowledged, records failed (with reasons and counts), seconds."""

    topic: str
    sent: int
    failed: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Records handed to the producer."""
        return self.sent + self.failed

    def describe_failures(self) -> str:
        """One line: how many records failed and why (most frequent reason first)."""
        reasons = "; ".join(f"{reason} ({count})" for reason, count in Counter(self.errors).most_common())
        return f"{self.failed} of {self.total} records to {self.topic} were not acknowledged: {reasons}"


class PublishError(ProduceError):
    """Some records were not acknowledged by the broker; ``report`` says how many and why."""

    def __init__(self, message: str, report: PublishReport) -> None:
        super().__init__(message)
        self.report = report


# -- building listing events ------------------------------------------------------------------


def plan_listings(
    manifest: Path,
    base_url: str | None,
    *,
    limit: int | None = None,
    declared_rate: float = 0.0,
    wrong_declared_rate: float = 0.0,
    seed: int = 0,
    version: int = 1,
    merchant_id: str = DEFAULT_MERCHANT,
    taxonomy: Taxonomy | None = None,
) -> list[PlannedListing]:
    """Build one listing event per manifest row (the first ``limit`` rows), with the declarations made."""
    for name, rate in (("declared rate", declared_rate), ("wrong declared rate", wrong_declared_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ProduceError(f"{name} must be between 0 and 1, got {rate}")
    if limit is not None and limit < 0:
        raise ProduceError(f"limit must not be negative, got {limit}")
    if seed < 0:
        raise ProduceError(f"seed must not be negative, got {seed}")
    if version < 1:
        raise ProduceError(f"listing version must be at least 1, got {version}")
    if base_url is not None:
        _check_base_url(base_url)
    manifest = Path(manifest)
    items = read_manifest(manifest)
    if limit is not None:
        items = items[:limit]
    _check_unique_ids(items, manifest)
    taxonomy = taxonomy or load_taxonomy()
    root = manifest.resolve().parent
    planned = []
    for item in items:
        rng = _listing_rng(seed, item.id)
        declared, wrong = _declarations(
            item, taxonomy.group_for(item.category), rng, declared_rate, wrong_declared_rate
        )
        record = listing_event(
            item.id,
            version,
            merchant_id=merchant_id,
            category_path=[part.strip() for part in item.category.split("/") if part.strip()],
            title=_title(item),
            image_urls=[_image_url(item, root, base_url)],
            declared=declared,
        )
        planned.append(PlannedListing(record, item, wrong))
    return planned


def listing_records(manifest: Path, base_url: str | None, **options: Any) -> list[dict[str, Any]]:
    """The listing event records for a manifest; ``options`` are :func:`plan_listings`'s."""
    return [listing.record for listing in plan_listings(manifest, base_url, **options)]


def _check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProduceError(f"base URL {base_url!r} must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/")


def _check_unique_ids(items: list[CatalogItem], manifest: Path) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ProduceError(
                f"{manifest}: listing id {item.id!r} appears more than once; each row becomes a listing, "
                "so ids must be unique (or leave the id column blank to use row numbers)"
            )
        seen.add(item.id)


def _listing_rng(seed: int, listing_id: str) -> np.random.Generator:
    """The random stream of one listing: depends on the seed and the id only, not on row order or limit."""
    digest = hashlib.sha256(listing_id.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "big") for i in range(0, 16, 4)]
    return np.random.default_rng([seed, *words])


def _image_url(item: CatalogItem, root: Path, base_url: str | None) -> str:
    """The row's image as a URL: http(s) as given, else ``base_url`` + the path under the manifest's folder."""
    if item.image.startswith(("http://", "https://")):
        return item.image
    if base_url is None:
        raise ProduceError(
            f"listing {item.id}: image {item.image!r} is a local file; pass --base-url with the URL that "
            f"serves {root} (for example the one `swatch serve-images` prints)"
        )
    path = Path(item.image)
    if path.is_absolute():
        try:
            relative = path.resolve().relative_to(root).as_posix()
        except ValueError:
            raise ProduceError(
                f"listing {item.id}: image {item.image} is outside the manifest's folder {root}, "
                f"so no URL under {base_url} names it"
            ) from None
    else:
        relative = posixpath.normpath(path.as_posix())
        if relative == ".." or relative.startswith("../"):
            raise ProduceError(
                f"listing {item.id}: image {item.image} is outside the manifest's folder {root}, "
                f"so no URL under {base_url} names it"
            )
    return f"{base_url.rstrip('/')}/{quote(relative)}"


def _title(item: CatalogItem) -> str | None:
    """A merchant-style title from the labels, e.g. 'navy dress'; None when neither label is there."""
    words = []
    for name in _TITLE_ATTRIBUTES:
        values = [v for v in item.labels.get(name, ()) if v.strip().lower() != NOT_VISIBLE]
        if values:
            words.append(values[0].replace("_", " "))
    return " ".join(words) or None


def _labelled_values(item: CatalogItem, attribute: Attribute) -> tuple[str, ...]:
    """The row's canonical, visible values of an attribute; empty when unlabelled or not a taxonomy value."""
    try:
        values = tuple(dict.fromkeys(attribute.canonical(v) for v in item.labels.get(attribute.name, ())))
    except UnknownValueError:
        return ()
    values = tuple(v for v in values if v != NOT_VISIBLE)
    return values if attribute.multi_label else values[:1]


def _declarations(
    item: CatalogItem,
    group: Group | None,
    rng: np.random.Generator,
    declared_rate: float,
    wrong_rate: float,
) -> tuple[dict[str, list[str]], dict[str, tuple[str, ...]]]:
    """The merchant's declared attributes for one listing, and which of them contradict the labels."""
    # The first draw decides whether the listing declares anything, so raising the rate only adds
    # listings: the ones that declared at a lower rate still declare the same values.
    if rng.random() >= declared_rate or group is None:
        return {}, {}
    candidates = [
        (attribute, values) for attribute in group.attributes.values() if (values := _labelled_values(item, attribute))
    ]
    if not candidates:
        return {}, {}
    count = int(rng.integers(1, min(MAX_DECLARED, len(candidates)) + 1))
    chosen = sorted(int(i) for i in rng.choice(len(candidates), size=count, replace=False))
    declared: dict[str, list[str]] = {}
    wrong: dict[str, tuple[str, ...]] = {}
    for index in chosen:
        attribute, values = candidates[index]
        wrong_draw, pick = rng.random(), rng.random()
        others = [v for v in attribute.values if v != NOT_VISIBLE and v not in values]
        if wrong_draw < wrong_rate and others:
            declared[attribute.name] = [others[min(int(pick * len(others)), len(others) - 1)]]
            wrong[attribute.name] = values
        else:
            declared[attribute.name] = list(values)
    return declared, wrong


# -- publishing -------------------------------------------------------------------------------


def publish_listings(
    settings: Settings,
    records: Iterable[dict[str, Any]],
    *,
    topic: str | None = None,
    codec: Codec | None = None,
    bootstrap: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    strict: bool = True,
) -> PublishReport:
    """Encode and publish listing events keyed by listing id; every record is encoded before any is sent.

    Waits for every delivery report. With ``strict`` (the default) any failed delivery raises
    :class:`PublishError` (carrying the report); otherwise the report counts them.
    """
    topic = topic or settings.topics.listings
    codec = codec or Codec.from_settings(settings.registry)
    pairs = [
        (str(record["listing_id"]).encode(), codec.encode("listing_event", record, topic=topic)) for record in records
    ]
    return publish_raw(settings, topic, pairs, bootstrap=bootstrap, timeout_s=timeout_s, strict=strict)


def publish_raw(
    settings: Settings,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes | None]],
    *,
    bootstrap: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    strict: bool = True,
) -> PublishReport:
    """Publish raw (key, value) pairs as they are: malformed events, tombstones (value None), anything.

    The topic must exist (the producer never auto-creates one). A record not acknowledged within
    ``timeout_s`` counts as failed.
    """
    # Ours first, so an operator's explicit kafka.extra still wins (producer_config applies it last).
    conf = {
        # A typo in a topic name must not create a topic with the broker's default partitioning.
        "allow.auto.create.topics": False,
        # Fail a delivery with a reason after timeout_s instead of retrying for librdkafka's 5 minutes.
        "message.timeout.ms": max(1000, int(timeout_s * 1000)),
    } | producer_config(settings.kafka, bootstrap)
    producer = Producer(conf)
    try:
        topic_partitions(producer, topic, str(conf["bootstrap.servers"]), timeout_s=min(timeout_s, 15.0))
        report = _send(producer, topic, items, timeout_s)
    finally:
        _close(producer)
    if report.failed:
        logger.warning("%s", report.describe_failures())
        if strict:
            raise PublishError(report.describe_failures(), report)
    return report


def _send(
    producer: Producer, topic: str, items: Iterable[tuple[bytes | None, bytes | None]], timeout_s: float
) -> PublishReport:
    """Produce every pair and wait for every delivery report; failures are counted by reason."""
    started = time.monotonic()
    acked = 0
    errors: Counter[str] = Counter()

    def on_delivery(error: KafkaError | None, _msg: Message) -> None:
        nonlocal acked
        if error is None:
            acked += 1
        else:
            errors[f"{error.name()}: {error.str()}"] += 1

    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: serve delivery reports, then retry
                producer.poll(0.1)
            except KafkaException as exc:  # refused before sending, e.g. larger than message.max.bytes
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                errors[f"{error.name()}: {error.str()}" if error else str(exc)] += 1
                break
        producer.poll(0)
    # message.timeout.ms makes every report arrive within timeout_s; the margin covers the last batch.
    unreported = producer.flush(timeout_s + 5.0)
    if unreported:
        errors[f"no delivery report within {timeout_s:.0f}s"] += unreported
    return PublishReport(topic, acked, sum(errors.values()), time.monotonic() - started, dict(errors))


def _close(producer: Producer) -> None:
    """Drop the producer's connections now, not when it is collected (older confluent-kafka has no close())."""
    close = getattr(producer, "close", None)
    if callable(close):
        close()
