"""One real local Ray instance and one Serve application for the whole test session."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

import httpx
import pytest

from serve_app.config import AppConfig

STYLE_A = "alpha"  # random weights, face-model upsampling
STYLE_B = "beta"  # random weights, paprika upsampling
TEST_SIZE = 96  # small pictures keep inference cheap on a 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


METRICS_PORT = free_port()  # Ray's Prometheus endpoint for this session
METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}/metrics"
# This session's job store (never the user's own ~/.cache one).
JOBS_STORE = os.path.join(tempfile.gettempdir(), f"animegan-test-jobs-{os.getpid()}")


def app_args(**overrides) -> dict:
    """The `args:` block of the test application (random weights, small pictures)."""
    args = {
        "styles": [
            {"name": STYLE_A, "weights": "random"},
            {"name": STYLE_B, "weights": "random", "align_corners": False},
        ],
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


def deploy(args: dict | None = None, stylizer: dict | None = None, ingress: dict | None = None):
    """Deploy as `serve run`/`serve deploy` do with a config file, so that a changed
    `user_config` is applied in place (reconfigure) rather than by new replicas."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    application = {
        "name": "animegan",
        "route_prefix": "/",
        "import_path": "serve_app.app:build_app",
        "args": args or app_args(),
        "deployments": [
            stylizer or stylizer_deployment(),
            ingress or ingress_deployment(),
        ],
    }
    schema = ServeDeploySchema.model_validate({"applications": [application]})
    _get_global_client().deploy_apps(schema, _blocking=True)


def wait_healthy(base_url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url}/healthz did not answer 200 within {timeout_s} s")


@pytest.fixture(scope="session")
def ray_serve():
    """A fresh local Ray (never a recorded cluster) with Serve's proxy on a free port."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        _system_config={"metrics_report_interval_ms": 1000},  # scrape tests wait less
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(JOBS_STORE, ignore_errors=True)


@pytest.fixture(scope="session")
def base_url(ray_serve) -> str:
    deploy()
    wait_healthy(ray_serve)
    return ray_serve


@pytest.fixture(scope="module")
def default_app(base_url):
    """For modules that redeploy: put the default application back afterwards."""
    yield base_url
    deploy()
    wait_healthy(base_url)


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http
