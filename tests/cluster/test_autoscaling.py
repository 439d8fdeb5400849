"""Autoscaling, shown: 1 -> 2 Stylizer replicas under load and back to 1, no request lost,
and a picture computed before the scale-out is a cache hit whichever replica is up."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.ray_cluster import Load, serve_config, wait_for, write_config
from tests.support.serve import TEST_RUNTIME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short delays so a test sees both directions within a minute; production keeps Ray's
# longer defaults (serve_config.yaml: 10 s up, 60 s down).
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "look_back_period_s": 1,
    "metrics_interval_s": 0.5,  # deprecated knob, still how often replicas/handles report
}
HEAVY_CLIENTS = 6  # about 6 requests in flight: 3 replicas wanted, 2 allowed
LIGHT_CLIENTS = 1  # about 1 in flight: 1 replica wanted


def stylizer_ids(cluster) -> set[str]:
    return {replica["replica_id"] for replica in cluster.replicas("Stylizer")}


def test_scales_out_and_back_in_without_a_failed_request(app_cluster, pictures, tmp_path):
    cluster = app_cluster
    stylizer = {
        "max_ongoing_requests": 8,
        "max_queued_requests": 256,
        "ray_actor_options": {"num_cpus": 1},
        "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
        "autoscaling_config": AUTOSCALING,
    }
    args = {
        "styles": [{"name": "alpha", "weights": "random"}],
        "runtime": TEST_RUNTIME,  # one runtime on any CPU: the same cache keys
        "default_size": 64,
        "limits": {"max_size": 256},
        "request_timeout_s": 60,
        # No per-ingress L1: a hit below comes from the shared cache actor.
        "cache": {"name": "cluster-autoscale", "local_max_bytes": 0, "timeout_s": 2.0},
    }
    config = write_config(
        tmp_path / "autoscale.yaml", serve_config(cluster.serve_port, args, stylizer)
    )
    cluster.serve_deploy(config)
    cluster.wait_app_running()
    assert len(stylizer_ids(cluster)) == 1

    client = httpx.Client(base_url=cluster.base_url, timeout=90)
    photo = pictures(0)
    first = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "miss"

    started = time.monotonic()
    with Load(cluster.base_url, lambda i: pictures(1000 + i), HEAVY_CLIENTS) as heavy:
        wait_for(lambda: len(stylizer_ids(cluster)) >= 2, 90, "a second Stylizer replica")
        scaled_out_s = time.monotonic() - started
        # The photo computed by the first replica is a hit now that two serve...
        for _ in range(5):
            again = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
            assert again.status_code == 200, again.text
            assert again.headers["x-cache"] == "hit"
            assert again.headers["etag"] == first.headers["etag"]
            assert again.content == first.content
        # ... while the load (all misses) reaches both replicas: /v1/stats carries one
        # replica's own report, a different one from call to call.
        busy: set[str] = set()

        def both_replicas_busy() -> bool:
            model = client.get("/v1/stats").json()["model"]
            if model and model["images"] > 0:
                busy.add(model["replica"])
            return len(busy) >= 2

        wait_for(both_replicas_busy, 60, "the load to reach both replicas")
        again = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
        assert again.headers["x-cache"] == "hit"
    replicas_at_peak = stylizer_ids(cluster)

    # Light load through the scale-in: requests are in flight while a replica drains.
    started = time.monotonic()
    with Load(cluster.base_url, lambda i: pictures(100_000 + i), LIGHT_CLIENTS) as light:
        wait_for(lambda: len(stylizer_ids(cluster)) == 1, 90, "the scale-in to 1 replica")
        wait_for(
            lambda: not cluster.replicas("Stylizer", states=("STOPPING",)),
            60,
            "the stopped replica to be gone",
        )
        scaled_in_s = time.monotonic() - started
        seen = light.count()
        wait_for(lambda: light.count() >= seen + 5, 60, "requests after the scale-in")

    failures = heavy.failures() + light.failures()
    print(
        f"scale-out after {scaled_out_s:.1f} s, scale-in after {scaled_in_s:.1f} s; "
        f"{heavy.count()} + {light.count()} requests, {len(failures)} failed"
    )
    assert len(replicas_at_peak) == 2
    assert heavy.count() > 0 and light.count() > 0
    assert failures == [], failures[:5]
    stats = client.get("/v1/stats").json()
    assert len(busy) == 2
    assert stats["cache"]["shared"]["hits"] >= 6
    client.close()
