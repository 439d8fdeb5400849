"""The cache benchmark runs end to end (`--quick`) and reports every case; no timing checks
(the figures in docs/scaling.md come from full runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_cache_bench_quick(tmp_path):
    out = tmp_path / "cache_bench.json"
    command = [sys.executable, "-m", "load_tests.cache_bench", "--quick", "--shards", "1", "2"]
    done = subprocess.run(
        [*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    cases = {(r["shards"], r["op"], r["value_bytes"]) for r in report["results"]}
    assert cases == {
        (shards, op, size)
        for shards in (1, 2)
        for op in ("get", "put")
        for size in (1024, 200 * 1024)
    }
    for result in report["results"]:
        assert result["ops_per_s"] > 0
        assert result["errors"] == 0 and result["misses"] == 0, result
    assert "| shards | op |" in done.stdout
