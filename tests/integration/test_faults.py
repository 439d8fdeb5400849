"""Overload, dying replicas and a bounded soak: every answer is a 200 or a clean 503."""

from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.support.pictures import synthetic_jpeg
from tests.support.serve import (
    app_args,
    deploy,
    ingress_deployment,
    kill_replica,
    replica_names,
    running_replicas,
    stylizer_deployment,
    stylizer_stats,
    wait_healthy,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_seeds = iter(range(200_000, 10**9))


def unique_pictures(count: int) -> list[bytes]:
    return [synthetic_jpeg(96, 72, seed=next(_seeds)) for _ in range(count)]


def timed_post(client: httpx.Client, data: bytes) -> tuple[int, float, httpx.Headers]:
    started = time.monotonic()
    try:
        response = client.post("/v1/stylize", files={"image": ("a.jpg", data)})
    except httpx.HTTPError:
        return -1, time.monotonic() - started, httpx.Headers()
    return response.status_code, time.monotonic() - started, response.headers


def send_all(base_url: str, pictures: list[bytes], concurrency: int) -> list[tuple]:
    """Closed-loop load: `concurrency` clients over kept-alive connections."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(base_url=base_url, timeout=60, limits=limits) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        return list(pool.map(lambda data: timed_post(client, data), pictures))


def test_overload_sheds_with_503_and_recovers(default_app):
    # One replica that takes 2 at a time and queues 2 more; the ingress admits 4 misses.
    deploy(
        app_args(max_in_flight=4),
        stylizer=stylizer_deployment(
            max_ongoing_requests=2,
            max_queued_requests=2,
            user_config={"max_batch_size": 2, "batch_wait_timeout_s": 0.005},
        ),
    )
    wait_healthy(default_app)
    results = send_all(default_app, unique_pictures(80), concurrency=20)  # ~5x what it holds
    statuses = [status for status, _, _ in results]
    shed = [(seconds, headers) for status, seconds, headers in results if status == 503]
    served = sorted(seconds for status, seconds, _ in results if status == 200)
    assert set(statuses) <= {200, 503}, statuses
    assert shed and served
    assert all(headers.get("retry-after") for _, headers in shed)
    shed_times = sorted(seconds for seconds, _ in shed)
    # Shedding answers at once (a generous bound for a shared 2-core machine; the
    # benchmark reports the real figure), accepted requests stay bounded.
    assert statistics.median(shed_times) < 1.0, shed_times
    assert served[-1] < 30, served
    print(
        f"overload: {len(served)} served, {len(shed)} shed; shed p50 "
        f"{statistics.median(shed_times) * 1e3:.0f} ms; served p99 {served[-1]:.2f} s"
    )
    # When the load drops, it serves everyone again.
    after = send_all(default_app, unique_pictures(4), concurrency=1)
    assert [status for status, _, _ in after] == [200] * 4


def test_killing_a_stylizer_replica_loses_no_request(default_app):
    deploy(stylizer=stylizer_deployment(num_replicas=2))
    wait_healthy(default_app)
    victim = stylizer_stats()["replica"]
    pictures = unique_pictures(40)
    results: list[tuple] = []

    def load() -> None:
        results.extend(send_all(default_app, pictures, concurrency=6))

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)
    kill_replica("Stylizer", victim)
    loader.join(timeout=120)
    statuses = [status for status, _, _ in results]
    print(f"stylizer kill: {len(statuses)} requests, {statuses.count(200)} ok")
    assert statuses == [200] * len(pictures)
    # Serve replaces the dead replica.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replicas = {stylizer_stats()["replica"] for _ in range(6)}
        if len(replicas) == 2 and victim not in replicas:
            break
        time.sleep(1)
    assert len(replicas) == 2 and victim not in replicas


def test_killing_an_ingress_replica_is_survived_by_the_other(default_app):
    deploy(ingress=ingress_deployment(num_replicas=2))
    wait_healthy(default_app)
    assert len(replica_names("Ingress")) == 2
    kill_replica("Ingress")
    time.sleep(2)  # the proxy learns the replica is gone
    results = send_all(default_app, unique_pictures(12), concurrency=4)
    statuses = [status for status, _, _ in results]
    print(f"ingress kill: {statuses.count(200)}/{len(statuses)} ok after the kill")
    assert statuses == [200] * len(statuses)


def _serve_replica_rss_mb() -> dict[int, float]:
    rss = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "ServeReplica:animegan" in cmdline and process.pid != os.getpid():
            try:
                rss[process.pid] = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
    return rss


def test_memory_stays_flat_over_a_soak(default_app):
    deploy()
    wait_healthy(default_app)
    send_all(default_app, unique_pictures(30), concurrency=4)  # warm: allocator pools, kernels
    before = _serve_replica_rss_mb()
    for _ in range(3):
        results = send_all(default_app, unique_pictures(40), concurrency=4)
        assert [status for status, _, _ in results] == [200] * 40
    after = _serve_replica_rss_mb()
    growth = {pid: after[pid] - before[pid] for pid in before if pid in after}
    print(f"soak: RSS before {before}, growth MB {growth}")
    assert growth and max(growth.values()) < 150, growth


def test_readyz_is_503_until_a_model_replica_answers(default_app):
    """A Stylizer replica that waits for its CPU, as one waits for a node on a cluster:
    the ingress lives (`/healthz`) but is not ready (`/readyz` 503) until the replica has
    started and the example photo is warm for both styles."""
    import ray
    from ray import serve
    from ray.util.placement_group import placement_group, remove_placement_group

    serve.delete("animegan")
    both_cpus = placement_group([{"CPU": 2}])
    ray.get(both_cpus.ready(), timeout=60)
    try:
        deploy(app_args(warm_examples=["4.jpg"]), blocking=False)
        wait_healthy(default_app, timeout_s=120)
        waiting = httpx.get(f"{default_app}/readyz", timeout=30)
        assert running_replicas("Stylizer") == 0  # after the answer: no replica before it
    finally:
        remove_placement_group(both_cpus)
    assert waiting.status_code == 503, waiting.text
    assert waiting.json()["error"]["code"] == "not_ready"
    assert "no model replica" in waiting.json()["error"]["message"]
    assert waiting.headers["retry-after"] == "5"
    wait_ready(default_app)
    ready = httpx.get(f"{default_app}/readyz", timeout=30).json()
    assert ready == {"status": "ready", "examples_warm": 2}
    examples = httpx.get(f"{default_app}/v1/examples", timeout=30).json()["examples"]
    assert [example["warm"] for example in examples] == [{"alpha": True, "beta": True}]
