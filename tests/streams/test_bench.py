"""`swatch bench`: the workloads are what they claim, the verdicts judge, and the commands run end to end.

The end-to-end tests run the real worker (and the naive faust-streaming agent) in their own
processes against the suite's broker and Redis; they check the instrument (every output counted,
fields filled, ratios computed), not speed: speed lives in the benchmarks' own runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.config import load_settings
from streams.perf.pipeline import quantiles
from streams.perf.rig import Rig
from streams.perf.soak import flatness
from streams.perf.suite import Sizes, bench_all
from streams.perf.workload import Catalog, plan


def _catalog(n: int) -> Catalog:
    records = [
        {"listing_id": f"p{i}", "image_urls": [f"http://img/{i}.jpg"], "declared_attributes": {}} for i in range(n)
    ]
    return Catalog(records, "http://img/", Path("."))


def test_cold_gives_every_listing_its_own_image() -> None:
    work = plan("cold", _catalog(60), 40, run="r")
    urls = [r["image_urls"][0] for r in work.records]
    assert len(set(urls)) == 40 == work.unique_images
    assert len({r["listing_id"] for r in work.records}) == 40
    with pytest.raises(ValueError, match="unique images"):
        plan("cold", _catalog(10), 40, run="r")


def test_dup80_repeats_four_urls_in_five() -> None:
    work = plan("dup80", _catalog(500), 1000, run="r")
    urls = [r["image_urls"][0] for r in work.records]
    assert work.unique_images == len(set(urls)) == 200
    first = {url: urls.index(url) for url in set(urls)}
    assert all(first[url] % 5 == 0 for url in first)  # each image's first listing is one of the new ones
    assert work.outputs_expected == 1000


def test_a_run_longer_than_the_catalog_goes_on_with_copies_of_its_images() -> None:
    work = plan("dup80", _catalog(40), 1000, run="r")  # 24 usable images (16 are the warm-up's spares)
    urls = [r["image_urls"][0] for r in work.records]
    assert work.unique_images == len(set(urls)) == 200, "one listing in five still brings a new image"
    assert (
        "http://img/0.jpg?copy=1" in urls
        and "http://img/7.jpg?copy=8" in urls
        and "http://img/8.jpg?copy=8" not in urls
    )
    copied = next(r for r in work.records if r["image_urls"][0] == "http://img/5.jpg?copy=2")
    assert copied["listing_id"].startswith("r-") and copied["declared_attributes"] == {}
    spares = {f"http://img/{i}.jpg" for i in range(24, 40)}
    assert not any(u.split("?")[0] in spares for u in urls), "the warm-up's spares are never used"


def test_soak_mixes_broken_urls_and_malformed_events() -> None:
    work = plan("soak", _catalog(100), 400, run="r")
    urls = [r["image_urls"][0] for r in work.records]
    assert sum("169.254" in u or u.endswith(("no-such-image.jpg", "manifest.csv")) for u in urls) == 10
    assert len(work.malformed_at) == 8 and work.outputs_expected == 408


def test_flatness_judges_growth_after_the_warm_up() -> None:
    flat = [[float(t), 900.0 + (t % 7), 40] for t in range(0, 600)]
    verdict = flatness(flat, warmup_s=60)
    assert verdict["rss_flat"] and verdict["fds_flat"] and len(verdict["rss_mb_per_minute"]) == 9
    leaking = [[float(t), 900.0 + t, 40 + t // 10] for t in range(0, 600)]
    verdict = flatness(leaking, warmup_s=60)
    assert verdict["rss_flat"] is False and verdict["fds_flat"] is False
    assert flatness([[1.0, 1.0, 1]], warmup_s=60)["rss_flat"] is None


def test_quantiles() -> None:
    values = [i / 100 for i in range(1, 101)]
    q = quantiles(values)
    assert q["p50"] == 0.51 and q["p99"] == 1.0 and q["max"] == 1.0
    assert quantiles([])["p99"] == 0.0


@pytest.fixture
def bench_env(kafka_bootstrap: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("SWATCH_KAFKA_SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("SWATCH_TOPICS_REPLICATION", "1")
    monkeypatch.setenv("SWATCH_TOPICS_PARTITIONS", "2")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("bench_env")
def test_bench_pipeline_counts_every_listing_and_reports_the_worker(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    result = CliRunner().invoke(
        app, ["bench", "pipeline", "--workload", "cold", "--listings", "24", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["outputs"] == data["listings"] == 24 and data["dead_letters"] == 0
    assert data["images_inferred"] == 24 and data["cache_hit_ratio"] == 0.0
    assert 0 < data["latency_s"]["p50"] <= data["latency_s"]["p99"]
    assert data["worker_cpu_cores"]["model"] > 0 and data["worker_peak_rss_mb"] > 100
    assert 0 < data["ready_s"] <= data["joined_s"] and data["exit_codes"] == [0]
    assert {"machine_cores_busy", "others_cores_busy"} <= set(data["cpu"])
    assert "listings/s" in result.output


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("bench_env")
def test_bench_all_runs_everything_and_computes_the_ratios(tmp_path: Path) -> None:
    sizes = Sizes(cold=20, dup80=40, baseline=12, catalog=40, rate_seconds=2.0, model_seconds=0.2, batch_sizes=(4,))
    result = bench_all(load_settings(), sizes=sizes)
    ratios = result["ratios"]
    for name in ("pipeline_cold_vs_model", "pipeline_cold_vs_baseline", "pipeline_dup80_vs_baseline"):
        assert ratios[name] > 0
    assert ratios["latency_p99_s_at_half_load"] > 0 and ratios["worker_peak_rss_mb"] > 100
    assert result["baseline_cold"]["outputs"] == 12 and result["baseline_cold"]["dead_letters"] == 0
    dup = result["pipeline_dup80"]
    assert dup["outputs"] == 40 and dup["images_inferred"] <= 8  # one listing in five brings a new image
    assert result["pipeline_half_load"]["achieved_rate"] > 0
    assert result["machine"]["cpu_count"] >= 1 and result["model"]["best"]["images_per_s"] > 0


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("bench_env")
def test_soak_samples_memory_and_descriptors(tmp_path: Path) -> None:
    from streams.perf.soak import bench_soak

    with Rig(load_settings(), tmp_path, 60) as rig:
        result = bench_soak(rig, 0.25, rate=20.0)
    run = result["run"]
    assert run["listings"] == 300 and run["outputs"] == 306  # one malformed event in fifty
    assert run["dead_letters"] == 6  # malformed events; broken URLs end as attribute events with the reason
    assert len(run["memory_samples"]) > 20 and result["verdict"]["rss_flat"] in (True, False)
