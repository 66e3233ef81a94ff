"""Reviewers' decisions as a versioned catalog manifest: ``swatch dataset from-reviews --out MANIFEST``.

The decisions topic is read from the beginning of every partition to its end (the end offsets
taken when the export starts; a partition is done once the consumer reports it reached its end),
so an export ends by itself and says exactly what it read. Then:

1. **Undo.** A decision whose ``event_id`` an effective later decision ``undoes`` is withdrawn (an
   undo of an undo brings the first decision back). Undos carry no decisions of their own.
2. **Latest per listing.** Of the remaining decisions, the latest per ``listing_id`` by
   ``(listing_version, decided_at)`` wins (topic order breaks ties); a repeated ``event_id`` counts once.
3. **Rows.** One manifest row per kept decision: ``id`` is ``listing_id@version``, ``category`` the
   joined ``category_path``, ``image`` the first image the reviewer saw with a content hash and
   outcome ``TAGGED`` or ``CACHE_HIT``, labels from the attribute decisions:

   * ``CONFIRMED`` / ``CORRECTED``: the values, canonical after the taxonomy's merges
     (several values of a multi-label attribute joined with ``|``);
   * ``NOT_VISIBLE``: ``not_visible`` where the attribute has that value, else blank;
   * ``NOT_APPLICABLE``: blank (a missing label: training masks it).

   Attribute names may be bare (``colour``, as the worker writes them) or ``group.attribute``.
   Unknown attributes and values are left blank and counted by reason; a row left with no label
   at all is skipped.
4. **Images.** Fetched with the worker's SSRF-safe :class:`~streams.images.ImageFetcher` and
   ``settings.fetch``, saved as ``<manifest dir>/images/<content_hash>.<ext>``; the bytes' SHA-256
   must equal the decision's ``content_hash`` (otherwise the image changed since the review and
   the decision is skipped). A file already there with the right hash is reused, not fetched.
5. **Output.** The CSV (:func:`tagger.manifest.write_manifest`) and a sidecar ``<MANIFEST>.json``:
   format version, creation time, source topic and the offsets read per partition, counts
   (records, decisions, undone, superseded, kept, rows), skipped decisions and labels by reason,
   the taxonomy's fingerprint and the CSV's SHA-256. Both are written atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.codec import Codec, to_millis
from streams.combine import USABLE
from streams.config import Settings
from streams.errors import DecodeError, KafkaAdminError, SwatchError
from streams.images import FetchResult, ImageFetcher
from streams.kafka import consumer_config
from streams.text import MAX_REASON_CHARS, clip
from streams.topics import topic_partitions
from tagger.manifest import SPLITS, CatalogItem, write_manifest
from tagger.taxonomy import NOT_VISIBLE, Attribute, Group, Taxonomy, UnknownValueError, load_taxonomy

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ExportError",
    "ExportResult",
    "PartitionRange",
    "export_decisions",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

FORMAT: Final = "swatch.review-export"
FORMAT_VERSION: Final = 1
"""Version of the sidecar's layout; bumped when a field changes meaning or goes away."""

SCHEMA: Final = "review_decision"
IMAGES_DIR: Final = "images"
_EXTENSIONS: Final = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
_MAX_EXAMPLES: Final = 50
_FETCH_CONCURRENCY: Final = 16

Progress = Callable[[int, int], None]


class ExportError(SwatchError):
    """The export cannot be made (bad options, a topic that cannot be read to its end, unwritable output)."""


@dataclass(frozen=True)
class PartitionRange:
    """What was read of one partition: from ``start`` up to (not including) ``next``; ``end`` as seen first."""

    partition: int
    start: int
    end: int
    next: int

    def to_dict(self) -> dict[str, int]:
        """Plain data for the sidecar."""
        return {"partition": self.partition, "start": self.start, "end": self.end, "next": self.next}


