"""The swatch command: configuration display, schemas, and the foundation demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(clean_swatch_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # wide tables: assertions look for whole names


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("SWATCH_REDIS_URL", "redis://u:redispw@cache:6379/0")
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kafka"]["sasl_password"] == "**********"
    assert data["redis"]["url"] == "redis://u:****@cache:6379/0"
    table = runner.invoke(app, ["config", "show"])
    assert "hunter2" not in table.output and "redispw" not in table.output
    assert "SWATCH_BATCH_MAX_WAIT_MS" in table.output


def test_config_errors_exit_2_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWATCH_BATCH_MAX_WAIT_MS", "-5")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "SWATCH_BATCH_MAX_WAIT_MS" in result.output


def test_config_env_lists_every_variable() -> None:
    from streams.config import ENV_VARS

    result = runner.invoke(app, ["config", "env"])
    assert result.exit_code == 0
    for name in ENV_VARS:
        assert name in result.output


def test_schemas_list() -> None:
    result = runner.invoke(app, ["schemas", "list"])
    assert result.exit_code == 0
    assert "io.swatch.events.ListingEvent" in result.output and "v1" in result.output


@pytest.mark.integration
def test_demo_against_configured_servers(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SWATCH_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("SWATCH_TOPICS_REPLICATION", "1")
    for field in ("listings", "attributes", "review", "decisions", "dlq"):
        monkeypatch.setenv(f"SWATCH_TOPICS_{field.upper()}", unique_name(field))
    summary_path, html_path = tmp_path / "summary.json", tmp_path / "page" / "report.html"
    result = runner.invoke(app, ["demo", "--listings", "40", "--json", str(summary_path), "--html", str(html_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(summary_path.read_text())
    assert summary["embedded"] == [] and summary["kafka_bootstrap"] == kafka_bootstrap
    assert summary["listings_published"] == 40
    dead = summary["dead_letters"]
    assert dead.get("undecodable", 0) >= 1 and dead.get("invalid_event", 0) == 1 and "internal_error" not in dead
    assert summary["attribute_events"] + sum(dead.values()) == 40, "every listing has its outcome"
    outcomes = summary["image_outcomes"]
    assert {"BLOCKED_URL", "FETCH_FAILED", "NOT_AN_IMAGE"} <= set(outcomes), outcomes
    assert summary["images_inferred"] < outcomes["TAGGED"] + outcomes.get("CACHE_HIT", 0), "re-listed images reused"
    assert summary["review_requests"] >= 3, "listings without a usable image go to review"
    assert summary["throughput_listings_per_s"] > 0 and 0 < summary["latency_p50_s"] <= summary["latency_p99_s"]
    page = html_path.read_text()
    assert summary["html_path"] == str(html_path.resolve()) and str(html_path.resolve()) in result.output
    assert "Review queue" in page and "data:image/jpeg;base64," in page and summary["model_id"] in page
    assert summary["review_queue_depth"] == summary["review_requests"], "the review service queued every request"
    assert summary["review_url"].startswith("http://127.0.0.1:")


@pytest.mark.integration
def test_demo_with_nothing_configured_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = f"demo-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWATCH_")}
    env["DEMO_TEST_MARKER"] = marker  # inherited by every child: lets us find leftovers
    swatch = Path(sys.executable).parent / "swatch"
    result = subprocess.run(
        [str(swatch), "demo", "--listings", "30"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert "embedded kafka, redis" in result.stdout
    assert (tmp_path / "swatch-demo" / "report.html").is_file()
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    leftovers.append((proc / "cmdline").read_bytes())
            except OSError:
                continue
    assert leftovers == []


@pytest.mark.integration
@pytest.mark.slow
def test_demo_review_keeps_the_review_ui_running_until_ctrl_c(tmp_path: Path) -> None:
    import signal
    import urllib.request

    marker = f"demo-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWATCH_")}
    env.update(DEMO_TEST_MARKER=marker, SWATCH_REVIEW_PORT="0", COLUMNS="200")
    swatch = Path(sys.executable).parent / "swatch"
    process = subprocess.Popen(
        [str(swatch), "demo", "--listings", "20", "--review"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    address = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Review UI: "):
            address = line.split()[2]
            break
    assert address, "".join(lines)
    with urllib.request.urlopen(address + "/api/queue", timeout=10) as response:  # the UI answers meanwhile
        queue = json.load(response)
    assert queue["total"] >= 1
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _has_marker(p, marker)]
    assert leftovers == []


def _has_marker(proc: Path, marker: str) -> bool:
    try:
        return marker.encode() in (proc / "environ").read_bytes()
    except OSError:
        return False
