"""HTTP as clients misbehave and as event streams read: raw-socket hang-ups, SSE."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx


def post_then_hang_up(
    base_url: str,
    data: bytes,
    after_s: float,
    path: str = "/v1/stylize",
    media_type: str = "image/jpeg",
    sent: int | None = None,
    headers: dict[str, str] | None = None,
    until: Callable[[], bool] | None = None,
) -> None:
    """Send an upload (its first ``sent`` bytes only, when given) over a raw socket, then
    close it ``after_s`` later, or (``until``) once that says so, at most ``after_s``
    later, without reading the answer."""
    url = urlsplit(base_url)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {media_type}\r\n"
        f"{extra}Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + data[:sent])
        deadline = time.monotonic() + after_s
        while time.monotonic() < deadline and not (until and until()):
            time.sleep(0.05 if until else deadline - time.monotonic())


def sse_states(base_url: str, path: str) -> list[dict]:
    """The JSON bodies of a server-sent event stream, read to its end; each event's name
    must be the ``state`` of its body."""
    events = []
    with httpx.stream("GET", f"{base_url}{path}", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                body = json.loads(line.removeprefix("data: "))
                assert body["state"] == name
                events.append(body)
    return events