@dataclass
class ExportResult:
    """What an export read, kept, skipped and wrote; :meth:`to_dict` is the sidecar."""

    manifest: Path
    sidecar: Path
    topic: str
    split: str | None
    taxonomy_version: int
    taxonomy_fingerprint: str
    created_at: str = ""
    bootstrap: str | None = None
    partitions: list[PartitionRange] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    labels_skipped: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    manifest_sha256: str = ""

    @property
    def rows(self) -> int:
        """Rows written to the manifest."""
        return self.counts["rows"]

    def note(self, reason: str, decision: Mapping[str, Any] | None, detail: str = "") -> None:
        """Keep an example of a skipped decision or label (the first few only; the counters have them all)."""
        if len(self.examples) >= _MAX_EXAMPLES:
            return
        example = {"reason": reason, "detail": detail}
        if decision is not None:
            example |= {
                "listing_id": str(decision.get("listing_id")),
                "listing_version": str(decision.get("listing_version")),
                "event_id": str(decision.get("event_id")),
            }
        self.examples.append(example)

    def to_dict(self) -> dict[str, Any]:
        """The sidecar: plain JSON data."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "manifest": self.manifest.name,
            "manifest_sha256": self.manifest_sha256,
            "split": self.split or "",
            "source": {
                "bootstrap": self.bootstrap,
                "topic": self.topic,
                "schema": SCHEMA,
                "partitions": [p.to_dict() for p in self.partitions],
            },
            "taxonomy": {"version": self.taxonomy_version, "fingerprint": self.taxonomy_fingerprint},
            "counts": dict(sorted(self.counts.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "labels": dict(sorted(self.labels.items())),
            "labels_skipped": dict(sorted(self.labels_skipped.items())),
            "images": dict(sorted(self.images.items())),
            "examples": self.examples,
        }


@dataclass(frozen=True)
class _Read:
    """One decoded decision and where it was read."""

    partition: int
    offset: int
    value: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.value["event_id"])

    def order(self) -> tuple[int, int, int, int]:
        """Later wins: listing version, decision time, then topic order."""
        return (int(self.value["listing_version"]), to_millis(self.value["decided_at"]), self.partition, self.offset)


def sidecar_path(manifest: Path) -> Path:
    """Where the sidecar of ``manifest`` goes: next to it, ``<MANIFEST>.json``."""
    return manifest.with_name(manifest.name + ".json")


def export_decisions(
    settings: Settings,
    out: str | Path,
    *,
    split: str | None = None,
    taxonomy: Taxonomy | str | Path | None = None,
    codec: Codec | None = None,
    idle_timeout_s: float = 15.0,
    progress: Progress | None = None,
) -> ExportResult:
    """Export the decisions topic to the manifest ``out`` and its sidecar; see the module's docstring.

    ``split`` (``train``, ``val``, ``test``, or None/blank) goes into every row's split column.
    ``taxonomy`` is a loaded taxonomy, a YAML path or None for the shipped one. Reading fails
    with :class:`ExportError` when the topic stays silent for ``idle_timeout_s`` before every
    partition reached its end. ``progress(done, total)`` is told about the images. Synchronous:
    it runs its own event loop for the downloads, so call it outside one.
    """
    split = (split or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        raise ExportError(f"split {split!r} is not one of {', '.join(SPLITS)} (or blank)")
    tax = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out} is a directory; --out names the manifest CSV to write")
    result = ExportResult(
        manifest=out,
        sidecar=sidecar_path(out),
        topic=settings.topics.decisions,
        split=split,
        taxonomy_version=tax.version,
        taxonomy_fingerprint=tax.fingerprint(),
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        bootstrap=settings.kafka.bootstrap,
    )
    codec = codec or Codec.from_settings(settings.registry)
    reads = _read_to_end(settings, codec, result, idle_timeout_s)
    kept = _effective_latest(reads, result)
    pending = [_row(read.value, tax, result) for read in kept]
    rows = [row for row in pending if row is not None]
    try:
        (out.parent / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out.parent / IMAGES_DIR}: {exc}") from exc
    images = asyncio.run(_fetch_images(settings, rows, out.parent / IMAGES_DIR, result, progress))
    items = []
    for row in rows:
        saved = images[row.content_hash]
        if isinstance(saved, str):
            _skip(result, saved, row.decision)
            continue
        items.append(CatalogItem(row.id, f"{IMAGES_DIR}/{saved.name}", row.category, split, row.labels))
    items.sort(key=lambda item: item.id)
    result.counts["rows"] = len(items)
    _write(result, items, tax.attribute_names())
    return result


# -- reading ------------------------------------------------------------------------------------


def _read_to_end(settings: Settings, codec: Codec, result: ExportResult, idle_timeout_s: float) -> list[_Read]:
    """Every decision on the topic, from the beginning of each partition to its end."""
    topic = settings.topics.decisions
    conf = consumer_config(settings.kafka, f"swatch-export-{uuid.uuid4().hex[:12]}")
    conf["allow.auto.create.topics"] = False  # reading must never create the topic it asks about
    conf["enable.partition.eof"] = True  # the consumer says when it reached a partition's end
    consumer = Consumer(conf)
    try:
        partitions = topic_partitions(consumer, topic, str(conf["bootstrap.servers"]))
        reader = _Reader(consumer, topic, {p: _watermarks(consumer, topic, p) for p in partitions}, codec, result)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        reader.run(idle_timeout_s)
    finally:
        consumer.close()
    result.partitions = [
        PartitionRange(p, low, high, reader.next_offset[p]) for p, (low, high) in sorted(reader.ranges.items())
    ]
    return reader.reads


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
    except KafkaException as exc:
        raise KafkaAdminError(f"cannot read the end offsets of {topic} [{partition}]: {exc}") from exc
    return int(low), int(high)


@dataclass
class _Reader:
    """Polls an assigned consumer until every partition reported its end (at or past the end seen first).

    The end offsets are taken before reading; a partition is done when the consumer reports that it
    reached the partition's end (``_PARTITION_EOF``) at or past that offset. That holds on brokers
    that report the end at the start of the last record batch (Tansu) and past transaction markers
    alike. After a silence of ``idle_timeout_s`` a partition whose position is at its end is done
    too; any other is an error, so an export never quietly misses decisions.
    """

    consumer: Consumer
    topic: str
    ranges: dict[int, tuple[int, int]]
    codec: Codec
    result: ExportResult
    reads: list[_Read] = field(default_factory=list)
    reached: set[int] = field(default_factory=set)
    next_offset: dict[int, int] = field(default_factory=dict)

    def run(self, idle_timeout_s: float) -> None:
        """Read until every partition is done."""
        self.next_offset = {p: low for p, (low, _high) in self.ranges.items()}
        last = time.monotonic()
        while len(self.reached) < len(self.ranges):
            msg = self.consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - last >= idle_timeout_s:
                    self._positions_at_end(idle_timeout_s)
                continue
            last = time.monotonic()
            partition, offset = msg.partition() or 0, msg.offset() or 0
            error = msg.error()
            if error is None:
                self._record(partition, offset, msg.value())
            elif error.code() == KafkaError._PARTITION_EOF:
                self._advance(partition, offset)
                if offset >= self.ranges[partition][1]:
                    self.reached.add(partition)
            elif error.fatal() or error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
            ):
                raise KafkaAdminError(f"reading {self.topic}: {error.str()}")
            else:
                logger.warning("reading %s: %s", self.topic, error.str())

    def _advance(self, partition: int, next_offset: int) -> None:
        self.next_offset[partition] = max(self.next_offset[partition], next_offset)

    def _record(self, partition: int, offset: int, data: bytes | None) -> None:
        counts = self.result.counts
        counts["records"] += 1
        self._advance(partition, offset + 1)
        if data is None:
            counts["tombstones"] += 1
            return
        try:
            value = self.codec.decode(SCHEMA, data)
        except DecodeError as exc:
            counts["undecodable"] += 1
            self.result.note(
                "undecodable", None, clip(f"partition {partition} offset {offset}: {exc}", MAX_REASON_CHARS)
            )
            return
        self.reads.append(_Read(partition, offset, value))

    def _positions_at_end(self, idle_s: float) -> None:
        """After a silence: the partitions whose position is at their end are done; the others an error."""
        open_ = [p for p in self.ranges if p not in self.reached]
        behind = []
        for tp in self.consumer.position([TopicPartition(self.topic, p) for p in open_]):
            low, high = self.ranges[tp.partition]
            if tp.offset >= high or low >= high:  # read to its end, or empty
                self._advance(tp.partition, max(tp.offset, low))
                self.reached.add(tp.partition)
            else:
                behind.append(f"[{tp.partition}] at {max(tp.offset, low)} of {high}")
        if behind:
            raise ExportError(
                f"{self.topic}: no record for {idle_s:g}s before the end of partition(s) {', '.join(behind)}"
            )


def _effective_latest(reads: Sequence[_Read], result: ExportResult) -> list[_Read]:
    """Drop repeated and withdrawn decisions; keep the latest per listing."""
    unique: dict[str, _Read] = {}
    for read in reads:
        if read.event_id in unique:
            result.counts["duplicates"] += 1
            continue
        unique[read.event_id] = read
    undoers: dict[str, list[str]] = {}
    for read in unique.values():
        target = read.value.get("undoes")
        if target:
            undoers.setdefault(str(target), []).append(read.event_id)
    memo: dict[str, bool] = {}

    def effective(event_id: str, visiting: frozenset[str] = frozenset()) -> bool:
        if event_id not in memo:
            if event_id in visiting:  # a cycle of undos cannot be resolved: nothing in it stands
                return False
            inner = visiting | {event_id}
            memo[event_id] = not any(effective(u, inner) for u in undoers.get(event_id, ()))
        return memo[event_id]

    latest: dict[str, _Read] = {}
    for read in unique.values():
        if read.value.get("undoes"):
            result.counts["undos"] += 1
            continue
        result.counts["decisions"] += 1
        if read.value.get("applied_from"):
            result.counts["applied_from"] += 1
        if not effective(read.event_id):
            result.counts["undone"] += 1
            continue
        listing = str(read.value["listing_id"])
        previous = latest.get(listing)
        if previous is None or read.order() > previous.order():
            latest[listing] = read
        if previous is not None:
            result.counts["superseded"] += 1
    result.counts["undo_targets_missing"] = sum(1 for target in undoers if target not in unique)
    result.counts["kept"] = len(latest)
    return sorted(latest.values(), key=lambda read: str(read.value["listing_id"]))


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    decision: Mapping[str, Any]
    id: str
    category: str
    url: str
    content_hash: str
    labels: dict[str, tuple[str, ...]]


def _skip(result: ExportResult, reason: str, decision: Mapping[str, Any], detail: str = "") -> None:
    result.skipped[reason] += 1
    result.note(reason, decision, detail)


def _row(decision: Mapping[str, Any], taxonomy: Taxonomy, result: ExportResult) -> _Row | None:
    """The manifest row of one kept decision (image not fetched yet), or None with the reason counted."""
    path = [str(part) for part in decision.get("category_path") or () if str(part).strip()]
    if not path:
        _skip(result, "no_category", decision)
        return None
    category = "/".join(path)
    group = taxonomy.group_for(category)
    if group is None:
        _skip(result, "no_group", decision, category)
        return None
    reviewed_group = decision.get("category_group")
    if reviewed_group and reviewed_group != group.name:
        _skip(result, "group_changed", decision, f"reviewed as {reviewed_group}, now {group.name}")
        return None
    image = next(
        (i for i in decision.get("images") or () if i.get("content_hash") and i.get("outcome") in USABLE), None
    )
    if image is None:
        _skip(result, "no_usable_image", decision)
        return None
    labels = _labels(decision, group, result)
    if not labels:
        _skip(result, "no_labels", decision)
        return None
    listing_id, version = decision["listing_id"], int(decision["listing_version"])
    return _Row(
        decision, f"{listing_id}@{version}", category, str(image["url"]), str(image["content_hash"]).lower(), labels
    )


def _labels(decision: Mapping[str, Any], group: Group, result: ExportResult) -> dict[str, tuple[str, ...]]:
    """The labels of a decision's attribute decisions, validated against the listing's group."""
    labels: dict[str, tuple[str, ...]] = {}
    for item in decision.get("decisions") or ():
        name = str(item.get("name", ""))
        group_name, _, bare = name.rpartition(".")
        if group_name and group_name != group.name:
            _label_skip(result, "other_group", decision, f"{name} on a listing of group {group.name}")
            continue
        attribute = group.attributes.get(bare)
        if attribute is None:
            _label_skip(result, "unknown_attribute", decision, f"{name} is not an attribute of {group.name}")
            continue
        label = _label(attribute, item, decision, result)
        if label is None:
            labels.pop(attribute.name, None)
        else:
            labels[attribute.name] = label
    return {name: values for name, values in labels.items() if values}


def _label(
    attribute: Attribute, item: Mapping[str, Any], decision: Mapping[str, Any], result: ExportResult
) -> tuple[str, ...] | None:
    """One attribute decision's label: values, ``()`` for a deliberate blank, None when it is skipped."""
    action = item.get("action")
    if action == "NOT_APPLICABLE":
        result.labels["not_applicable"] += 1
        return ()
    if action == "NOT_VISIBLE":
        result.labels["not_visible" if attribute.not_visible else "not_visible_blank"] += 1
        return (NOT_VISIBLE,) if attribute.not_visible else ()
    if action not in ("CONFIRMED", "CORRECTED"):
        _label_skip(result, "unknown_action", decision, f"{attribute.name}: {action}")
        return None
    problem, values = _values(attribute, [str(v) for v in item.get("values") or ()])
    if problem is not None:
        _label_skip(result, problem, decision, f"{attribute.name}: {values[0] if values else action}")
        return None
    result.labels[str(action).lower()] += 1
    return values


