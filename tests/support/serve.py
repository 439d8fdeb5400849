"""The test application on a real local Ray: its config, deploying it, waiting for it,
and killing its replicas."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from serve_app.config import AppConfig
from tests.support.paths import REPO

STYLE_A = "alpha"  # random weights, face-model upsampling
STYLE_B = "beta"  # random weights, paprika upsampling
TEST_SIZE = 96  # small pictures keep inference cheap on a 2-core machine
# Every test deployment runs one runtime, chosen by name, not by timing (`auto`): results
# of replicas that timed differently on a CPU with bf16 would be cached under other keys.
# Tests of the runtime choice itself deploy `auto` explicitly.
TEST_RUNTIME = "eager-fp32"


def shipped_logging_config() -> dict:
    """serve_config.yaml's `logging_config` (one JSON object per log line)."""
    shipped = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    return shipped["applications"][0]["logging_config"]


# Ports Ray's own components take by default when a session starts (the dashboard agent's
# HTTP server, the dashboard, the GCS, the client server): a port free now but one of these
# made ray.init fail ("trying to use a port number 52365 that is used by other components").
RAY_DEFAULT_PORTS = frozenset({52365, 8265, 6379, 10001})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, and none Ray takes itself."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


# This session's job store (never the user's own ~/.cache one).
JOBS_STORE = os.path.join(tempfile.gettempdir(), f"animegan-test-jobs-{os.getpid()}")


def app_args(**overrides) -> dict:
    """The `args:` block of the test application (random weights, small pictures)."""
    args = {
        "styles": [
            {"name": STYLE_A, "weights": "random"},
            {"name": STYLE_B, "weights": "random", "align_corners": False},
        ],
        "runtime": TEST_RUNTIME,
        "default_size": TEST_SIZE,
        "limits": {"max_size": 256, "max_bytes": 2 * 2**20, "max_pixels": 4_000_000},
        "max_batch_images": 4,
        "request_timeout_s": 60,
        "cache": {"name": f"test-cache-{os.getpid()}", "local_max_bytes": 0},
        "jobs": {"store_url": JOBS_STORE},
    }
    args.update(overrides)
    return args


def make_config(**overrides) -> AppConfig:
    return AppConfig.model_validate(app_args(**overrides))


def stylizer_deployment(**overrides) -> dict:
    return {
        "name": "Stylizer",
        "num_replicas": 1,
        "max_ongoing_requests": 16,
        "max_queued_requests": 64,
        "ray_actor_options": {"num_cpus": 1},
        "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.25},
        **overrides,
    }


def ingress_deployment(**overrides) -> dict:
    return {"name": "Ingress", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, **overrides}


def keyed_ingress(keys: list[str], env: dict[str, str] | None = None) -> dict:
    """The ingress of a service with API keys (``ANIMEGAN_API_KEYS``; ``env``: more
    variables for its replicas)."""
    env_vars = {"ANIMEGAN_API_KEYS": ",".join(keys), **(env or {})}
    return ingress_deployment(
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env_vars}}
    )


def deploy(
    args: dict | None = None,
    stylizer: dict | None = None,
    ingress: dict | None = None,
    blocking: bool = True,
):
    """Deploy as `serve run`/`serve deploy` do with a config file, so that a changed
    `user_config` is applied in place (reconfigure) rather than by new replicas;
    ``blocking``: return once the app runs (else at once)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    application = {
        "name": "animegan",
        "route_prefix": "/",
        "import_path": "serve_app.app:build_app",
        "logging_config": shipped_logging_config(),
        "args": args or app_args(),
        "deployments": [
            stylizer or stylizer_deployment(),
            ingress or ingress_deployment(),
        ],
    }
    schema = ServeDeploySchema.model_validate({"applications": [application]})
    _get_global_client().deploy_apps(schema, _blocking=blocking)


@contextlib.contextmanager
def deployed_with_keys(base_url: str, keys: list[str]) -> Iterator[str]:
    """The application with API keys, until the block ends; then the open default one."""
    deploy(ingress=keyed_ingress(keys))
    try:
        wait_healthy(base_url)
        wait_styles_status(base_url, 401)
        yield base_url
    finally:
        deploy()
        wait_healthy(base_url)
        wait_styles_status(base_url, 200)


def wait_styles_status(base_url: str, status: int, timeout_s: float = 60) -> None:
    """Until ``/v1/styles`` answers ``status`` (a redeployment has taken effect)."""
    deadline = time.monotonic() + timeout_s
    while (answer := httpx.get(f"{base_url}/v1/styles", timeout=30)).status_code != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"/v1/styles still answers {answer.status_code}")
        time.sleep(0.2)


def wait_healthy(base_url: str, timeout_s: float = 60) -> None:
    """Until the ingress answers (`/healthz`: the process lives)."""
    wait_ok(f"{base_url}/healthz", timeout_s)


def wait_ready(base_url: str, timeout_s: float = 120) -> None:
    """Until the app can serve (`/readyz`: a model replica answered, the examples warm)."""
    wait_ok(f"{base_url}/readyz", timeout_s)


def wait_ok(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


def replica_names(deployment: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::animegan#{deployment}#"
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in actors if a["name"].startswith(prefix))


def kill_replica(deployment: str, unique_id: str | None = None) -> str:
    """Kill one replica for good (Serve must start a new one); return its unique id."""
    import ray

    names = replica_names(deployment)
    name = next(n for n in names if unique_id is None or n.endswith(f"#{unique_id}"))
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name.rsplit("#", 1)[1]


def stylizer_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("Stylizer", "animegan").stats.remote().result()


def running_replicas(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications["animegan"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def ingress_log_lines(request_id: str) -> list[dict]:
    """Every line of the Ingress replicas' JSON logs (this Ray's) that names
    ``request_id``."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [
        json.loads(line)
        for path in logs.glob("replica_animegan_Ingress_*.log")
        for line in path.read_text(errors="replace").splitlines()
        if request_id in line
    ]


def wait_request_line(request_id: str, timeout_s: float = 20) -> list[dict]:
    """The Ingress's log lines of a request, once its request line (the one with a
    ``status``) is written."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = ingress_log_lines(request_id)
        if any("status" in line for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no request line for {request_id}"
        time.sleep(0.5)
