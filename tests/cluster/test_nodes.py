"""Several nodes: a head and a worker node (two `ray start` process trees on this machine,
each with its own CPUs, temp dir, weights dir and Serve proxy port). Stylizer and ingress
replicas run on both and share the one cache; each node fetches the weights once; the app
survives losing the worker node and Serve replaces the lost Stylizer replica on the head.

Runs last in this package: it kills the worker node it added.
"""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app.model.weights import git_blob_sha1, git_blob_sha1_file
from tests.support.ray_cluster import (
    HOST,
    Load,
    free_ports,
    node_weights_env,
    serve_config,
    wait_for,
    write_config,
)
from tests.support.serve import TEST_RUNTIME
from tests.support.weights import state_dict_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKPOINT = "cluster_test_checkpoint"  # registered by tests/cluster/registry_app.py


def post(url: str, data: bytes) -> httpx.Response:
    response = httpx.post(f"{url}/v1/stylize", files={"image": ("p.jpg", data)}, timeout=90)
    assert response.status_code == 200, response.text
    return response


def nodes_of(cluster, deployment: str) -> list[str]:
    return sorted(replica["node_id"] for replica in cluster.replicas(deployment))


def test_two_nodes_share_cache_fetch_weights_once_each_and_survive_worker_loss(
    app_cluster, weights_mirror, pictures, tmp_path
):
    cluster = app_cluster
    data = state_dict_bytes(seed=7)
    sha1 = git_blob_sha1(data)
    for node in ("head", "worker"):
        weights_mirror.files[f"/{node}/{CHECKPOINT}.pt"] = data

    # The worker's proxy needs a port of its own: both "machines" share one loopback.
    (worker_http_port,) = free_ports(1)
    worker = cluster.add_worker(
        "worker",
        num_cpus=1,
        env={
            **node_weights_env(cluster, weights_mirror, "worker"),
            "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_http_port),
        },
    )
    head_url, worker_url = cluster.base_url, f"http://{HOST}:{worker_http_port}"
    nodes = {node["node_id"]: node for node in cluster.alive_nodes()}
    [head_id] = [i for i, node in nodes.items() if node["is_head_node"]]
    [worker_id] = [i for i in nodes if i != head_id]

    args = {
        "styles": [{"name": "gamma", "weights": CHECKPOINT}],
        "runtime": TEST_RUNTIME,  # one runtime on any CPU: the same cache keys
        "default_size": 64,
        "limits": {"max_size": 256},
        "request_timeout_s": 60,
        "cache": {"name": "cluster-nodes", "local_max_bytes": 0, "timeout_s": 2.0},
        "test_registry": [{"name": CHECKPOINT, "blob_sha1": sha1, "align_corners": False}],
    }
    # Stylizer replicas spread over the nodes by Serve's default SPREAD placement (round
    # robin over the nodes with room; the head has room for both, so that a lost replica
    # can come back there). One ingress replica per node, each behind its node's proxy.
    # Health checks often enough that a lost replica is noticed within seconds.
    stylizer = {
        "num_replicas": 2,
        "max_ongoing_requests": 8,
        "max_queued_requests": 256,
        "ray_actor_options": {"num_cpus": 1},
        "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
        "health_check_period_s": 1,
        "health_check_timeout_s": 5,
    }
    ingress = {
        "num_replicas": 2,
        "max_replicas_per_node": 1,
        "health_check_period_s": 1,
        "health_check_timeout_s": 5,
    }
    config = serve_config(
        cluster.serve_port,
        args,
        stylizer,
        ingress=ingress,
        import_path="tests.cluster.registry_app:build_app",
    )
    cluster.serve_deploy(write_config(tmp_path / "nodes.yaml", config))
    cluster.wait_app_running(timeout_s=240)

    # Replicas on both nodes.
    assert nodes_of(cluster, "Stylizer") == sorted([head_id, worker_id]), "SPREAD placement"
    assert nodes_of(cluster, "Ingress") == sorted([head_id, worker_id])

    # Weights: one GET per node (build task and replica on the head, replica on the worker),
    # each node's copy verified in its own directory.
    assert weights_mirror.count(f"/head/{CHECKPOINT}.pt") == 1
    assert weights_mirror.count(f"/worker/{CHECKPOINT}.pt") == 1
    for node in ("head", "worker"):
        assert git_blob_sha1_file(cluster.root / f"weights-{node}" / f"{CHECKPOINT}.pt") == sha1

    # One cache for all: computed through one node's proxy and ingress, a hit through the
    # other's (each proxy prefers the ingress replica on its own node; no L1 in front).
    for first, second in ((head_url, worker_url), (worker_url, head_url)):
        photo = pictures(0 if first is head_url else 1)
        computed, reused = post(first, photo), post(second, photo)
        assert (computed.headers["x-cache"], reused.headers["x-cache"]) == ("miss", "hit")
        assert reused.headers["etag"] == computed.headers["etag"]
        assert reused.content == computed.content

    # Losing the worker node: requests through the head keep succeeding; Serve puts the
    # lost Stylizer replica back on the head (the second ingress waits for a node: one
    # per node).
    with Load(head_url, lambda i: pictures(10_000 + i), concurrency=2) as load:
        wait_for(lambda: load.count() >= 5, 60, "the first requests")
        killed_at = time.monotonic()
        worker.kill()
        wait_for(
            lambda: (
                nodes_of(cluster, "Stylizer") == [head_id, head_id]
                and nodes_of(cluster, "Ingress") == [head_id]
            ),
            120,
            "the lost Stylizer replica to be replaced on the head",
        )
        replaced_s = time.monotonic() - killed_at
        seen = load.count()
        wait_for(lambda: load.count() >= seen + 5, 60, "requests after the replacement")

    failures = load.failures()
    print(
        f"worker killed: Stylizer replica replaced on the head after {replaced_s:.1f} s; "
        f"{load.count()} requests, {len(failures)} failed"
    )
    assert failures == [], failures[:5]
    assert worker_id not in {node["node_id"] for node in cluster.alive_nodes()}
    # The replacement replica on the head found the head's verified copy: no new GET.
    assert weights_mirror.count(f"/head/{CHECKPOINT}.pt") == 1
    assert weights_mirror.count(f"/worker/{CHECKPOINT}.pt") == 1
