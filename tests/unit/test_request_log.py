"""The request middleware: every HTTP request and WebSocket session counted under its
route's template and status, and one log line with the request's fields."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.http import request_log


class Counter:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    def inc(self, tags: dict) -> None:
        self.seen.append(tags)

    def observe(self, value: float, tags: dict) -> None:
        assert value >= 0 and set(tags) == {"route"}


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter()
        self.request_ms = Counter()


async def item(request):
    request_log.log_fields(request.scope).update(style="alpha")
    return JSONResponse({"id": request.path_params["item_id"]})


async def events(websocket: WebSocket):
    await websocket.accept()
    await websocket.close(4404, "no such job")


async def refused(websocket: WebSocket):
    await websocket.close(1008)  # before the accept: the server answers 403


@pytest.fixture
def metrics(monkeypatch) -> Metrics:
    fake = Metrics()
    monkeypatch.setattr(request_log, "ingress_metrics", lambda: fake)
    return fake


@pytest.fixture
def client() -> TestClient:
    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/healthz", lambda request: JSONResponse({"status": "ok"})),
            WebSocketRoute("/items/{item_id}/events", events),
            WebSocketRoute("/refused", refused),
        ]
    )
    app.add_middleware(request_log.RequestContextMiddleware)
    return TestClient(app)


def test_http_requests_are_counted_by_route_template_and_logged_with_their_fields(
    client, metrics, caplog
):
    caplog.set_level(logging.INFO, logger=request_log.logger.name)
    assert client.get("/items/7", headers={"X-Request-ID": "r-1"}).status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert metrics.requests.seen == [
        {"route": "/items/{item_id}", "status": "200"},
        {"route": "other", "status": "404"},
        {"route": "/healthz", "status": "200"},
    ]
    lines = [r for r in caplog.records if r.name == request_log.logger.name]
    assert len(lines) == 2  # probes are counted, not logged
    fields = lines[0].ray_serve_extra_fields
    assert fields["request_id"] == "r-1" and fields["style"] == "alpha"
    assert (fields["method"], fields["route"], fields["status"]) == ("GET", "/items/{item_id}", 200)
    assert lines[0].getMessage().startswith("GET /items/{item_id} 200 ")


def test_websocket_sessions_are_counted_with_their_handshake_status(client, metrics, caplog):
    caplog.set_level(logging.INFO, logger=request_log.logger.name)
    with client.websocket_connect("/items/7/events") as socket, pytest.raises(WebSocketDisconnect):
        socket.receive_text()
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/refused"):
        pass
    assert metrics.requests.seen == [
        {"route": "/items/{item_id}/events", "status": "101"},
        {"route": "/refused", "status": "403"},
    ]
    first = next(r for r in caplog.records if r.name == request_log.logger.name)
    assert first.ray_serve_extra_fields["close_code"] == 4404
    assert first.ray_serve_extra_fields["method"] == "WEBSOCKET"
