"""Uploads as clients misbehave, through the whole app at the ASGI level (the receive
channel scripted as Serve's proxy would feed it): a stalled upload is ended with 408, a
multipart body cut before its closing boundary is a 400, and a client that hangs up is
logged and counted as 499, not as the server's 500."""

from __future__ import annotations

import asyncio
import logging
import warnings

import pytest

from serve_app.http import request_log
from serve_app.http.app import create_app
from tests.support.fakes import small_service
from tests.support.pictures import synthetic_jpeg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient

IDLE_S = 0.3
BOUNDARY = "b0undary"


class Requests:
    """Stands in for the ingress's request metrics: the statuses counted."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.requests, self.request_ms = self, self

    def inc(self, tags: dict) -> None:
        self.statuses.append(tags["status"])

    def observe(self, value: float, tags: dict) -> None:
        pass


@pytest.fixture
def counted(monkeypatch) -> Requests:
    fake = Requests()
    monkeypatch.setattr(request_log, "ingress_metrics", lambda: fake)
    return fake


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    service = small_service(
        str(tmp_path_factory.mktemp("jobs")), limits={"upload_idle_timeout_s": IDLE_S}
    )
    with TestClient(create_app(service)) as client:
        yield client


def multipart(data: bytes, closed: bool = True) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + (f"\r\n--{BOUNDARY}--\r\n".encode() if closed else b"")


def call(client, path: str, media_type: str, chunks: list[bytes], then: str) -> list[dict]:
    """POST ``chunks`` to the app, then (``then``) end the body, stall for ever, fail the
    way Serve's receive does once the proxy cancelled its side, or cancel the request as
    Serve does when its client hangs up. The messages the app sent."""
    sent: list[dict] = []
    left = list(chunks)

    async def receive() -> dict:
        if left:
            body = left.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(left) or then != "end"}
        if then == "fail":
            raise RuntimeError("Task was cancelled.")  # Ray's TaskCancelledError, say
        await asyncio.sleep(3600)
        raise AssertionError("never answered")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", media_type.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def run() -> None:
        app = client.app(scope, receive, send)
        if then != "cancel":
            await asyncio.wait_for(app, 10)  # an app that never answers fails the test
            return
        task = asyncio.ensure_future(app)
        await asyncio.sleep(0.2)  # the request waits for the rest of its upload
        task.cancel()
        await asyncio.wait([task])

    client.portal.call(run)
    return sent


def answer(sent: list[dict]) -> tuple[int, bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


@pytest.mark.parametrize(
    ("path", "media_type", "wrap"),
    [
        ("/v1/stylize", "image/jpeg", lambda data: data),
        ("/v1/stylize", f"multipart/form-data; boundary={BOUNDARY}", multipart),
        ("/v1/jobs", "image/jpeg", lambda data: data),
    ],
)
def test_a_stalled_upload_is_ended_with_408(client, counted, path, media_type, wrap):
    body = wrap(synthetic_jpeg(64, 48))
    status, text = answer(call(client, path, media_type, [body[:100]], then="stall"))
    assert status == 408 and b'"upload_stalled"' in text and b"100 bytes" in text
    assert counted.statuses == ["408"]


def test_a_multipart_body_cut_before_its_closing_boundary_is_a_400(client):
    data = synthetic_jpeg(64, 48)
    cut = multipart(data, closed=False)
    media_type = f"multipart/form-data; boundary={BOUNDARY}"
    response = client.post("/v1/stylize", content=cut, headers={"content-type": media_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_multipart"
    whole = client.post(
        "/v1/stylize", content=multipart(data), headers={"content-type": media_type}
    )
    assert whole.status_code == 200


@pytest.mark.parametrize("then", ["fail", "cancel"])
def test_a_client_that_hangs_up_is_counted_as_499_not_as_an_error(client, counted, caplog, then):
    """Serve's receive fails once the proxy cancelled its side, or Serve cancels the request
    itself. Neither is the server's error."""
    caplog.set_level(logging.INFO)
    data = synthetic_jpeg(64, 48)
    chunks = [data[:100]] if then == "fail" else [data]
    sent = call(client, "/v1/stylize", "image/jpeg", chunks, then=then)
    assert counted.statuses == ["499"], sent
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    line = next(r for r in caplog.records if r.name == request_log.logger.name)
    assert line.ray_serve_extra_fields["status"] == 499
