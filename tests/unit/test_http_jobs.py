"""The jobs routes' own work: ``Prefer: wait`` (RFC 7240), and an events WebSocket that
lets go of its job when its client leaves."""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest

from serve_app.http.app import create_app
from serve_app.http.jobs import _prefer_wait_s
from tests.support.fakes import HeldModel, small_service
from tests.support.pictures import synthetic_jpeg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient

MOST_S = 60.0


@pytest.mark.parametrize(
    ("prefer", "wait_s"),
    [
        (None, 0.0),
        ("wait=5", 5.0),
        ("respond-async, wait=10", 10.0),
        ("WAIT = 7; x=1", 7.0),
        ('wait="5"', 5.0),  # a quoted-string value
        ("wait=0", 0.0),
        ("wait=600", MOST_S),  # capped
        ("wait=4294967296", MOST_S),  # any number, however long, is capped
        ("wait=" + "9" * 4000, MOST_S),
        ("wait=abc", 0.0),
        ("wait=5s", 0.0),
        ("nowait=5", 0.0),
        ("wait=-5", 0.0),
    ],
)
def test_prefer_wait_is_read_and_capped(prefer, wait_s):
    assert _prefer_wait_s(prefer, MOST_S) == wait_s


def test_an_events_socket_whose_client_left_lets_go_of_its_job(tmp_path):
    """The job does not change while the client is gone (its picture is held at the
    model). As behind Serve's proxy, the handler is told of the departure only by a
    message to read, never cancelled: it must still end, and its follower with it (it
    waited for the job's next change, holding one of the ingress's requests)."""
    model = HeldModel(["alpha"])
    service = small_service(str(tmp_path), model=model)
    with TestClient(create_app(service)) as client:
        made = client.post(
            "/v1/jobs", content=synthetic_jpeg(64, 48), headers={"Content-Type": "image/jpeg"}
        )
        assert made.status_code == 202, made.text
        path = f"/v1/jobs/{made.json()['id']}/events"

        async def session() -> tuple[list[dict], bool, int]:
            sent: list[dict] = []
            first_event, gone = asyncio.Event(), asyncio.Event()
            messages = [{"type": "websocket.connect"}]

            async def receive() -> dict:
                if messages:
                    return messages.pop()
                await gone.wait()
                return {"type": "websocket.disconnect", "code": 1001}

            async def send(message: dict) -> None:
                sent.append(message)
                if message["type"] == "websocket.send":
                    first_event.set()

            scope = {
                "type": "websocket",
                "asgi": {"version": "3.0"},
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"testserver")],
                "client": ("127.0.0.1", 50000),
                "server": ("testserver", 80),
                "subprotocols": [],
            }
            handler = asyncio.ensure_future(client.app(scope, receive, send))
            await asyncio.wait_for(first_event.wait(), 10)
            following = service.jobs.figures()["followers"]
            gone.set()  # the client leaves
            done, _ = await asyncio.wait({handler}, timeout=5)  # keep-alive: every 15 s
            handler.cancel()
            return sent, bool(done), following

        sent, ended, following = client.portal.call(session)
        followers = service.jobs.figures()["followers"]
        client.portal.call(model.release.set)
    assert following == 1 and json.loads(sent[1]["text"])["event"] in ("queued", "running")
    assert ended and followers == 0
