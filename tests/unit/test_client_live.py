"""The client's live session without a server: the stream's address, and closes and
message errors read back as the service's own error classes."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from serve_app.client.live import _closed_as_error, _error_of, live_url
from serve_app.client.wire import Settings
from serve_app.errors import (
    ImageTooLarge,
    LiveFull,
    NoAnswer,
    OriginRefused,
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
