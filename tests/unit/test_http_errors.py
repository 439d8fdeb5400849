"""The one JSON error shape for the framework's own errors, without Ray."""

from __future__ import annotations

import warnings

from fastapi import FastAPI

from serve_app.http.errors import install_error_handlers

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
