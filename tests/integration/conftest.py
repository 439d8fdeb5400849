"""One real local Ray instance and one Serve application for the whole test session
(the helpers that deploy and wait: tests/support/serve.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.pages import CHROMIUM_ARGS
from tests.support.serve import JOBS_STORE, deploy, free_port, wait_healthy


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Ray's Prometheus endpoint for this session."""
    return free_port()


@pytest.fixture(scope="session")
def metrics_url(ray_serve, metrics_port) -> str:
    return f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.fixture(scope="session")
def ray_serve(metrics_port):
    """A fresh local Ray (never a recorded cluster) with Serve's proxy on a free port."""
    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
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


# Whether the default application is what runs now. A module that deploys its own leaves
# its app running; the next test that needs the default puts it back, so two such modules
# in a row cost no deploy of the default between them.
_running = {"default": True}


@pytest.fixture(scope="module")
def default_app(base_url):
    """For modules that deploy their own application: the default is put back before the
    next test that needs it (`default_deployed`), not at once."""
    yield base_url
    _running["default"] = False


@pytest.fixture(scope="module", autouse=True)
def default_deployed(request):
    """A module on the session's app (its tests take ``base_url``, none ``default_app``)
    finds the default application running, before its own fixtures start."""
    tests = [item for item in request.session.items if item.module is request.module]
    if any("default_app" in item.fixturenames for item in tests):
        return
    if any("base_url" in item.fixturenames for item in tests) and not _running["default"]:
        base_url = request.getfixturevalue("base_url")
        deploy()
        wait_healthy(base_url)
        _running["default"] = True


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def browser():
    """The system Chromium, headless, driven by Playwright (which never downloads one)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("the system Chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
