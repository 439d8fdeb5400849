"""API keys, CORS and the request deadline, on a deployment configured for them."""

from __future__ import annotations

import time

import httpx
import pytest
from ray import serve

from tests.conftest import synthetic_jpeg
from tests.integration.conftest import (
    app_args,
    deploy,
    ingress_deployment,
    stylizer_deployment,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = "key-one,key-two"
ORIGIN = "https://photos.example.test"
DEADLINE_S = 0.5


@pytest.fixture(scope="module")
def guarded(default_app):
    """Keys required, one CORS origin, a short deadline, and batches that wait 3 s."""
    deploy(
        app_args(request_timeout_s=DEADLINE_S, cors_origins=[ORIGIN]),
        stylizer=stylizer_deployment(
            user_config={"max_batch_size": 8, "batch_wait_timeout_s": 3.0}
        ),
        ingress=ingress_deployment(
            ray_actor_options={
                "num_cpus": 0,
                "runtime_env": {"env_vars": {"ANIMEGAN_API_KEYS": KEYS}},
            }
        ),
    )
    wait_healthy(default_app)
    with httpx.Client(base_url=default_app, timeout=30) as client:
        yield client


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "key-one"}])
def test_v1_routes_need_a_key(guarded, headers):
    response = guarded.get("/v1/styles", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_each_configured_key_works(guarded, key):
    assert guarded.get("/v1/styles", headers=bearer(key)).status_code == 200


def test_health_and_page_stay_open(guarded):
    assert guarded.get("/healthz").status_code == 200


def test_cors_allows_only_the_configured_origin(guarded):
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = guarded.options("/v1/stylize", headers={"Origin": ORIGIN, **preflight})
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = guarded.options("/v1/stylize", headers={"Origin": "https://evil.test", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = guarded.get("/v1/styles", headers={"Origin": ORIGIN, **bearer("key-one")})
    assert "X-Cache" in simple.headers["access-control-expose-headers"]


def test_past_the_deadline_is_504_and_the_work_is_cancelled(guarded):
    stylizer = serve.get_deployment_handle("Stylizer", "animegan")
    before = stylizer.stats.remote().result()["images"]
    started = time.monotonic()
    response = guarded.post(
        "/v1/stylize",
        files={"image": ("a.jpg", synthetic_jpeg(seed=4242))},
        headers=bearer("key-one"),
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert elapsed < 3.0  # answered at the deadline, not when the batch would have run
    time.sleep(4.0)  # past the moment the 3 s batch wait would have run it
    assert stylizer.stats.remote().result()["images"] == before


def test_default_deploy_has_no_cors_and_no_key(base_url, guarded):
    # Checked on the guarded module's neighbour: the defaults (AppConfig) are off.
    from serve_app.config import AppConfig

    config = AppConfig.model_validate(app_args())
    assert config.cors_origins == []
    assert config.api_key_env == "ANIMEGAN_API_KEYS"
