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

Reading and steps 1-2, with :class:`ExportResult` (the sidecar's record), are in
:mod:`streams.review.export_read`; this module makes the rows, fetches the images and writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from streams.codec import Codec
from streams.combine import USABLE
from streams.config import Settings
from streams.images import FetchResult, ImageFetcher
from streams.review.export_read import (
    FORMAT,
    FORMAT_VERSION,
    ExportError,
    ExportResult,
    PartitionRange,
    effective_latest,
    read_to_end,
)
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

IMAGES_DIR: Final = "images"
_EXTENSIONS: Final = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
_FETCH_CONCURRENCY: Final = 16

Progress = Callable[[int, int], None]


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
    reads = read_to_end(settings, codec, result, idle_timeout_s)
    kept = effective_latest(reads, result)
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
