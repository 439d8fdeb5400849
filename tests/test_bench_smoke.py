"""The benchmark runs end to end (`--quick`) and writes every section; no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SECTIONS = (
    "meta",
    "cold_start",
    "model_limit",
    "service",
    "floor",
    "baselines",
    "memory",
    "idle_cpu_cores",
    "targets",
)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "load_tests.bench", "--quick"]
    command += ["--out", str(out / "docs"), "--results-dir", str(out / "results")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def results(bench_run) -> dict:
    return json.loads((bench_run / "results" / "bench.json").read_text())


def test_every_section_is_written(results):
    assert set(SECTIONS) <= set(results)
    assert results["meta"]["machine"]["cores"] >= 1


def test_model_limit_has_both_sizes(results):
    limit = results["model_limit"]
    assert limit["grid"]
    assert {"256", "512"} <= set(limit["best"])
    assert limit["best"]["256"]["images_per_s"] > 0


def test_service_workloads_all_answered(results):
    points = results["service"]["points"]
    workloads = {(p["workload"], p["size"]) for p in points}
    assert {
        ("all misses", 256),
        ("all misses", 512),
        ("mixed", 256),
        ("all hits", 256),
    } <= workloads
    assert {p["concurrency"] for p in points if p["workload"] == "all hits"} == {1, 8}
    assert all(p["errors"] == 0 and p["completed"] > 0 for p in points)


def test_floor_and_baselines(results):
    assert {p["concurrency"] for p in results["floor"]["points"]} == {1, 8}
    flask = results["baselines"]["flask"]
    assert "points" in flask or "skipped" in flask


def test_memory_and_cold_start(results):
    assert any(
        role.startswith("ServeReplica:animegan:Stylizer") for role in results["memory"]["idle_mib"]
    )
    assert results["memory"]["load_peak_mib"]
    assert results["idle_cpu_cores"]
    assert results["cold_start"]["serve_first_200_s"] > 0
    assert results["cold_start"]["model"]["load_and_warmup_s"] > 0


def test_targets_and_report(results, bench_run):
    assert len(results["targets"]) == 7
    assert all({"name", "ratio", "threshold", "passed"} <= set(t) for t in results["targets"])
    markdown = (bench_run / "docs" / "benchmarks.md").read_text()
    assert "## Targets" in markdown and "python -m load_tests.bench --quick" in markdown
    assert (bench_run / "docs" / "benchmarks.png").stat().st_size > 0
