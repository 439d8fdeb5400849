"""The architecture as a contract: import-linter's layers (pyproject.toml) hold."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import REPO


def test_imports_run_one_way_and_the_service_runs_without_ray():
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout and "KEPT" in run.stdout
