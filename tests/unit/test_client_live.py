"""The client's live session without a server: the stream's address, and closes and
message errors read back as the service's own error classes."""

from __future__ import annotations

import json

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from serve_app.client.live import LiveSession, _closed_as_error, _error_of, live_url
from serve_app.client.wire import Settings
from serve_app.errors import (
    ImageTooLarge,
    LiveFull,
    NoAnswer,
    OriginRefused,
    ServiceError,
    StreamIdle,
    TooManyStreams,
    Unauthorized,
)


def closed(code: int, reason: str) -> ConnectionClosedError:
    return ConnectionClosedError(Close(code, reason), None)


def test_the_stream_address_carries_the_live_options_only():
    settings = Settings.resolve("https://anime.example/", "k", 5)
    url = live_url(settings, {"style": "hayao", "size": 256, "preserve_color": True})
    assert url == "wss://anime.example/v1/live?style=hayao&size=256&preserve_color=true"
    assert live_url(Settings.resolve("http://127.0.0.1:8000", None, 5), {}).startswith("ws://")
    with pytest.raises(TypeError):
        live_url(settings, {"portrait": "crop"})


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (4503, "live_full: this replica holds its 32 live streams", LiveFull),
        (4429, "too_many_streams: this API key holds 4 live streams already", TooManyStreams),
        (4408, "stream_idle: nothing received for 30 s", StreamIdle),
        (4401, "unauthorized: this service requires an API key", Unauthorized),
        (4403, "origin_refused: a page of https://elsewhere.test may not", OriginRefused),
    ],
)
def test_a_close_is_raised_as_its_error(code, reason, error):
    with pytest.raises(error) as raised, _closed_as_error():
        raise closed(code, reason)
    assert raised.value.message == reason.partition(": ")[2]


def test_a_close_without_an_error_is_no_answer():
    with pytest.raises(NoAnswer), _closed_as_error():
        raise closed(1011, "internal error")


def test_a_frame_error_is_its_class_by_code():
    error = _error_of({"code": "image_too_large", "message": "too many pixels"})
    assert isinstance(error, ImageTooLarge) and error.status == 413


class ScriptedConnection:
    """A sync WebSocket whose ``recv`` gives its messages in order; ``None`` among them is
    a read that times out."""

    def __init__(self, *messages: str | bytes | None) -> None:
        self.messages = list(messages)

    def recv(self, timeout: float | None = None) -> str | bytes:
        message = self.messages.pop(0)
        if message is None:
            raise TimeoutError
        return message


def test_a_receive_that_times_out_raises_timeout_and_the_next_goes_on():
    header = json.dumps({"seq": 0, "skipped": 0, "style": "hayao"})
    options = json.dumps({"options": {"style": "hayao"}})
    session = LiveSession(ScriptedConnection(None, options, header, None, b"jpeg bytes"))
    with pytest.raises(TimeoutError):
        session.receive(timeout_s=0.1)  # nothing yet
    with pytest.raises(TimeoutError):
        session.receive(timeout_s=0.1)  # the header came, its bytes not yet
    frame = session.receive(timeout_s=0.1)
    assert (frame.seq, frame.data, session.options) == (0, b"jpeg bytes", {"style": "hayao"})


def test_a_handshake_refused_with_an_http_error_is_that_error():
    body = json.dumps({"error": {"code": "unauthorized", "message": "no key"}}).encode()
    refused = InvalidStatus(Response(401, "Unauthorized", Headers(), body))
    with pytest.raises(Unauthorized) as raised, _closed_as_error():
        raise refused
    assert raised.value.message == "no key"
    page = InvalidStatus(Response(502, "Bad Gateway", Headers(), b"<html>bad gateway</html>"))
    with pytest.raises(ServiceError) as raised, _closed_as_error():
        raise page
    assert (raised.value.status, raised.value.code) == (502, "http_502")
