"""Fixtures for every test, and the order the groups run in (helpers: tests/support/)."""

from __future__ import annotations

import pytest

from tests.support.paths import REPO
from tests.support.pictures import sample_photos


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
