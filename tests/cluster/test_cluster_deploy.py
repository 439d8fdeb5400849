"""Cluster deploys: scripts/cluster_deploy.sh against a `ray start` head, then live changes
of the batch size (`user_config`) and of the autoscaling bounds with `serve deploy` while a
client keeps sending: no request fails, no replica restarts for them."""

from __future__ import annotations

import copy
import subprocess

import httpx
import pytest

from tests.support.paths import REPO
from tests.support.ray_cluster import Load, serve_config, wait_for, write_config
from tests.support.serve import TEST_RUNTIME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "cluster_deploy.sh"


def run_script(cluster, config) -> str:
    """The script as a user runs it against an existing head (START_HEAD=0)."""
    env = {
        **cluster.cli_env(),
        "START_HEAD": "0",
        "RAY_DASHBOARD_ADDRESS": cluster.dashboard_url,
        "WAIT_S": "180",
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), str(config)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def model_figures(client: httpx.Client) -> dict:
    return client.get("/v1/stats").json()["model"]


def test_script_deploys_and_live_changes_drop_no_request(app_cluster, pictures, tmp_path):
    cluster = app_cluster
    stylizer = {
        "max_ongoing_requests": 16,  # >= every max_batch_size below
        "max_queued_requests": 256,
        "ray_actor_options": {"num_cpus": 1},
        "user_config": {"max_batch_size": 2, "batch_wait_timeout_s": 0.01},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "upscale_delay_s": 1},
    }
    args = {
        "styles": [{"name": "alpha", "weights": "random"}],
        "runtime": TEST_RUNTIME,  # one runtime on any CPU: the same cache keys
        "default_size": 64,
        "limits": {"max_size": 256},
        "request_timeout_s": 60,
        "cache": {"name": "cluster-deploy", "local_max_bytes": 0, "timeout_s": 2.0},
    }
    config = serve_config(cluster.serve_port, args, stylizer)

    out = run_script(cluster, write_config(tmp_path / "v1.yaml", config))
    assert "RUNNING" in out and "animegan" in out
    status = cluster.serve_status()  # the CLI, as the script uses it
    assert status["applications"]["animegan"]["status"] == "RUNNING"
    [original] = [r["replica_id"] for r in cluster.replicas("Stylizer")]

    client = httpx.Client(base_url=cluster.base_url, timeout=90)
    with Load(cluster.base_url, pictures, concurrency=2) as load:
        wait_for(lambda: load.count() >= 5, 60, "the first requests")
        assert model_figures(client)["max_batch_size"] == 2

        # 1. user_config: applied in place by reconfigure().
        bigger_batches = copy.deepcopy(config)
        bigger_batches["applications"][0]["deployments"][1]["user_config"]["max_batch_size"] = 8
        run_script(cluster, write_config(tmp_path / "v2.yaml", bigger_batches))
        wait_for(
            lambda: model_figures(client)["max_batch_size"] == 8, 60, "max_batch_size 8 in use"
        )

        # 2. autoscaling bounds: the controller adds a replica, the first one stays.
        two_replicas = copy.deepcopy(bigger_batches)
        two_replicas["applications"][0]["deployments"][1]["autoscaling_config"].update(
            min_replicas=2, max_replicas=2
        )
        run_script(cluster, write_config(tmp_path / "v3.yaml", two_replicas))
        wait_for(lambda: len(cluster.replicas("Stylizer")) == 2, 90, "2 Stylizer replicas")
        seen = load.count()
        wait_for(lambda: load.count() >= seen + 5, 60, "requests after the changes")

    status = cluster.serve_status()["applications"]["animegan"]
    stylizer_status = status["deployments"]["Stylizer"]
    replicas = {r["replica_id"] for r in cluster.replicas("Stylizer")}
    figures = model_figures(client)
    client.close()
    print(f"{load.count()} requests, {len(load.failures())} failed; stylizer {stylizer_status}")
    assert load.failures() == [], load.failures()[:5]
    assert status["status"] == "RUNNING"
    assert stylizer_status["replica_states"] == {"RUNNING": 2}
    assert original in replicas, "a live change restarted the original replica"
    assert figures["max_batch_size"] == 8


def test_dashboard_requires_the_clusters_token(cluster):
    """Token authentication is on for `ray start` clusters: no token or a wrong one is
    refused, the cluster's own is accepted (the `serve` CLI sends it, see
    tests/support/ray_cluster.py)."""
    url = f"{cluster.dashboard_url}/api/serve/applications/"
    assert httpx.get(url, timeout=30).status_code == 401
    wrong = {"Authorization": f"Bearer {'0' * 64}"}
    assert httpx.get(url, headers=wrong, timeout=30).status_code in (401, 403)
    assert httpx.get(url, headers=cluster.auth_headers(), timeout=30).status_code == 200
