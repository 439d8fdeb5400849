"""A scripted service for client tests (httpx.MockTransport): each route answers what a
test scripted, in the wire shapes of ``jobs/records.py``; it records what was sent and
what the client slept."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx

from serve_app.client import AsyncClient, Client
from serve_app.jobs.records import JobView

URL = "http://jobs.test:8123"
KEY = "sekrit-key-123"
JOB_ID = "0123456789abcdef0123456789abcdef"
PICTURE = b"\x89PNG\r\n\x1a\n not really a picture, the service is scripted"

Answer = Callable[[httpx.Request], httpx.Response]


def job(state: str = "queued", job_id: str = JOB_ID, **fields) -> dict:
    """A job as the service sends it (``JobView``'s wire shape)."""
    view = JobView(
        id=job_id,
        state=state,
        options={"style": "alpha", "size": 64},
        created_at=1_700_000_000.0,
        elapsed_s=1.0,
        eta_s=None,
        links={"self": f"/v1/jobs/{job_id}"},
        **fields,
    )
    return view.model_dump(mode="json")


def answer(status: int = 200, body: dict | None = None, headers: dict | None = None) -> Answer:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def refusal(status: int, code: str, message: str, headers: dict | None = None) -> Answer:
    return answer(status, {"error": {"code": code, "message": message}}, headers)


def sse(*jobs: dict) -> bytes:
    """An event stream as the service writes it, a keep-alive comment between events
    (one with CRLF line endings, which the standard allows)."""
    parts = [b": keep-alive\r\n\r\n"]
    for each in jobs:
        parts.append(f"event: {each['state']}\ndata: {json.dumps(each)}\n\n".encode())
        parts.append(b": keep-alive\n\n")
    return b"".join(parts)


def events(*jobs: dict) -> Answer:
    return lambda request: httpx.Response(
        200, content=sse(*jobs), headers={"content-type": "text/event-stream"}
    )


class BreaksOff(httpx.SyncByteStream):
    """A body that stops mid-way as a dropped connection does."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


class KeepsAlive(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The event stream of a job that does not change: a keep-alive comment every 15 s of
    the scripted clock (moved on with each), up to ``most`` of them."""

    def __init__(self, service: Service, most: int = 100) -> None:
        self.service, self.most, self.sent = service, most, 0

    def _next(self) -> bytes:
        self.sent += 1
        self.service.now += 15.0
        return b": keep-alive\n\n"

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.most:
            yield self._next()

    async def __aiter__(self):
        while self.sent < self.most:
            yield self._next()


class Service:
    """A scripted service: each route answers its answers in order, the last one again."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Answer]] = {}
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.now = 0.0

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self.routes[(method, path)] = list(answers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answers = self.routes.get((request.method, request.url.path))
        if answers is None:
            return refusal(404, "not_found", "no route")(request)
        return (answers.pop(0) if len(answers) > 1 else answers[0])(request)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def client(self, url: str = URL, api_key: str | None = None, **settings) -> Client:
        return Client(
            url,
            api_key,
            transport=httpx.MockTransport(self.handle),
            sleep=self.sleep,
            clock=lambda: self.now,
            **settings,
        )

    def async_client(self, url: str = URL, api_key: str | None = None, **settings) -> AsyncClient:
        async def sleep(seconds: float) -> None:
            self.sleep(seconds)

        return AsyncClient(
            url,
            api_key,
            transport=httpx.MockTransport(self.handle),
            sleep=sleep,
            clock=lambda: self.now,
            **settings,
        )

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]
