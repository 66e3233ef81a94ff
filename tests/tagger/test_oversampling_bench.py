"""benchmarks/oversampling.sh and scripts/compare_evals.py: the side-by-side comparison runs and reads right."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _compare_evals() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_evals", ROOT / "scripts" / "compare_evals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(macro: float, rare_f1: float) -> dict[str, object]:
    per_value = {
        "common": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 90},
        "rare": {"precision": rare_f1, "recall": rare_f1, "f1": rare_f1, "support": 10},
        "unseen": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    }
    return {"model_id": "m", "items": 100, "attributes": {"g.a": {"macro_f1": macro, "per_value": per_value}}}


def test_compare_picks_the_rarest_seen_value_and_averages_heads() -> None:
    compare = _compare_evals()
    result = compare.compare(_report(0.9, 0.5), _report(0.8, 0.2))
    (row,) = result["heads"]
    assert row["rarest_value"] == "rare" and row["rarest_support"] == 10, "a value never seen is not the rarest"
    assert row["rarest_f1"] == [0.5, 0.2]
    assert result["mean"]["macro_f1"] == [0.9, 0.8]
    table = compare.markdown(["on", "off"], result)
    assert "| `g.a` | 0.900 | 0.800 | +0.100 | rare (10) | 0.500 | 0.200 |" in table


def test_compare_refuses_reports_without_shared_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compare = _compare_evals()
    other = _report(0.5, 0.5)
    other["attributes"] = {"g.b": other["attributes"]["g.a"]}  # type: ignore[index]
    (tmp_path / "a.json").write_text(json.dumps(_report(0.9, 0.5)))
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert compare.main([f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}"]) == 1
    assert "share no head" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)  # ten short processes, each importing torch
def test_oversampling_benchmark_runs_all_three_arms(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "RUN_DIR": str(tmp_path / "run"),
        "N_TRAIN": "48",
        "N_HELDOUT": "24",
        "BACKBONE": "test_efficientnet",
        "IMAGE_SIZE": "32",
        "EPOCHS": "2",
        "BATCH": "8",
        "COLUMNS": "200",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "oversampling.sh")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = (tmp_path / "run" / "results.md").read_text()
    assert "Oversampling on vs off, the same number of epochs" in results and "equal compute" in results
    # the equal-compute arm trained for more epochs than "off", as many as the repeats call for
    on_log = (tmp_path / "run" / "on.log").read_text()
    assert "draws per epoch over" in on_log
    assert json.loads((tmp_path / "run" / "oversampling-equal-compute.json").read_text())["names"] == ["on", "off-long"]
