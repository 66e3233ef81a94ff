"""Dataset curation and label audit: planted defects are found and reported exactly; the ranking is right."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tagger.__main__ import app
from tagger.audit import (
    ISSUE_COLUMNS,
    AuditConfig,
    AuditError,
    LabelIssue,
    OutOfFold,
    assign_folds,
    audit,
    find_issues,
    rank_label_issues,
    write_audit_html,
    write_issues_csv,
)
from tagger.curate import CurateConfig, CurateError, _group_split, curate, relocate, summary_path
from tagger.curate_report import CurateReport, write_report_html
from tagger.image_hashes import near_duplicate_groups
from tagger.manifest import CatalogItem, read_manifest, write_manifest
from tagger.synth import SynthConfig, generate_catalog
from tagger.taxonomy import Taxonomy

COLUMNS = ["type", "colour", "pattern", "sleeve_type", "neck_type", "length", "gender", "heel_height", "heel_style"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    generate_catalog(root, SynthConfig(n=40, seed=3, noise_rate=0.0, alias_rate=0.0))
    return root


def _copy(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    shutil.copytree(pristine, root)
    return root


@dataclass(frozen=True)
class Planted:
    manifest: Path
    rows: int
    alias: str
    unknown: str
    rare: str
    original: CatalogItem
    other: str
    source: CatalogItem
    lone: str
    open_pair: str


def _plant(root: Path, taxonomy: Taxonomy) -> Planted:
    """Corrupt the catalog on purpose; returns what curation must find."""
    manifest = root / "manifest.csv"
    items = read_manifest(manifest)
    used: set[int] = set()

    def pick(group: str, **need: str | None) -> int:
        for i, item in enumerate(items):
            if i in used:
                continue
            found = taxonomy.group_for(item.category)
            if found is None or found.name != group or item.split is None:
                continue
            if all((k not in item.labels) if v is None else (k in item.labels) for k, v in need.items()):
                used.add(i)
                return i
        raise AssertionError(f"no {group} item with {need}")

    alias = pick("apparel", neck_type="*", colour="*")
    items[alias] = replace(items[alias], labels={**items[alias].labels, "neck_type": ("Scoop",)})
    unknown = pick("apparel", colour="*")
    items[unknown] = replace(items[unknown], labels={**items[unknown].labels, "colour": ("sparkly",)})
    rare = pick("footwear", colour="*")
    items[rare] = replace(items[rare], labels={**items[rare].labels, "colour": ("tan",)})  # alias of brown

    # An exact duplicate (other file, same bytes) whose colour disagrees.
    original = items[pick("apparel", colour="*")]
    shutil.copy(root / original.image, root / "images/dup.jpg")
    other = "red" if original.labels["colour"] != ("red",) else "blue"
    duplicate = CatalogItem("dup", "images/dup.jpg", original.category, "test", {**original.labels, "colour": (other,)})

    # Unusable files.
    good = (root / original.image).read_bytes()
    (root / "images/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "images/notes.jpg").write_text("this is not a picture\n")
    bad = [
        CatalogItem("truncated", "images/truncated.jpg", original.category, "train", {}),
        CatalogItem("text", "images/notes.jpg", original.category, "train", {}),
        CatalogItem("missing", "images/nowhere.jpg", original.category, "train", {}),
    ]

    # A near-duplicate (resized, re-saved at low quality) in another split than its original.
    source = items[pick("apparel")]
    near_split = "test" if source.split != "test" else "val"
    picture = Image.open(root / source.image)
    picture.resize((picture.width * 9 // 10, picture.height * 9 // 10)).save(root / "images/near.jpg", quality=35)
    near = CatalogItem("near", "images/near.jpg", source.category, near_split, dict(source.labels))

    # A near-duplicate pair without splits, and one lone row without a split.
    lone = pick("footwear")
    items[lone] = replace(items[lone], split=None)
    open_pair = pick("footwear")
    items[open_pair] = replace(items[open_pair], split=None)
    picture = Image.open(root / items[open_pair].image)
    picture.save(root / "images/open_near.jpg", quality=50)
    open_near = CatalogItem(
        "open_near", "images/open_near.jpg", items[open_pair].category, None, items[open_pair].labels
    )

    rows = [*items, duplicate, *bad, near, open_near]
    write_manifest(manifest, rows, COLUMNS)
    return Planted(
        manifest,
        len(rows),
        items[alias].id,
        items[unknown].id,
        items[rare].id,
        original,
        other,
        source,
        items[lone].id,
        items[open_pair].id,
    )


def _expected_drops(rows: list[CatalogItem], taxonomy: Taxonomy, min_examples: int) -> set[tuple[str, str]]:
    """Rare (head, value) pairs, counted independently of the implementation (single-label cells only)."""
    counts: Counter[tuple[str, str]] = Counter()
    for item in rows:
        group = taxonomy.group_for(item.category)
        assert group is not None
        for column, values in item.labels.items():
            if column in group.attributes and not group.attributes[column].multi_label:
                counts.update((f"{group.name}.{column}", v) for v in values)
    return {key for key, n in counts.items() if n < min_examples}


def test_curate_finds_and_reports_every_planted_defect(pristine: Path, taxonomy: Taxonomy, tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    planted = _plant(root, taxonomy)
    out = tmp_path / "curated" / "manifest.csv"
    report = curate(planted.manifest, out, CurateConfig(min_examples=2))

    removed = {r.id: r for r in report.removed}
    assert {k: r.reason for k, r in removed.items()} == {
        "dup": "exact_duplicate",
        "truncated": "decode_failed",
        "text": "not_an_image",
        "missing": "missing_file",
    }
    original = planted.original
    assert removed["dup"].duplicate_of == original.id
    conflicts = [(c.kept_id, c.duplicate_id, c.attribute, c.kept, c.duplicate) for c in report.label_conflicts]
    assert conflicts == [(original.id, "dup", "colour", original.labels["colour"][0], planted.other)]
    assert report.items_in == planted.rows and report.items_out == planted.rows - 4

    assert report.merged == {"apparel.neck_type": {"Scoop -> round": 1}, "footwear.colour": {"tan -> brown": 1}}
    assert report.unknown_values == {"apparel.colour": {"sparkly": 1}}
    assert report.several_values == {} and report.inapplicable == {} and report.no_group == []

    curated = {item.id: item for item in read_manifest(out)}
    assert "colour" not in curated[planted.unknown].labels, "an unknown value leaves the cell blank"
    assert len(curated) == report.items_out and not set(removed) & set(curated)

    # Rare values: blanked cells, rows kept; exactly the values under the threshold.
    kept_rows = [
        replace(
            item,
            labels={
                k: v
                for k, v in {
                    **item.labels,
                    **({"neck_type": ("round",)} if item.id == planted.alias else {}),
                    **({"colour": ("brown",)} if item.id == planted.rare else {}),
                }.items()
                if not (item.id == planted.unknown and k == "colour")
            },
        )
        for item in read_manifest(planted.manifest)
        if item.id not in removed
    ]
    dropped = {(d.head, d.value) for d in report.dropped_values}
    single = {key for key in dropped if not key[0].endswith(".pattern")}
    assert single == _expected_drops(kept_rows, taxonomy, 2)
    assert all(d.examples < 2 and d.cells_blanked >= 1 for d in report.dropped_values)
    for head, value in dropped:
        group_name, column = head.split(".", 1)
        in_group = [item for item in curated.values() if taxonomy.group_for(item.category).name == group_name]  # type: ignore[union-attr]
        assert all(value not in item.labels.get(column, ()) for item in in_group), (head, value)

    # Near-duplicates: one split per group; the moved row is reported.
    source = planted.source
    groups = {frozenset(g.ids): g for g in report.near_duplicates}
    group = groups[frozenset({source.id, "near"})]
    assert group.split == source.split and group.moved == ["near"] and group.distances[0] == 0
    assert curated["near"].split == curated[source.id].split == source.split
    pair = groups[frozenset({planted.open_pair, "open_near"})]
    assert pair.moved == [] and curated["open_near"].split == curated[planted.open_pair].split
    assert report.moved_between_splits == 1
    assert report.splits_assigned == 3, "the lone row and the open pair had no split"
    for g in report.near_duplicates:
        assert len({curated[i].split for i in g.ids}) == 1
    assert all(item.split in ("train", "val", "test") for item in curated.values())

    # Paths are relative to the new manifest's folder and still point at the images.
    assert curated[source.id].image == f"../catalog/{source.image}"
    assert all(Path(item.image_location(out.parent)).is_file() for item in curated.values())

    summary = json.loads(summary_path(out).read_text())
    assert summary["counts"]["removed"] == {
        "exact_duplicate": 1,
        "decode_failed": 1,
        "not_an_image": 1,
        "missing_file": 1,
    }
    assert summary["counts"]["moved_between_splits"] == 1
    assert summary["after"]["values"]["apparel.neck_type"].get("Scoop") is None
    assert summary["before"]["values"]["apparel.neck_type"]["Scoop"] == 1

    html = tmp_path / "report.html"
    write_report_html(report, html)
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 4 and "data:image/jpeg;base64," in text
    assert "sparkly" in text and "exact_duplicate" in text and "Scoop -&gt; round" in text


def test_curating_in_place_keeps_paths_and_a_clean_catalog_loses_nothing(pristine: Path, tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    out = root / "curated.csv"
    report = curate(root / "manifest.csv", out, CurateConfig(min_examples=0))
    before = {item.id: item for item in read_manifest(root / "manifest.csv")}
    after = {item.id: item for item in read_manifest(out)}
    assert report.removed == [] and report.near_duplicates == [] and report.dropped_values == []
    assert after == before, "nothing to fix: the same rows, labels, splits and paths"
    assert summary_path(out) == root / "curated.summary.json" and summary_path(out).is_file()


def test_near_duplicate_grouping_matches_brute_force() -> None:
    assert near_duplicate_groups([0b0, 0b111, 0b1111 << 40, 0b0, (1 << 63) | 1], 3) == [[0, 1, 3, 4]]
    assert near_duplicate_groups([0b0, 0b111], 2) == []
    assert near_duplicate_groups([5, 5, 6], 0) == [[0, 1]]
    rng = random.Random(1)
    centres = [rng.getrandbits(64) for _ in range(30)]
    hashes = [c ^ sum(1 << rng.randrange(64) for _ in range(rng.randrange(4))) for c in centres for _ in range(5)]
    hashes += [rng.getrandbits(64) for _ in range(200)]
    hashes += [(rng.getrandbits(12) << 52) | 0xABCDE for _ in range(150)]  # one shared chunk: a big bucket
    for distance in (0, 2, 4, 9):
        assert sorted(near_duplicate_groups(hashes, distance)) == _brute_force_groups(hashes, distance)


def _brute_force_groups(hashes: list[int], distance: int) -> list[list[int]]:
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a in range(len(hashes)):
        for b in range(a + 1, len(hashes)):
            if (hashes[a] ^ hashes[b]).bit_count() <= distance:
                parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(find(i), []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def test_group_split_relocate_and_config_checks(tmp_path: Path) -> None:
    assert _group_split(["test", "train", "train"]) == "train"
    assert _group_split([None, "val", "test"]) == "val", "a tie goes to the first row's split"
    assert _group_split([None, None]) is None
    assert relocate("images/a.jpg", tmp_path / "in", tmp_path / "out") == "../in/images/a.jpg"
    assert relocate("images/a.jpg", tmp_path, tmp_path) == "images/a.jpg"
    assert relocate("https://x/a.jpg", tmp_path / "in", tmp_path) == "https://x/a.jpg"
    assert relocate("/abs/a.jpg", tmp_path / "in", tmp_path) == "/abs/a.jpg"
    with pytest.raises(CurateError, match="phash_distance"):
        CurateConfig(phash_distance=64)
    with pytest.raises(CurateError, match="min_examples"):
        CurateConfig(min_examples=-1)


def test_multi_label_rare_values_blank_the_whole_cell(tmp_path: Path) -> None:
    rows = []
    for i in range(6):
        # Distinct pictures: a dark square moving along the diagonal.
        picture = Image.new("RGB", (96, 96), "white")
        picture.paste((20 * i, 0, 0), (i * 12, i * 12, i * 12 + 30, i * 12 + 30))
        picture.save(tmp_path / f"{i}.png")
        pattern = ("striped", "floral") if i == 0 else ("striped",)
        rows.append(CatalogItem(str(i), f"{i}.png", "tops", "train", {"pattern": pattern, "type": ("shirt",)}))
    write_manifest(tmp_path / "m.csv", rows, ["type", "pattern"])
    report = curate(tmp_path / "m.csv", tmp_path / "out.csv", CurateConfig(min_examples=2, phash_distance=0))
    assert [(d.head, d.value, d.examples, d.cells_blanked) for d in report.dropped_values] == [
        ("apparel.pattern", "floral", 1, 1)
    ]
    curated = {item.id: item for item in read_manifest(tmp_path / "out.csv")}
    assert "pattern" not in curated["0"].labels and curated["1"].labels["pattern"] == ("striped",)
    assert report.items_out == 6


def test_cli_curate_writes_manifest_summary_and_report(pristine: Path, tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    out, html = tmp_path / "out" / "m.csv", tmp_path / "r.html"
    args = ["dataset", "curate", "--in", str(root / "manifest.csv"), "--out", str(out), "--report", str(html)]
    result = CliRunner().invoke(app, [*args, "--min-examples", "3"])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out)) == 40 and summary_path(out).is_file() and "data:image/png;base64" in html.read_text()
    missing = CliRunner().invoke(app, ["dataset", "curate", "--in", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert missing.exit_code == 1 and "cannot open manifest" in missing.output


# --- audit --------------------------------------------------------------------------------------


def test_ranking_single_label_finds_the_known_errors() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    probs = np.full((12, 3), 0.05)
    for i, label in enumerate(labels):
        probs[i, label] = 0.9
    probs[3] = [0.02, 0.96, 0.02]  # labelled 0, clearly a 1
    probs[9] = [0.9, 0.05, 0.05]  # labelled 2, clearly a 0
    ranked = rank_label_issues(labels, probs)
    assert [i for i, _ in ranked] == [3, 9]
    assert [round(q, 4) for _, q in ranked] == [0.02, 0.05]


def test_ranking_multi_label_finds_the_known_error() -> None:
    labels = [[0], [0], [0], [1], [1], [1], [0, 1], [0, 1], [2], [2], [2], [0]]
    probs = np.full((12, 3), 0.03)
    for i, row in enumerate(labels):
        probs[i, row] = 0.97
    probs[11] = [0.02, 0.03, 0.97]  # labelled {0}, the picture says {2}
    ranked = rank_label_issues(labels, probs, multi_label=True)
    assert [i for i, _ in ranked] == [11]
    assert ranked[0][1] < 0.1


def test_find_issues_names_values_and_ranks_over_heads(taxonomy: Taxonomy) -> None:
    items = [CatalogItem(str(i), f"img/{i}.jpg", "tops", "train", {}) for i in range(12)]
    heads = {key: attr for key, _, attr in taxonomy.heads()}
    probs: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    for key, attribute in heads.items():
        size = attribute.size
        probs[key] = np.full((12, size), 1.0 / size)
        targets[key] = np.full((12, size), -1.0) if attribute.multi_label else np.full(12, -1.0)
    colour = taxonomy.groups["apparel"].attributes["colour"]
    black, white = colour.values.index("black"), colour.values.index("white")
    targets["apparel.colour"] = np.array([black] * 6 + [white] * 6, dtype=float)
    p = np.full((12, colour.size), 0.01)
    p[:6, black], p[6:, white] = 0.88, 0.88
    p[7] = 0.01
    p[7, black] = 0.88  # row 7 is labelled white but looks black
    probs["apparel.colour"] = p / p.sum(axis=1, keepdims=True)
    oof = OutOfFold(items, [f"/abs/img/{i}.jpg" for i in range(12)], [0] * 12, probs, targets)
    notes: list[str] = []
    issues = find_issues(oof, taxonomy, notes)
    assert [(i.id, i.attribute, i.given_label, i.suggested_label, i.rank) for i in issues] == [
        ("7", "apparel.colour", "white", "black", 1)
    ]
    assert issues[0].image == "img/7.jpg" and issues[0].location == "/abs/img/7.jpg"
    assert any("apparel.type: 0 labelled rows" in n for n in notes)


def test_folds_are_balanced_and_reproducible(pristine: Path, taxonomy: Taxonomy) -> None:
    items = read_manifest(pristine / "manifest.csv")
    folds = assign_folds(items, taxonomy, 3, seed=0)
    assert folds == assign_folds(items, taxonomy, 3, seed=0)
    sizes = Counter(folds)
    assert set(sizes) == {0, 1, 2} and max(sizes.values()) - min(sizes.values()) <= 1
    with pytest.raises(AuditError, match="folds"):
        AuditConfig(folds=1)


@pytest.mark.slow
@pytest.mark.timeout(300)  # trains two fold models: minutes when the machine is shared
def test_audit_end_to_end_writes_ranked_csv_and_html(pristine: Path, tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    items = read_manifest(root / "manifest.csv")
    flipped = 0
    for i, item in enumerate(items):
        if "colour" in item.labels and flipped < 4 and item.labels["colour"] != ("black",):
            items[i] = replace(item, labels={**item.labels, "colour": ("black",)})
            flipped += 1
    write_manifest(root / "manifest.csv", items, COLUMNS)
    config = AuditConfig(folds=2, backbone="test_efficientnet", image_size=64, epochs=1, batch_size=16, device="cpu")
    notes: list[str] = []
    issues = audit(root / "manifest.csv", config, notes=notes)
    out = tmp_path / "issues.csv"
    write_issues_csv(issues, out)
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == ISSUE_COLUMNS
        rows = list(reader)
    ids = {item.id: item for item in items}
    assert len(rows) == len(issues)
    for rank, row in enumerate(rows, start=1):
        assert row["id"] in ids and row["image"] == ids[row["id"]].image
        assert int(row["rank"]) == rank and 0.0 <= float(row["label_quality"]) <= 1.0
        assert row["attribute"].split(".", 1)[1] in COLUMNS
    assert [float(r["label_quality"]) for r in rows] == sorted(float(r["label_quality"]) for r in rows)
    html = tmp_path / "audit.html"
    write_audit_html(issues, html, notes)
    assert html.read_text().startswith("<!DOCTYPE html>")


def test_report_roundtrips_to_json(tmp_path: Path) -> None:
    report = CurateReport("in.csv", "out.csv", "out.summary.json", {}, 1, 1)
    assert json.loads(json.dumps(report.to_dict()))["counts"]["items_in"] == 1


def test_cli_audit_writes_csv_and_report(monkeypatch: pytest.MonkeyPatch, pristine: Path, tmp_path: Path) -> None:
    issue = LabelIssue("000004", "images/000004.jpg", "apparel.colour", "black", "white", 0.0312, 1, 1)
    seen: list[AuditConfig] = []

    def fake_audit(manifest: Path, config: AuditConfig, **_: object) -> list[LabelIssue]:
        seen.append(config)
        return [replace(issue, location=str(pristine / issue.image))]

    monkeypatch.setattr("tagger.audit.audit", fake_audit)
    out, html = tmp_path / "issues.csv", tmp_path / "audit.html"
    args = ["dataset", "audit", "--data", str(pristine / "manifest.csv"), "--out", str(out), "--report", str(html)]
    result = CliRunner().invoke(app, [*args, "--folds", "2", "--backbone", "test_efficientnet", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert (seen[0].folds, seen[0].backbone, seen[0].epochs, seen[0].image_size) == (2, "test_efficientnet", 1, 96)
    assert out.read_text().splitlines() == [
        ",".join(ISSUE_COLUMNS),
        "000004,images/000004.jpg,apparel.colour,black,white,0.0312,1,1",
    ]
    assert "data:image/jpeg;base64," in html.read_text()
