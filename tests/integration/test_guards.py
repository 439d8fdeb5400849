"""API keys, CORS, the request deadline and the upload's idle timeout, on a deployment
configured for them."""

from __future__ import annotations

import io
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from tests.support.pictures import synthetic_jpeg
from tests.support.serve import (
    STYLE_A,
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
UPLOAD_IDLE_S = 1.0


@pytest.fixture(scope="module")
def guarded(default_app):
    """Keys required, one CORS origin, a short deadline and upload idle timeout, and
    batches that wait 3 s."""
    args = app_args(request_timeout_s=DEADLINE_S, cors_origins=[ORIGIN])
    args["limits"] = {**args["limits"], "upload_idle_timeout_s": UPLOAD_IDLE_S}
    deploy(
        args,
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


# What a browser client of the API sends and must be able to read.
BROWSER_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "Range",
    "Idempotency-Key",
    "Prefer",
]
BROWSER_RESPONSE_HEADERS = [
    "X-Cache",
    "X-Style",
    "X-Weights",
    "X-Request-ID",
    "ETag",
    "Location",
    "Retry-After",
    "Content-Range",
    "Accept-Ranges",
    "Content-Length",
    "Preference-Applied",
]


def listed(header: str) -> set[str]:
    return {name.strip().lower() for name in header.split(",")}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/result"),
        ("POST", "/v1/jobs"),
        ("DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef"),
    ],
)
def test_cors_preflight_allows_the_apis_methods_and_headers(guarded, method, path):
    response = guarded.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ", ".join(BROWSER_REQUEST_HEADERS),
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert {"get", "post", "delete"} <= listed(response.headers["access-control-allow-methods"])
    allowed = listed(response.headers["access-control-allow-headers"])
    assert {name.lower() for name in BROWSER_REQUEST_HEADERS} <= allowed


def test_cors_exposes_the_headers_a_browser_client_reads(guarded):
    response = guarded.get("/v1/styles", headers={"Origin": ORIGIN, **bearer("key-one")})
    assert response.status_code == 200
    exposed = listed(response.headers["access-control-expose-headers"])
    assert {name.lower() for name in BROWSER_RESPONSE_HEADERS} <= exposed
    refused = guarded.get("/v1/styles", headers={"Origin": ORIGIN})  # a 401 is readable too
    assert refused.status_code == 401
    assert "retry-after" in listed(refused.headers["access-control-expose-headers"])


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
    # Another picture, straight to the model (no deadline): it runs after its own batch
    # wait, in a batch with the first one had that not been cancelled (or after it ran).
    pixels = np.asarray(Image.open(io.BytesIO(synthetic_jpeg(96, 72, seed=4243))).convert("RGB"))
    stylizer.stylize.remote(pixels, STYLE_A).result(timeout_s=60)
    assert stylizer.stats.remote().result()["images"] == before + 1


def test_a_stalled_upload_is_answered_408_through_serve_s_proxy(guarded):
    """Headers and part of the body, then nothing: the replica stops waiting after the idle
    timeout and the client, still connected, reads a 408 in the API's JSON (it waited
    for ever: each such client held one of the ingress's requests)."""
    url = urlsplit(str(guarded.base_url))
    data = synthetic_jpeg(seed=4244)
    head = (
        f"POST /v1/stylize HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: image/jpeg\r\n"
        f"Authorization: Bearer key-one\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(head + data[:1000])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408", answer[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "upload_stalled" and "1000 bytes" in body["error"]["message"]
    assert elapsed < UPLOAD_IDLE_S + 10


def test_default_deploy_has_no_cors_and_no_key(base_url, guarded):
    # Checked on the guarded module's neighbour: the defaults (AppConfig) are off.
    from serve_app.config import AppConfig

    config = AppConfig.model_validate(app_args())
    assert config.cors_origins == []
    assert config.api_key_env == "ANIMEGAN_API_KEYS"
