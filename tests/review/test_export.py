"""`swatch dataset from-reviews`: decisions on a real broker, images from a local server, a manifest that trains.

One module-scoped scenario: a small synthetic catalog served over HTTP, and a decisions topic
holding plain decisions and every special case (a newer version, undos, an undo of a later
decision that brings the earlier one back, a changed image, a refused URL, no usable image,
unknown attributes and values, not-visible and not-applicable, a repeated record, garbage). The
export runs once through the API; the CLI writes a ``val`` copy; the last test trains on the
first and calibrates on the second.
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from streams.cli import app
from streams.codec import Codec
from streams.config import Settings
from streams.errors import TopicNotFoundError
from streams.events import review_decision
from streams.images_server import ImageServer
from streams.review.export import (
    FORMAT,
    FORMAT_VERSION,
    ExportError,
    ExportResult,
    export_decisions,
    sidecar_path,
)
from tagger.manifest import CatalogItem, read_manifest
from tagger.synth import SynthConfig, generate_catalog
from tagger.taxonomy import load_taxonomy
from tests.streams.worker_harness import env_for, make_settings

pytestmark = pytest.mark.integration

CATALOG_SIZE = 24
T0 = 1_700_000_000_000
TAXONOMY = load_taxonomy()


@dataclass
class Scenario:
    settings: Settings
    catalog: list[CatalogItem]
    root: Path
    base_url: str
    result: ExportResult
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    specials: dict[str, CatalogItem] = field(default_factory=dict)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _review(item: CatalogItem, base_url: str, root: Path, *, version: int = 1, **changes: Any) -> dict[str, Any]:
    """A decoded review request, as far as a decision copies it."""
    listing_id = changes.pop("listing_id", f"L-{item.id}")
    group = TAXONOMY.group_for(item.category)
    assert group is not None
    review = {
        "event_id": f"review-{listing_id}-{version}",
        "listing_id": listing_id,
        "listing_version": version,
        "model_id": "swatch-test@0.0.1",
        "category_path": item.category.split("/"),
        "category_group": group.name,
        "images": [
            {"url": base_url + "missing.jpg", "content_hash": None, "outcome": "FETCH_FAILED", "reason": "HTTP 404"},
            {
                "url": base_url + item.image,
                "content_hash": _sha(root / item.image),
                "outcome": "TAGGED",
                "reason": None,
            },
        ],
    }
    review.update(changes)
    return review


def _confirm(item: CatalogItem) -> list[dict[str, Any]]:
    """CONFIRMED for every label the catalog gives the item."""
    return [{"name": name, "values": list(values), "action": "CONFIRMED"} for name, values in item.labels.items()]


def _publish(settings: Settings, records: list[dict[str, Any] | tuple[str, bytes]]) -> None:
    codec = Codec()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "enable.idempotence": True})
    for record in records:
        if isinstance(record, tuple):
            key, value = record
        else:
            key, value = record["listing_id"], codec.encode("review_decision", record)
        producer.produce(settings.topics.decisions, key=key.encode(), value=value)
    assert producer.flush(15) == 0


@pytest.fixture(scope="module")
def scenario(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("catalog")
    config = SynthConfig(n=CATALOG_SIZE, seed=3, missing_rate=0.0, noise_rate=0.0, alias_rate=0.0)
    catalog = read_manifest(generate_catalog(root, config))
    apparel = [i for i in catalog if "clothing" in i.category]
    footwear = [i for i in catalog if "shoes" in i.category]
    assert len(apparel) >= 6 and len(footwear) >= 4, "the seed gives both groups"
    settings = make_settings(kafka_bootstrap, None, f"export-{uuid.uuid4().hex[:8]}")
    with ImageServer(root) as server:
        url = server.base_url
        specials = {
            "superseded": apparel[0],
            "undo_restores": apparel[1],
            "undone": apparel[2],
            "changed": apparel[3],
            "blocked": footwear[0],
            "no_image": footwear[1],
            "visibility": apparel[4],
            "unknowns": apparel[5],
        }
        plain = [i for i in catalog if i not in specials.values()]
        records: list[dict[str, Any] | tuple[str, bytes]] = []
        for n, item in enumerate(plain):
            records.append(review_decision(_review(item, url, root), "ann", _confirm(item), decided_at=T0 + n))
        # a newer version wins over the older one, even when the older one was decided later
        old = specials["superseded"]
        records.append(
            review_decision(
                _review(old, url, root, version=1),
                "ann",
                [{"name": "colour", "values": ["red"], "action": "CORRECTED"}],
                decided_at=T0 + 500,
            )
        )
        records.append(review_decision(_review(old, url, root, version=2), "bob", _confirm(old), decided_at=T0 + 100))
        # undoing the later of two decisions brings the earlier back
        item = specials["undo_restores"]
        first = review_decision(_review(item, url, root), "ann", _confirm(item), decided_at=T0 + 10)
        later = review_decision(
            _review(item, url, root),
            "ann",
            [{"name": "colour", "values": ["pink"], "action": "CORRECTED"}],
            decided_at=T0 + 20,
        )
        undo = review_decision(_review(item, url, root), "ann", [], decided_at=T0 + 30, undoes=later["event_id"])
        records += [first, later, undo]
        # the only decision undone: no row
        item = specials["undone"]
        only = review_decision(_review(item, url, root), "ann", _confirm(item), decided_at=T0 + 10)
        records += [
            only,
            review_decision(_review(item, url, root), "ann", [], decided_at=T0 + 11, undoes=only["event_id"]),
        ]
        # the image changed since the review: its hash is not the reviewed one
        item = specials["changed"]
        review = _review(item, url, root)
        review["images"][1]["content_hash"] = hashlib.sha256(b"what the reviewer saw").hexdigest()
        records.append(review_decision(review, "ann", _confirm(item), decided_at=T0))
        # a URL the SSRF guard refuses
        item = specials["blocked"]
        review = _review(item, url, root)
        review["images"][1]["url"] = "http://10.9.8.7/" + item.image
        records.append(review_decision(review, "ann", _confirm(item), decided_at=T0))
        # no image with a hash and a usable outcome
        item = specials["no_image"]
        review = _review(item, url, root)
        review["images"] = review["images"][:1]
        records.append(review_decision(review, "ann", _confirm(item), decided_at=T0))
        # not visible, not applicable, a qualified name and an alias
        item = specials["visibility"]
        decisions = [
            {"name": "apparel.type", "values": ["tee"], "action": "CORRECTED"},
            {"name": "colour", "values": ["navy"], "action": "CORRECTED", "previous_values": ["blue"]},
            {"name": "pattern", "values": ["dotted", "striped"], "action": "CORRECTED"},
            {"name": "sleeve_type", "values": [], "action": "NOT_VISIBLE"},
            {"name": "length", "values": [], "action": "NOT_VISIBLE"},  # length has no not_visible value
            {"name": "neck_type", "values": [], "action": "NOT_APPLICABLE"},
        ]
        records.append(review_decision(_review(item, url, root), "ann", decisions, decided_at=T0))
        # unknown values and attributes are left out, the rest of the row stays
        item = specials["unknowns"]
        decisions = [
            {"name": "type", "values": ["dress"], "action": "CONFIRMED"},
            {"name": "colour", "values": ["chartreuse"], "action": "CORRECTED"},
            {"name": "sparkle", "values": ["lots"], "action": "CORRECTED"},
            {"name": "footwear.heel_height", "values": ["high"], "action": "CORRECTED"},
            {"name": "pattern", "values": ["solid", "floral"], "action": "CORRECTED"},
            {"name": "length", "values": ["maxi", "knee"], "action": "CORRECTED"},
        ]
        records.append(review_decision(_review(item, url, root), "ann", decisions, decided_at=T0))
        # applied to a second listing that shares the first plain listing's image
        shared = plain[0]
        applied = _review(shared, url, root, listing_id="L-shared")
        records.append(review_decision(applied, "ann", _confirm(shared), decided_at=T0, applied_from=f"L-{shared.id}"))
        records.append(records[0])  # the same decision published twice
        records.append(("L-garbage", b"not avro at all"))
        _publish(settings, records)
        result = export_decisions(settings, tmp_path_factory.mktemp("export") / "reviews.csv")
        scenario = Scenario(settings, catalog, root, url, result, specials=specials)
        with result.manifest.open(newline="", encoding="utf-8") as handle:
            scenario.rows = {row["id"]: row for row in csv.DictReader(handle)}
        yield scenario


def test_rows_are_the_latest_effective_decisions(scenario: Scenario) -> None:
    s = scenario.specials
    plain = [i for i in scenario.catalog if i not in s.values()]
    expected = {f"L-{i.id}@1" for i in plain} | {
        f"L-{s['superseded'].id}@2",
        f"L-{s['undo_restores'].id}@1",
        f"L-{s['visibility'].id}@1",
        f"L-{s['unknowns'].id}@1",
        "L-shared@1",
    }
    assert set(scenario.rows) == expected
    for item in [*plain, s["superseded"], s["undo_restores"]]:
        row = next(r for k, r in scenario.rows.items() if k.startswith(f"L-{item.id}@"))
        assert row["category"] == item.category and row["split"] == ""
        for name in TAXONOMY.attribute_names():
            assert row[name] == "|".join(item.labels.get(name, ())), (item.id, name)
    image = scenario.rows[f"L-{plain[0].id}@1"]["image"]
    assert scenario.rows["L-shared@1"]["image"] == image == f"images/{_sha(scenario.root / plain[0].image)}.jpg"
    saved = scenario.result.manifest.parent / image
    assert saved.read_bytes() == (scenario.root / plain[0].image).read_bytes()


def test_labels_follow_the_actions_and_the_taxonomy(scenario: Scenario) -> None:
    s = scenario.specials
    visibility = scenario.rows[f"L-{s['visibility'].id}@1"]
    assert visibility["type"] == "t_shirt", "aliases become canonical values; group.attribute names work"
    assert visibility["colour"] == "navy"
    assert visibility["pattern"] == "striped|dotted", "multi-label values in head order"
    assert visibility["sleeve_type"] == "not_visible"
    assert visibility["length"] == "", "no not_visible value for length: a missing label"
    assert visibility["neck_type"] == "", "not applicable: a missing label"
    unknowns = scenario.rows[f"L-{s['unknowns'].id}@1"]
    assert unknowns["type"] == "dress" and unknowns["pattern"] == "solid|floral"
    assert unknowns["colour"] == unknowns["heel_height"] == unknowns["length"] == ""
    assert scenario.result.labels_skipped == {
        "unknown_value": 1,
        "unknown_attribute": 1,
        "other_group": 1,
        "several_values": 1,
    }
    manifest = {item.id: item for item in read_manifest(scenario.result.manifest)}
    assert manifest[f"L-{s['visibility'].id}@1"].labels["pattern"] == ("striped", "dotted")


def test_sidecar_says_what_was_read_kept_and_skipped(scenario: Scenario) -> None:
    result = scenario.result
    sidecar = json.loads(sidecar_path(result.manifest).read_text())
    assert sidecar["format"] == FORMAT and sidecar["format_version"] == FORMAT_VERSION
    assert sidecar["created_at"].endswith("Z")
    assert sidecar["manifest_sha256"] == _sha(result.manifest)
    assert sidecar["taxonomy"] == {"version": TAXONOMY.version, "fingerprint": TAXONOMY.fingerprint()}
    source = sidecar["source"]
    assert source["topic"] == scenario.settings.topics.decisions
    parts = source["partitions"]
    assert [p["partition"] for p in parts] == [0, 1]
    assert sum(p["next"] - p["start"] for p in parts) == sidecar["counts"]["records"]
    assert all(p["next"] >= p["end"] for p in parts)
    plain = CATALOG_SIZE - len(scenario.specials)
    decisions = plain + 2 + 2 + 1 + 5 + 1  # plain, two versions, undo_restores, undone, five more specials, shared
    counts = sidecar["counts"]
    assert counts["records"] == decisions + 2 + 1 + 1  # the two undos, the repeat, the garbage
    assert counts["decisions"] == decisions and counts["undos"] == 2
    assert counts["undone"] == 2 and counts["duplicates"] == 1 and counts["undecodable"] == 1
    assert counts["superseded"] == 1 and counts["applied_from"] == 1
    assert counts["kept"] == decisions - 2 - 1
    assert counts["rows"] == len(scenario.rows) == plain + 5
    assert sidecar["skipped"] == {"image_changed": 1, "image_blocked_url": 1, "no_usable_image": 1}
    assert sidecar["images"]["fetched"] == len({r["image"] for r in scenario.rows.values()})
    reasons = {e["reason"] for e in sidecar["examples"]}
    assert {"image_changed", "label:unknown_value", "undecodable"} <= reasons
    assert sidecar["labels"]["not_visible"] == 1 and sidecar["labels"]["not_applicable"] == 1


def test_the_command_writes_a_val_split_and_reuses_images(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env_for(scenario.settings).items():
        if name.startswith("SWATCH_"):
            monkeypatch.setenv(name, value)
    out = tmp_path / "val" / "reviews.csv"
    (out.parent / "images").mkdir(parents=True)
    first = next(iter(scenario.rows.values()))["image"]
    (out.parent / first).write_bytes((scenario.result.manifest.parent / first).read_bytes())
    done = CliRunner().invoke(app, ["dataset", "from-reviews", "--out", str(out), "--split", "val"])
    assert done.exit_code == 0, done.output
    assert "rows" in done.output and "image_changed" in done.output
    items = read_manifest(out)
    assert {i.id for i in items} == set(scenario.rows) and {i.split for i in items} == {"val"}
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["split"] == "val" and sidecar["images"]["reused"] == 1
    refused = CliRunner().invoke(app, ["dataset", "from-reviews", "--out", str(out), "--split", "holdout"])
    assert refused.exit_code == 2


def test_the_export_trains_and_calibrates(scenario: Scenario, tmp_path: Path) -> None:
    from tagger.card import read_card
    from tagger.train import TrainConfig, train

    config = TrainConfig.resolve(
        None,
        data=str(scenario.result.manifest),
        out=str(tmp_path / "model"),
        backbone="test_efficientnet",
        image_size=64,
        epochs=1,
        batch_size=8,
        workers=0,
        device="cpu",
        val_fraction=0.4,
        test_fraction=0.0,
    )
    trained = train(config)
    assert trained.epochs_run == 1 and read_card(trained.model_dir).model_id == trained.model_id
    val = tmp_path / "val" / "reviews.csv"
    exported = export_decisions(scenario.settings, val, split="val")
    assert exported.rows == scenario.result.rows
    done = CliRunner().invoke(
        app, ["calibrate", "--data", str(val), "--model", str(trained.model_dir), "--device", "cpu"]
    )
    assert done.exit_code == 0, done.output
    calibration = read_card(trained.model_dir).metrics["calibration"]
    assert calibration["split"] == "val" and calibration["items"] == exported.rows


def test_an_empty_topic_writes_an_empty_export_and_the_command_fails(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = make_topic(partitions=2)
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SWATCH_TOPICS_DECISIONS", topic)
    out = tmp_path / "empty.csv"
    done = CliRunner().invoke(app, ["dataset", "from-reviews", "--out", str(out)])
    assert done.exit_code == 1, done.output
    assert "no rows" in done.output
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["counts"]["rows"] == 0 and [p["next"] for p in sidecar["source"]["partitions"]] == [0, 0]
    assert out.read_text().startswith("id,image,category,split,")


def test_a_missing_topic_is_an_error(kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    settings = Settings(kafka={"bootstrap": kafka_bootstrap}, topics={"decisions": unique_name("missing")})
    with pytest.raises(TopicNotFoundError):
        export_decisions(settings, tmp_path / "none.csv")
    assert not (tmp_path / "none.csv").exists()
    with pytest.raises(ExportError, match="split"):
        export_decisions(settings, tmp_path / "none.csv", split="holdout")
