"""Fixtures for every test, and the order the groups run in (helpers: tests/support/)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from serve_app.model.kept_choices import KEPT_CHOICES_ENV
from tests.support.paths import REPO
from tests.support.pictures import sample_photos

# The runtime choices the tests' replicas keep on disk: this session's own file, never the
# user's, so that no run adopts what an earlier one measured. Set before any Ray starts
# (every Ray, `serve run` and node of the session inherits it).
KEPT_CHOICES = Path(tempfile.gettempdir()) / f"animegan-test-runtime-choices-{os.getpid()}.json"


def pytest_configure(config: pytest.Config) -> None:
    os.environ[KEPT_CHOICES_ENV] = str(KEPT_CHOICES)


def pytest_unconfigure(config: pytest.Config) -> None:
    KEPT_CHOICES.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def photo_bytes() -> bytes:
    """The first real photo (the samples' ``1.jpg``, 1280×853, unless overridden)."""
    return sample_photos()[0].read_bytes()


# Tests that start no Ray first, then the top-level ones (the benchmark's smoke run starts
# its own `serve run`), then those that start Ray clusters, and the one Ray the integration
# tests share last: no idle Ray of another group runs next to a test that loads the CPU.
TEST_GROUP_ORDER = ("unit", "", "cluster", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def group_rank(item: pytest.Item) -> int:
        parts = item.path.relative_to(REPO / "tests").parts
        group = parts[0] if len(parts) > 1 else ""
        return TEST_GROUP_ORDER.index(group) if group in TEST_GROUP_ORDER else len(TEST_GROUP_ORDER)

    items.sort(key=group_rank)  # stable: the usual order within a group
