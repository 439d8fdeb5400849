"""One real Ray cluster, started with `ray start`, shared by the tests of this package.

The head starts once (about 20-30 s on a busy 2-core machine) with 2 logical CPUs; each
test deploys its own application with `serve deploy` and removes it afterwards; the
multi-node test adds a worker node and runs last (it kills that node).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.pictures import synthetic_jpeg
from tests.support.ray_cluster import FileServer, LocalCluster, node_weights_env

# The GCS declares a node dead after `failure_threshold` missed checks `period_ms` apart
# (defaults: 3 s x 5); shorter here so the node-loss test does not wait half a minute.
FAST_NODE_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@pytest.fixture(scope="package")
def weights_mirror() -> Iterator[FileServer]:
    # Slow enough that two fetchers on one node would overlap (the lock makes it one GET).
    with FileServer(delay_s=0.5) as server:
        yield server


@pytest.fixture(scope="package")
def cluster(weights_mirror: FileServer) -> Iterator[LocalCluster]:
    local = LocalCluster()
    try:
        local.start_head(
            num_cpus=2,
            env={
                **FAST_NODE_FAILURE_DETECTION,
                **node_weights_env(local, weights_mirror, "head"),
            },
        )
        yield local
    finally:
        local.stop()


@pytest.fixture
def app_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The shared cluster; whatever the test deployed is deleted afterwards."""
    yield cluster
    if cluster.nodes and cluster.nodes[0].alive:
        cluster.remove_apps()


@dataclass
class Pictures:
    """Distinct small JPEGs (each index other bytes: a cache miss the first time)."""

    base: int

    def __call__(self, index: int) -> bytes:
        return synthetic_jpeg(80, 60, seed=self.base + index)


@pytest.fixture
def pictures(request: pytest.FixtureRequest) -> Callable[[int], bytes]:
    # A different seed range per test: the detached cache actors outlive each app.
    return Pictures(base=zlib.crc32(request.node.nodeid.encode()) % 10**6 * 1000)
