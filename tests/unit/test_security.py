"""API keys: parsing, constant-time checks, their place in the OpenAPI document; CORS stays
off unless configured, and then covers every method and header of the routes; the origins
that may open a WebSocket."""

import warnings
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from serve_app.http import jobs, meta, stylize
from serve_app.http.openapi import _declare_api_key
from serve_app.http.params import API_CHECKS
from serve_app.http.security import enable_cors, key_is_valid, load_api_keys, origin_allowed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient

ORIGIN = "https://a.test"


def api_app(*extra: APIRouter) -> FastAPI:
    """The service's routers (and ``extra``), as create_app includes them."""
    app = FastAPI()
    for router in (stylize.router, jobs.router, meta.router, *extra):
        app.include_router(router)
    return app


def cors_options(app: FastAPI) -> dict:
    [cors] = [m for m in app.user_middleware if issubclass(m.cls, CORSMiddleware)]
    return cors.kwargs


def lower(names: list[str]) -> set[str]:
    return {name.lower() for name in names}


def test_keys_come_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("MY_KEYS", " one, two ,,")
    assert load_api_keys("MY_KEYS") == (b"one", b"two")
    monkeypatch.delenv("MY_KEYS")
    assert load_api_keys("MY_KEYS") == ()
    assert load_api_keys(None) == ()


def test_key_checks():
    keys = (b"one", b"two")
    assert key_is_valid("Bearer one", keys) and key_is_valid("bearer two", keys)
    for header in (None, "", "one", "Bearer", "Bearer three", "Basic one", "Bearer one1"):
        assert not key_is_valid(header, keys)


def test_a_websocket_opens_from_no_page_its_own_host_s_pages_or_the_cors_origins():
    assert origin_allowed(None, "anime.test", [])  # not a browser
    assert origin_allowed("http://anime.test:8000", "anime.test:8000", [])
    assert origin_allowed("https://anime.test", "anime.test", [])
    assert origin_allowed("https://Anime.Test", "anime.test", [])  # host names' case
    # A reverse proxy may pass the host without its port (nginx's $host).
    assert origin_allowed("http://anime.test:8080", "anime.test", [])
    assert origin_allowed(ORIGIN, "anime.test", [ORIGIN])
    assert origin_allowed("https://any.test", "anime.test", ["*"])


def test_a_websocket_from_another_site_s_page_is_refused():
    assert not origin_allowed("https://evil.test", "anime.test", [])
    assert not origin_allowed("https://evil.test", "anime.test", [ORIGIN])
    assert not origin_allowed("https://anime.test.evil.test", "anime.test", [])
    assert not origin_allowed("null", "anime.test", [])  # a sandboxed frame, a file
    assert not origin_allowed("https://anime.test", None, [])  # no Host to compare
    assert not origin_allowed("http://[::1", "anime.test", [])  # malformed


def test_cors_is_added_only_with_origins():
    app = FastAPI()
    enable_cors(app, [])
    assert not any(issubclass(m.cls, CORSMiddleware) for m in app.user_middleware)
    enable_cors(app, ["https://a.test"])
    assert any(issubclass(m.cls, CORSMiddleware) for m in app.user_middleware)


def test_cors_allows_every_method_and_header_a_browser_client_sends():
    app = api_app()
    enable_cors(app, [ORIGIN])
    options = cors_options(app)
    assert options["allow_origins"] == [ORIGIN]
    assert {"GET", "POST", "DELETE", "OPTIONS"} <= set(options["allow_methods"])
    wanted = {"authorization", "content-type", "x-request-id", "range", "idempotency-key"}
    assert wanted | {"prefer"} <= lower(options["allow_headers"])


def test_cors_exposes_every_header_a_browser_client_reads():
    app = api_app()
    enable_cors(app, [ORIGIN])
    exposed = lower(cors_options(app)["expose_headers"])
    picture = {"x-cache", "x-style", "x-weights", "x-request-id", "etag"}
    jobs_and_ranges = {"location", "retry-after", "content-range", "accept-ranges"}
    assert picture | jobs_and_ranges | {"content-length", "preference-applied"} <= exposed
    assert len(exposed) == len(cors_options(app)["expose_headers"])  # no repeats


def test_a_refused_preflight_is_the_api_s_json_error():
    app = api_app()
    enable_cors(app, [ORIGIN])
    client = TestClient(app)
    asked = {"Access-Control-Request-Method": "POST"}
    allowed = client.options("/v1/stylize", headers={"Origin": ORIGIN, **asked})
    assert allowed.status_code == 200
    for refused_origin, request_headers, refused in (
        ("https://evil.test", {}, "origin"),
        (ORIGIN, {"Access-Control-Request-Headers": "X-Not-Taken"}, "headers"),
    ):
        headers = {"Origin": refused_origin, **asked, **request_headers}
        answer = client.options("/v1/stylize", headers=headers)
        assert answer.status_code == 400
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert error["code"] == "cors_refused" and error["message"].endswith(refused)
        assert "POST" in answer.headers["access-control-allow-methods"]


def test_cors_follows_the_routes_a_later_change_adds():
    extra = APIRouter()

    @extra.put(
        "/v1/things/{name}",
        dependencies=API_CHECKS,
        responses={200: {"headers": {"X-Thing-Version": {"schema": {"type": "string"}}}}},
    )
    async def put_thing(name: str, if_match: Annotated[str | None, Header()] = None) -> None:
        return None

    app = api_app(extra)
    enable_cors(app, [ORIGIN])
    options = cors_options(app)
    assert "PUT" in options["allow_methods"]
    assert "if-match" in lower(options["allow_headers"])
    assert "x-thing-version" in lower(options["expose_headers"])


def security_by_operation(api_keys: tuple[bytes, ...]) -> tuple[dict, dict]:
    app = api_app()
    app.state.api_keys = api_keys
    schema = get_openapi(title="t", version="1", routes=app.routes)
    _declare_api_key(schema, app)
    operations = {
        f"{method.upper()} {path}": operation.get("security")
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    return schema["components"]["securitySchemes"], operations


def test_openapi_declares_the_bearer_key_on_the_routes_that_check_it():
    schemes, operations = security_by_operation((b"one",))
    assert list(schemes) == ["bearerAuth"]
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    public = {"GET /healthz", "GET /readyz", "GET /examples/{name}"}
    for operation, security in operations.items():
        expected = None if operation in public else [{"bearerAuth": []}]
        assert security == expected, operation
    assert {"POST /v1/jobs", "DELETE /v1/jobs/{job_id}", "GET /v1/styles"} <= set(operations)


def test_openapi_makes_the_key_optional_on_an_open_service():
    _, operations = security_by_operation(())
    assert operations["POST /v1/stylize"] == [{"bearerAuth": []}, {}]
    assert operations["GET /healthz"] is None