def _values(attribute: Attribute, raw: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """``(None, canonical values in head order)``, or ``(problem, (detail,))`` when they cannot be a label."""
    if not raw:
        return "no_values", ("no values",)
    try:
        values = tuple(sorted({attribute.canonical(v) for v in raw}, key=attribute.values.index))
    except UnknownValueError as exc:
        return "unknown_value", (str(exc),)
    if len(values) > 1 and not attribute.multi_label:
        return "several_values", (f"several values ({', '.join(values)}) for a single-label attribute",)
    return None, values


def _label_skip(result: ExportResult, reason: str, decision: Mapping[str, Any], detail: str) -> None:
    result.labels_skipped[reason] += 1
    result.note(f"label:{reason}", decision, detail)


# -- images -------------------------------------------------------------------------------------


async def _fetch_images(
    settings: Settings, rows: Sequence[_Row], folder: Path, result: ExportResult, progress: Progress | None
) -> dict[str, Path | str]:
    """Per content hash: the saved file, or the skip reason. Each hash is fetched once (any of its URLs)."""
    urls: dict[str, list[str]] = {}
    for row in rows:
        known = urls.setdefault(row.content_hash, [])
        if row.url not in known:
            known.append(row.url)
    done = 0
    gate = asyncio.Semaphore(_FETCH_CONCURRENCY)
    saved: dict[str, Path | str] = {}

    async def one(fetcher: ImageFetcher, content_hash: str, candidates: Sequence[str]) -> None:
        nonlocal done
        async with gate:
            saved[content_hash] = await _image(fetcher, content_hash, candidates, folder, result)
        done += 1
        if progress is not None:
            progress(done, len(urls))

    async with ImageFetcher(settings.fetch) as fetcher:
        await asyncio.gather(*(one(fetcher, h, candidates) for h, candidates in urls.items()))
    return saved


async def _image(
    fetcher: ImageFetcher, content_hash: str, urls: Iterable[str], folder: Path, result: ExportResult
) -> Path | str:
    content_hash = content_hash.lower()
    existing = _existing(folder, content_hash)
    if existing is not None:
        result.images["reused"] += 1
        return existing
    reason = "image_fetch_failed"
    for url in urls:
        fetched: FetchResult = await fetcher.fetch(url)
        if not fetched.ok or fetched.data is None:
            reason = f"image_{fetched.outcome.value.lower()}"
            continue
        if fetched.content_hash != content_hash:
            reason = "image_changed"
            continue
        ext = _EXTENSIONS.get(fetched.image_format or "", "img")
        path = folder / f"{content_hash}.{ext}"
        try:
            _atomic_write_bytes(path, fetched.data)
        except OSError as exc:
            raise ExportError(f"cannot write {path}: {exc}") from exc
        result.images["fetched"] += 1
        return path
    result.images["failed"] += 1
    return reason


def _existing(folder: Path, content_hash: str) -> Path | None:
    for path in sorted(folder.glob(f"{content_hash}.*")):
        if path.suffix != ".tmp" and path.is_file() and _sha256(path.read_bytes()) == content_hash:
            return path
    return None


# -- writing ------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(result: ExportResult, items: Sequence[CatalogItem], attributes: Sequence[str]) -> None:
    out = result.manifest
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_manifest(tmp, items, attributes)
        result.manifest_sha256 = _sha256(tmp.read_bytes())
        os.replace(tmp, out)
        text = json.dumps(result.to_dict(), indent=2) + "\n"
        _atomic_write_bytes(result.sidecar, text.encode("utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
