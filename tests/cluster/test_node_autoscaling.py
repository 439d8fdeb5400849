"""Node autoscaling, shown with Ray's own autoscaler on a simulated multi-node cluster.

The head has 1 CPU: room for one Stylizer replica (``num_cpus: 1``); the ingress, the
Serve controller and the proxies take none. A burst of requests makes Serve want a second
Stylizer replica, which fits on no node, so the autoscaler (``fake_multinode`` provider)
adds a 1-CPU worker node; the replica starts there and answers. After the burst Serve
stops that replica (it prefers replicas off the head) and the idle node is terminated.
Every request of the burst must answer 200: the queue bounds hold the burst, they do not
refuse it. Timings are printed (``pytest -s``) and kept in the test's captured output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.fake_cluster import AutoscalingLocalCluster, WorkerType
from tests.support.ray_cluster import Load, free_ports, serve_config, wait_for, write_config
from tests.support.serve import TEST_RUNTIME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

logger = logging.getLogger(__name__)

WORKER = WorkerType("cpu1", cpus=1, min_workers=0, max_workers=1)
# 12 s idle before the autoscaler terminates a node (production keeps Ray's 5 min default).
IDLE_TIMEOUT_MINUTES = 0.2
# Short Serve delays so that both directions fit in a CI minute or two.
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "look_back_period_s": 1,
    "metrics_interval_s": 0.5,
}
BURST_CLIENTS = 4  # about 4 requests in flight: 2 replicas wanted
# Two CPU-starved fake nodes start processes on 2 real cores: generous, polled limits.
SCALE_UP_TIMEOUT_S = 150
SCALE_DOWN_TIMEOUT_S = 120


@dataclass
class Timeline:
    """Seconds from the start of the burst (node_removed_s: from its end)."""

    serve_decision_s: float | None = None  # Serve's controller: "Upscaling ... 1 to 2"
    node_launch_s: float | None = None  # the autoscaler queues a node for launch
    node_up_s: float | None = None
    replica_init_started_s: float | None = None  # its process has imported the app's code
    replica_init_s: float | None = None  # its constructor (models loaded, warmed up)
    replica_running_s: float | None = None
    first_answer_s: float | None = None
    burst_s: float | None = None
    replica_stopped_s: float | None = None
    node_removed_s: float | None = None

    def summary(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} s"

        return (
            f"Serve decided to upscale after {fmt(self.serve_decision_s)}, the autoscaler "
            f"launched a node after {fmt(self.node_launch_s)}, "
            f"worker node ALIVE after {fmt(self.node_up_s)}, its replica began initializing "
            f"after {fmt(self.replica_init_started_s)} (constructor: "
            f"{fmt(self.replica_init_s)}), RUNNING "
            f"after {fmt(self.replica_running_s)}, first answer from it after "
            f"{fmt(self.first_answer_s)} (from burst start); burst lasted {fmt(self.burst_s)}; "
            f"after the burst: replica stopped after {fmt(self.replica_stopped_s)}, "
            f"node removed after {fmt(self.node_removed_s)}"
        )


@pytest.fixture
def autoscaling_cluster() -> Iterator[AutoscalingLocalCluster]:
    cluster = AutoscalingLocalCluster()
    (worker_http_port,) = free_ports(1)
    try:
        cluster.start_autoscaling_head(
            head_cpus=1,
            workers=[WORKER],
            idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
            # Inherited by the worker nodes (started by the head's autoscaler): their
            # proxies need a port of their own, all "machines" sharing one loopback.
            env={
                "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_http_port),
                # Serve drains the proxy of a node left without replicas for at least
                # 30 s before its actor goes and the node can count as idle; 5 s here.
                "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "5",
            },
        )
        yield cluster
    finally:
        cluster.stop()


def replica_nodes(cluster: AutoscalingLocalCluster) -> dict[str, str]:
    """Running Stylizer replica id -> its node id."""
    return {r["replica_id"]: r["node_id"] for r in cluster.replicas("Stylizer")}


def stylizer_on(cluster: AutoscalingLocalCluster, node_ids: set[str]) -> set[str]:
    return {replica for replica, node in replica_nodes(cluster).items() if node in node_ids}


def answered_from(client: httpx.Client, replicas: set[str]) -> bool:
    """Whether this /v1/stats call reports a replica in ``replicas`` that has served an
    image (each call reports one model replica, picked as requests are routed)."""
    model = client.get("/v1/stats").json().get("model") or {}
    return model.get("images", 0) > 0 and model.get("replica") in replicas


def read_log_times(
    cluster: AutoscalingLocalCluster, timeline: Timeline, since: float, replicas: set[str]
) -> None:
    """The steps only the logs show, in seconds from ``since`` (epoch s); None if absent."""

    def at(pattern: str, text: str) -> float | None:
        stamp = cluster.log_time(pattern, text, after=since - 1)
        return None if stamp is None else round(stamp - since, 1)

    timeline.serve_decision_s = at("serve/controller_*.log", "Upscaling Deployment(name='Stylizer'")
    timeline.node_launch_s = at("monitor.log", "new nodes for launch")
    if len(replicas) != 1:
        return
    log = f"serve/replica_*_Stylizer_{next(iter(replicas))}.log"
    timeline.replica_init_started_s = at(log, "Started initializing replica")
    finished = at(log, "Finished initializing replica")
    if finished is not None and timeline.replica_init_started_s is not None:
        timeline.replica_init_s = finished - timeline.replica_init_started_s


def test_burst_adds_a_node_that_serves_then_idle_node_is_removed(
    autoscaling_cluster, pictures, tmp_path
):
    cluster = autoscaling_cluster
    args = {
        "styles": [{"name": "alpha", "weights": "random"}],
        "runtime": TEST_RUNTIME,  # one runtime on any CPU: the same cache keys
        "default_size": 64,
        "limits": {"max_size": 256},
        "request_timeout_s": 120,  # a queued request outlasts the node's start
        "cache": {"name": "node-autoscale", "local_max_bytes": 0, "timeout_s": 2.0},
        "jobs": {"store_url": str(cluster.root / "jobs")},
    }
    stylizer = {
        "max_ongoing_requests": 8,
        "max_queued_requests": 256,  # the burst waits in the queue, never 503
        "ray_actor_options": {"num_cpus": 1},
        "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
        "autoscaling_config": AUTOSCALING,
    }
    config = serve_config(cluster.serve_port, args, stylizer)
    cluster.serve_deploy(write_config(tmp_path / "node-autoscale.yaml", config))
    cluster.wait_app_running(timeout_s=240)
    assert cluster.worker_node_ids() == set(), "no worker node before the burst"
    assert len(replica_nodes(cluster)) == 1

    timeline = Timeline()
    client = httpx.Client(base_url=cluster.base_url, timeout=60)
    warm = client.post("/v1/stylize", files={"image": ("p.jpg", pictures(0))})
    assert warm.status_code == 200, warm.text

    started, started_wall = time.monotonic(), time.time()

    def since_start() -> float:
        return time.monotonic() - started

    new_replicas: set[str] = set()

    def replica_on_new_node() -> bool:
        workers = cluster.worker_node_ids()
        if workers and timeline.node_up_s is None:
            timeline.node_up_s = since_start()
        new_replicas.update(stylizer_on(cluster, workers))
        return bool(new_replicas)

    try:
        with Load(cluster.base_url, lambda i: pictures(1000 + i), BURST_CLIENTS) as burst:
            wait_for(
                replica_on_new_node,
                SCALE_UP_TIMEOUT_S,
                "a Stylizer replica RUNNING on a new worker node",
                interval_s=0.25,
            )
            timeline.replica_running_s = since_start()
            # Only /v1/stats from here (the dashboard's APIs are slow under load): the
            # first report of the new replica having served an image.
            wait_for(
                lambda: answered_from(client, new_replicas),
                60,
                "the new node's Stylizer replica to answer",
                interval_s=0.05,
            )
            timeline.first_answer_s = since_start()
            # A few more answers on both nodes, then the burst ends.
            seen = burst.count()
            wait_for(lambda: burst.count() >= seen + 20, 60, "requests after the scale-up")
        timeline.burst_s = since_start()
        [worker_id] = cluster.worker_node_ids()

        ended = time.monotonic()
        wait_for(
            lambda: not stylizer_on(cluster, {worker_id}), SCALE_DOWN_TIMEOUT_S, "the scale-in"
        )
        timeline.replica_stopped_s = time.monotonic() - ended
        wait_for(
            lambda: worker_id not in cluster.worker_node_ids(),
            SCALE_DOWN_TIMEOUT_S,
            "the idle worker node to be removed",
            interval_s=0.5,
        )
        timeline.node_removed_s = time.monotonic() - ended
        read_log_times(cluster, timeline, started_wall, new_replicas)
    except TimeoutError as error:
        raise AssertionError(
            f"{error}\n{timeline.summary()}\nautoscaler log:\n{cluster.autoscaler_log_tail()}"
        ) from error
    finally:
        client.close()

    print(f"node autoscaling: {timeline.summary()}; {burst.count()} requests")
    logger.info("node autoscaling: %s", timeline.summary())
    failures = burst.failures()
    assert failures == [], f"{len(failures)} of {burst.count()} failed: {failures[:5]}"
    # The app is back to one replica, on the head; it still answers.
    assert len(replica_nodes(cluster)) == 1
    after = httpx.post(
        f"{cluster.base_url}/v1/stylize", files={"image": ("p.jpg", pictures(99))}, timeout=60
    )
    assert after.status_code == 200, after.text
