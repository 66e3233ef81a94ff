"""`swatch bench worker` runs each configuration through a real worker and reports them side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app


@pytest.mark.integration
@pytest.mark.slow
def test_bench_worker_compares_batch_sizes(
    kafka_bootstrap: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("SWATCH_KAFKA_SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("SWATCH_TOPICS_REPLICATION", "1")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", "worker", "--listings", "20", "--batch-sizes", "1,4", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["batch_max_size"] for r in data["rows"]] == [1, 4]
    for row in data["rows"]:
        assert row["listings_per_s"] > 0 and row["attribute_events"] + row["dead_letters"] == 20
        assert 0 < row["latency_p50_s"] <= row["latency_p99_s"]
    assert "listings/s" in result.output
