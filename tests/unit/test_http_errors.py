"""The one JSON error shape for the framework's own errors, without Ray."""

from __future__ import annotations

import warnings

from fastapi import FastAPI

from serve_app.http.app import create_app
from serve_app.http.errors import install_error_handlers
from tests.support.fakes import small_service

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    async def read(thing_id: str) -> dict:
        return {"id": thing_id}

    @app.delete("/things/{thing_id}")
    async def delete(thing_id: str) -> dict:
        return {"deleted": thing_id}

    @app.post("/other")
    async def other() -> dict:
        return {}

    return app


def test_405_names_every_method_of_the_path_in_json():
    response = TestClient(make_app()).put("/things/1")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "DELETE, GET"


def test_404_and_validation_errors_are_json():
    client = TestClient(make_app())
    missing = client.get("/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.post("/other").status_code == 200


def test_a_bug_s_500_is_json_a_browser_can_read_and_is_logged(tmp_path, monkeypatch, caplog):
    origin = "https://a.test"
    service = small_service(str(tmp_path), cors_origins=[origin])

    async def broken_stats():
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "stats", broken_stats)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        answer = client.get("/v1/stats", headers={"Origin": origin, "X-Request-ID": "r-1"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["access-control-allow-origin"] == origin
    assert "X-Request-ID" in answer.headers["access-control-expose-headers"]
    logged = [record for record in caplog.records if record.getMessage() == "unexpected error"]
    assert logged and "a bug" in str(logged[0].exc_info[1])
    [line] = [r for r in caplog.records if getattr(r, "ray_serve_extra_fields", None)]
    assert line.ray_serve_extra_fields["status"] == 500
    assert line.ray_serve_extra_fields["request_id"] == "r-1"
