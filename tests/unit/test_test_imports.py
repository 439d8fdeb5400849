"""The test suite's own layout: helpers shared by test modules live in tests/support/, and
no test module (conftest.py included) imports another one."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

TESTS = REPO / "tests"
SUPPORT = "tests.support"


def imported_modules(path: Path) -> list[str]:
    """Every ``tests.…`` module that ``path`` imports, at any depth of its code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "tests":  # from tests import x
            found += [f"tests.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return sorted(name for name in found if name.startswith("tests."))


def test_test_modules_import_only_the_support_package():
    outside = [
        (str(path.relative_to(REPO)), name)
        for path in sorted(TESTS.rglob("*.py"))
        if not path.is_relative_to(TESTS / "support")
        for name in imported_modules(path)
        if not (name == SUPPORT or name.startswith(f"{SUPPORT}."))
    ]
    assert outside == [], "move the helpers they share to tests/support/"


def test_the_check_sees_both_import_forms(tmp_path):
    module = tmp_path / "test_x.py"
    module.write_text(
        "from tests.integration.test_jobs import wait_done\n"
        "from tests import media_samples\n"
        "def f():\n    import tests.unit.conftest\n"
        "from tests.support.serve import deploy\n"
    )
    assert imported_modules(module) == [
        "tests.integration.test_jobs",
        "tests.media_samples",
        "tests.support.serve",
        "tests.unit.conftest",
    ]
