"""The live camera from Python: ``Client.live()`` and ``AsyncClient.live()`` open a
``/v1/live`` stream (a WebSocket) and give a session to send frames and read stylized ones.

    with Client().live(style="hayao", size=256) as live:
        live.send(jpeg_bytes)
        frame = live.receive()  # LiveFrame: seq, skipped, timings_ms, data (or error)

The server keeps only the latest frame while one is at the model, so send at the camera's
rate and read what comes back; ``receive`` never returns an options acknowledgement (they
update ``options``). A stream the server closes raises the service's error for its close
code and reason (4000 + the HTTP status, reason ``"<code>: <message>"``: ``LiveFull`` for
4503 ``live_full``, ``Unauthorized`` for 4401...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from serve_app.client import wire
from serve_app.client.wire import Settings, base_headers
from serve_app.errors import (
    WS_CLOSE_OFFSET,
    NoAnswer,
    ServiceError,
    error_classes,
    error_from_answer,
)
from serve_app.live.stream import LIVE_OPTIONS, LIVE_PROTOCOL


@dataclass
class LiveFrame:
    """One answered frame: its header's figures and the stylized bytes, or the error that
    frame got (the stream goes on)."""

    seq: int
    skipped: int
    data: bytes = b""
    style: str | None = None
    width: int = 0
    height: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: ServiceError | None = None


def live_url(settings: Settings, options: Mapping[str, Any]) -> str:
    """The stream's address with its options (as ``wire.query``: an unknown name raises
    ``TypeError`` before anything is sent)."""
    unknown = sorted(set(options) - set(LIVE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown live options {unknown}; the options are {list(LIVE_OPTIONS)}")
    base = settings.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    query = urlencode(wire.query(options))
    return f"{base}/v1/live" + (f"?{query}" if query else "")


def connect_args(settings: Settings) -> dict[str, Any]:
    headers = base_headers(settings.api_key)
    headers.pop("Accept")
    return {
        "additional_headers": headers,
        "subprotocols": [LIVE_PROTOCOL],
        "open_timeout": settings.timeout_s,
        "max_size": None,  # a frame's size is the server's to bound
    }


class _Reading:
    """What both sessions make of the messages they receive, one at a time: options
    acknowledged, a frame's error, a frame's header, then its bytes."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}
        self._header: dict | None = None  # a frame's header whose bytes are still to read

    def _read(self, message: str | bytes) -> LiveFrame | None:
        """The frame this message completes, or None (more to read)."""
        if self._header is not None:
            header, self._header = self._header, None
            return _answered(header, message)
        header = json.loads(message)
        if _acknowledges(header):
            self.options = _acknowledged(header, self.options)
            return None
        if "error" in header:
            return _failed(header)
        self._header = header  # its bytes follow
        return None


class LiveSession(_Reading):
    """A live stream over a sync WebSocket."""

    def __init__(self, connection: ClientConnection) -> None:
        super().__init__()
        self._connection = connection

    def send(self, frame: bytes) -> None:
        """A JPEG or WebP frame."""
        with _closed_as_error():
            self._connection.send(frame)

    def change(self, **options: Any) -> None:
        """New options for the next frames (acknowledged into ``options``)."""
        with _closed_as_error():
            self._connection.send(json.dumps(options))

    def receive(self, timeout_s: float | None = None) -> LiveFrame:
        """The next answered frame (``TimeoutError`` after ``timeout_s``: the next call
        goes on where this one stopped, between a frame's header and its bytes too)."""
        while True:
            with _closed_as_error():
                message = self._connection.recv(timeout=timeout_s)
            answered = self._read(message)
            if answered is not None:
                return answered

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncLiveSession(_Reading):
    """A live stream over an asyncio WebSocket (``LiveSession``'s twin)."""

    def __init__(self, connection: AsyncConnection) -> None:
        super().__init__()
        self._connection = connection

    async def send(self, frame: bytes) -> None:
        with _closed_as_error():
            await self._connection.send(frame)

    async def change(self, **options: Any) -> None:
        with _closed_as_error():
            await self._connection.send(json.dumps(options))

    async def receive(self) -> LiveFrame:
        """As ``LiveSession.receive``; a cancelled call (``asyncio.wait_for``) also leaves
        the next one to go on where it stopped."""
        while True:
            with _closed_as_error():
                message = await self._connection.recv()
            answered = self._read(message)
            if answered is not None:
                return answered

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> AsyncLiveSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def open_live(settings: Settings, options: Mapping[str, Any]) -> LiveSession:
    with _closed_as_error():
        connection = connect(live_url(settings, options), **connect_args(settings))
    # Entered here, left by the session's close: websockets 17.1 deprecates a sync
    # connection used outside its context.
    return LiveSession(connection.__enter__())


async def open_live_async(settings: Settings, options: Mapping[str, Any]) -> AsyncLiveSession:
    with _closed_as_error():
        connection = await async_connect(live_url(settings, options), **connect_args(settings))
    return AsyncLiveSession(connection)


# --- reading -------------------------------------------------------------------------------


def _acknowledges(message: dict) -> bool:
    """An options acknowledgement (or a refused change), not a frame's answer."""
    return "options" in message or "seq" not in message


def _answered(header: dict, data: bytes) -> LiveFrame:
    return LiveFrame(
        seq=header["seq"],
        skipped=header["skipped"],
        data=data,
        style=header.get("style"),
        width=header.get("width", 0),
        height=header.get("height", 0),
        timings_ms=header.get("timings_ms", {}),
    )


def _failed(header: dict) -> LiveFrame:
    error = header["error"]
    return LiveFrame(
        seq=header["seq"],
        skipped=header["skipped"],
        error=_error_of(error),
    )


def _acknowledged(header: dict, options: dict[str, Any]) -> dict[str, Any]:
    """An options acknowledgement (the options now in force), or a refused change."""
    if "error" in header:
        raise _error_of(header["error"])
    return header.get("options", options)


def _error_of(error: dict) -> ServiceError:
    """A message's error as its class (the codes are unique: the code says the status)."""
    code = error["code"]
    status = next((cls.status for cls in error_classes() if cls.code == code), 0)
    return error_from_answer(code, error["message"], status)


class _closed_as_error:
    """A closed stream as the service's error for its close code; no stream at all as
    ``NoAnswer``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, ConnectionClosed):
            close = error.rcvd
            if close is None or close.code < WS_CLOSE_OFFSET:
                raise NoAnswer("the live stream closed", code="connection_closed") from None
            code, _, message = close.reason.partition(": ")
            raise error_from_answer(code, message, close.code - WS_CLOSE_OFFSET) from None
        if isinstance(error, InvalidStatus):  # the handshake answered with an HTTP error
            answer = error.response
            body = answer.body.decode("utf-8", "replace")
            raise wire.error_from_body(
                answer.status_code, body, answer.reason_phrase, answer.headers
            ) from None
        if isinstance(error, TimeoutError):
            return None  # as documented: the caller's own wait ran out
        if isinstance(error, OSError):
            raise NoAnswer(f"the service did not answer: {error}", code="unreachable") from None
