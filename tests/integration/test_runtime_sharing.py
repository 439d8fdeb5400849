"""One runtime across a deployment's replicas: a second Stylizer replica, started by the
autoscaler under load, adopts the runtime the first one measured (runtime_sharing.py), so
the replicas' results keep one cache key family and a picture computed by one replica is
a hit while the other serves.

This CPU has one qualifying runtime; the deployment's ``ANIMEGAN_SIMULATED_RUNTIMES``
(runtime_simulation.py) offers three, with made-up figures under which the n-th replica
to measure finds the n-th candidate fastest: replicas that each measured on their own
would run eager-fp32 and eager-bf16 (and the checks below fail).
"""

from __future__ import annotations

import pytest

from serve_app.model.runtime_simulation import SIMULATION_ENV
from tests.support.pictures import synthetic_jpeg
from tests.support.ray_cluster import Load, wait_for
from tests.support.serve import (
    app_args,
    deploy,
    running_replicas,
    stylizer_deployment,
    stylizer_stats,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Other weights than every other test's (seed 0): a decision key and cache keys of its own.
SEED = 7301
PICTURE_SEEDS = 7_301_000
# A second replica as soon as two requests wait; none removed while the test runs.
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 600,
    "look_back_period_s": 1,
    "metrics_interval_s": 0.5,  # deprecated knob, still how often replicas/handles report
}
LOAD_CLIENTS = 4


def picture(index: int) -> bytes:
    return synthetic_jpeg(96, 72, seed=PICTURE_SEEDS + index)


@pytest.fixture(scope="module")
def autoscaled_app(default_app, tmp_path_factory):
    """`runtime: auto` over the simulated candidates, one replica until load comes."""
    turns = tmp_path_factory.mktemp("runtime-turns")
    stylizer = stylizer_deployment(
        ray_actor_options={
            "num_cpus": 1,
            "runtime_env": {"env_vars": {SIMULATION_ENV: str(turns)}},
        },
        user_config={"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
        autoscaling_config=AUTOSCALING,
    )
    del stylizer["num_replicas"]  # the autoscaler's
    deploy(
        app_args(runtime="auto", seed=SEED, styles=[{"name": "alpha", "weights": "random"}]),
        stylizer,
    )
    wait_ready(default_app)
    return default_app


def test_a_replica_started_under_load_adopts_the_deployments_runtime(autoscaled_app, client):
    first = stylizer_stats()
    measured = first["runtime"]
    # The first measurement's turn: the first candidate (eager-fp32) is the fastest.
    assert (measured["kind"], measured["source"]) == ("eager-fp32", "measured")
    assert "eager-bf16" in measured["measured"]  # the simulated candidates were measured
    photo = picture(0)
    computed = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
    assert computed.status_code == 200, computed.text
    assert computed.headers["x-cache"] == "miss"

    reports = {first["replica"]: first}
    with Load(autoscaled_app, lambda i: picture(i), LOAD_CLIENTS) as load:
        wait_for(lambda: running_replicas("Stylizer") == 2, 120, "a second Stylizer replica")

        def both_replicas_report() -> bool:
            stats = stylizer_stats()
            reports[stats["replica"]] = stats
            return len(reports) == 2

        wait_for(both_replicas_report, 60, "the second replica's report")
        second_id = next(replica for replica in reports if replica != first["replica"])
        adopted = reports[second_id]["runtime"]
        # One runtime, so one family of cache keys (the runtime's identity is in each key).
        assert adopted["identity"] == measured["identity"]
        assert (adopted["kind"], adopted["source"], adopted["shared"]) == (
            "eager-fp32",
            "adopted",
            True,
        )
        assert adopted["decided_by"] == first["replica"]
        assert measured["shared"]  # it published its choice (the board took it)
        assert adopted["node_class"] == measured["node_class"]
        assert adopted["measured"] == measured["measured"]  # the figures it was chosen on

        def second_replica_computed() -> bool:
            stats = stylizer_stats()
            reports[stats["replica"]] = stats
            return reports[second_id]["images"] > 0

        wait_for(second_replica_computed, 60, "the load to reach the second replica")
        # The photo the first replica computed is a hit, and keeps its key, while the
        # second replica serves (the ingress learns the runtime from either one's answers).
        for _ in range(5):
            again = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
            assert again.status_code == 200, again.text
            assert again.headers["x-cache"] == "hit"
            assert again.headers["etag"] == computed.headers["etag"]
            assert again.content == computed.content
    assert load.failures() == [], load.failures()[:5]
    # Whichever replica computed them, the load's pictures are hits now.
    posted = load.count()
    for index in range(max(1, posted - 8), posted + 1):
        again = client.post("/v1/stylize", files={"image": ("p.jpg", picture(index))})
        assert again.status_code == 200, again.text
        assert again.headers["x-cache"] == "hit", f"picture {index} of {posted}"
