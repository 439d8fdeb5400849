"""Live streams without Ray: the latest frame wins, errors keep the stream, bounds, and the
WebSocket route over the service with a fake model."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from serve_app.config import AppConfig, JobsConfig, LiveConfig
from serve_app.errors import (
    ImageTooLarge,
    InvalidParameters,
    InvalidSize,
    LiveFull,
    ReplicaFailed,
    StoreError,
    StreamIdle,
    StreamStalled,
    TooManyStreams,
    Unavailable,
    UndecodableImage,
    UnsupportedFormat,
)
from serve_app.http.app import create_app
from serve_app.jobs.stores import open_record_store
from serve_app.live import service as live_service
from serve_app.live.service import LiveService, frame_format
from serve_app.live.stream import ClientLeft, FrameAnswer, LiveStream
from serve_app.service.service import AnimeService
from tests.support.fakes import RANDOM_WEIGHTS, InvertingModel, LocalCache
from tests.support.job_service import until
from tests.support.pictures import synthetic_jpeg
from tests.support.redis_server import started_server

STYLES = [{"name": "alpha", "weights": "random"}, {"name": "beta", "weights": "random"}]


def make_config(**overrides) -> AppConfig:
    return AppConfig.model_validate({"styles": STYLES, **overrides})


def webp(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, "WEBP")
    return out.getvalue()


class Transport:
    """A client's side of the socket: messages in through a queue, what the stream sends
    kept in order (text parsed)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.sent: list = []
        self.arrived = asyncio.Event()
        self.stall_sends = False
        self.gone = False

    async def receive(self):
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        await self._send(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def _send(self, message) -> None:
        if self.gone:
            raise ClientLeft("the peer closed")
        if self.stall_sends:
            await asyncio.Event().wait()
        self.sent.append(message)
        self.arrived.set()

    async def wait_for(self, predicate) -> None:
        while not any(predicate(m) for m in self.sent):
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)

    def headers(self) -> list[dict]:
        return [m for m in self.sent if isinstance(m, dict)]


class GatedFrames:
    """A frame stylizer that holds each frame until the test lets it through."""

    def __init__(self) -> None:
        self.started: asyncio.Queue = asyncio.Queue()
        self.release: asyncio.Queue = asyncio.Queue()
        self.seen: list[bytes] = []

    async def __call__(self, data: bytes, options) -> FrameAnswer:
        self.seen.append(data)
        await self.started.put(data)
        outcome = await self.release.get()
        if isinstance(outcome, Exception):
            raise outcome
        return FrameAnswer(b"out-" + data, 8, 8, {"inference": 1.0})


class Counted:
    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.latencies: list[float] = []
        self.open: list[int] = []

    def frame(self, outcome: str) -> None:
        self.frames[outcome] = self.frames.get(outcome, 0) + 1

    def latency(self, ms: float) -> None:
        self.latencies.append(ms)

    def streams(self, open_streams: int) -> None:
        self.open.append(open_streams)


def make_stream(transport, frames, live: LiveConfig | None = None, metrics=None) -> LiveStream:
    service = LiveService(make_config(), InvertingModel(["alpha", "beta"]).stylize)
    return LiveStream(
        transport,
        service.options({}),
        live or LiveConfig(),
        frames,
        service.change_options,
        metrics or Counted(),
    )


def test_the_latest_frame_wins_and_skipped_frames_are_counted():
    async def scenario():
        transport, frames, metrics = Transport(), GatedFrames(), Counted()
        stream = make_stream(transport, frames, metrics=metrics)
        running = asyncio.ensure_future(stream.run())
        await transport.incoming.put(b"f0")
        assert await frames.started.get() == b"f0"  # frame 0 is at the model
        for name in (b"f1", b"f2", b"f3", b"f4"):  # each replaces the one waiting
            await transport.incoming.put(name)
        while stream.received < 5:
            await asyncio.sleep(0)
        await frames.release.put(None)
        assert await frames.started.get() == b"f4"
        await frames.release.put(None)
        await transport.wait_for(lambda m: m == b"out-f4")
        await transport.incoming.put(None)  # the client leaves
        assert await running is None
        return transport, frames, stream, metrics

    transport, frames, stream, metrics = asyncio.run(scenario())
    assert frames.seen == [b"f0", b"f4"]
    headers = transport.headers()
    # "skipped so far" when each answer goes out: frame 0 was answered after the skips
    assert [(h["seq"], h["skipped"]) for h in headers] == [(0, 3), (4, 3)]
    assert transport.sent[1] == b"out-f0" and transport.sent[3] == b"out-f4"
    assert headers[0]["style"] == "alpha" and "wait" in headers[0]["timings_ms"]
    assert (stream.received, stream.processed, stream.skipped) == (5, 2, 3)
    assert metrics.frames == {"received": 5, "processed": 2, "skipped": 3}
    assert len(metrics.latencies) == 2


def test_a_bad_frame_is_reported_and_the_stream_goes_on():
    async def scenario():
        transport, frames = Transport(), GatedFrames()
        stream = make_stream(transport, frames, LiveConfig(max_frame_bytes=10))
        running = asyncio.ensure_future(stream.run())
        await transport.incoming.put(b"x" * 11)  # over max_frame_bytes: refused on arrival
        await transport.wait_for(lambda m: isinstance(m, dict) and m.get("seq") == 0)
        await transport.incoming.put(b"bad")
        await frames.started.get()
        await frames.release.put(UndecodableImage("not a picture"))
        await transport.wait_for(lambda m: isinstance(m, dict) and m.get("seq") == 1)
        # The model fails on a frame (not one of the service's errors: a failed pass comes
        # back from the replica as Ray's error): that frame's error, the stream goes on.
        await transport.incoming.put(b"unlucky")
        await frames.started.get()
        await frames.release.put(RuntimeError("inference failed: out of memory"))
        await transport.wait_for(lambda m: isinstance(m, dict) and m.get("seq") == 2)
        await transport.incoming.put(b"good")
        await frames.started.get()
        await frames.release.put(None)
        await transport.wait_for(lambda m: m == b"out-good")
        await transport.incoming.put(None)
        await running
        return transport, stream

    transport, stream = asyncio.run(scenario())
    headers = transport.headers()
    assert headers[0]["error"]["code"] == "payload_too_large"
    assert headers[1] == {
        "seq": 1,
        "skipped": 0,
        "error": {"code": "undecodable_image", "message": "not a picture"},
    }
    assert headers[2]["seq"] == 2 and headers[2]["error"]["code"] == "internal_error"
    assert headers[3]["seq"] == 3 and "error" not in headers[3]
    assert (stream.failed, stream.processed) == (3, 1)


def test_control_messages_change_the_options_for_the_next_frames():
    async def scenario():
        transport, frames = Transport(), GatedFrames()
        stream = make_stream(transport, frames)
        running = asyncio.ensure_future(stream.run())
        for text in ('{"style": "beta", "strength": 0.5}', "[1]", '{"portrait": "crop"}'):
            await transport.incoming.put(text)
        await transport.incoming.put('{"style": "nope"}')
        await transport.incoming.put('{"style": "alpha", "style": "beta"}')
        # Nested past the JSON parser's depth (4 KB): it raised RecursionError, which
        # ended the stream without a close.
        await transport.incoming.put('{"style": ' + "[" * 2000 + "]" * 2000 + "}")
        # Megabytes of unknown options: refused unread (parsing and answering each cost
        # the replica's event loop about a second).
        await transport.incoming.put('{"a": 0' + ', "a": 0' * 200_000 + "}")
        await transport.wait_for(lambda m: isinstance(m, dict) and len(transport.sent) >= 7)
        await transport.incoming.put(b"f0")
        await frames.started.get()
        await frames.release.put(None)
        await transport.wait_for(lambda m: m == b"out-f0")
        await transport.incoming.put(None)
        await running
        return transport

    transport = asyncio.run(scenario())
    (acknowledged, not_an_object, unknown, bad_style, repeated, too_deep, too_long, frame) = (
        transport.headers()
    )
    assert acknowledged["options"]["style"] == "beta"
    assert acknowledged["options"]["strength"] == 0.5
    assert acknowledged["options"]["size"] == LiveConfig().default_size
    assert not_an_object["error"]["code"] == "invalid_parameters"
    assert unknown["error"]["code"] == "invalid_parameters"
    assert bad_style["error"]["code"] == "unknown_style"
    assert repeated["error"] == {
        "code": "invalid_parameters",
        "message": "option 'style' sent more than once",
    }
    assert too_deep["error"]["code"] == "invalid_parameters"
    assert too_long["error"]["code"] == "payload_too_large" and "seq" not in too_long
    assert frame["style"] == "beta"  # the last good options


def test_an_idle_stream_is_closed():
    async def scenario():
        stream = make_stream(Transport(), GatedFrames(), LiveConfig(idle_timeout_s=0.05))
        return await stream.run()

    assert isinstance(asyncio.run(scenario()), StreamIdle)


def test_a_client_that_reads_nothing_stalls_its_stream_closed():
    async def scenario():
        transport, frames = Transport(), GatedFrames()
        transport.stall_sends = True
        stream = make_stream(transport, frames, LiveConfig(send_timeout_s=0.05))
        await transport.incoming.put(b"f0")
        running = asyncio.ensure_future(stream.run())
        await frames.started.get()
        await frames.release.put(None)
        return await running

    assert isinstance(asyncio.run(scenario()), StreamStalled)


def test_a_client_gone_mid_answer_ends_the_stream_quietly():
    async def scenario():
        transport, frames = Transport(), GatedFrames()
        transport.gone = True
        stream = make_stream(transport, frames)
        await transport.incoming.put(b"f0")
        running = asyncio.ensure_future(stream.run())
        await frames.started.get()
        await frames.release.put(None)
        return await running, stream

    ended, stream = asyncio.run(scenario())
    assert ended is None and stream.processed == 0  # stylized, never delivered


def test_a_fast_sender_takes_no_more_of_the_model_than_a_slow_one():
    """Two streams over one model that serves calls one at a time, in arrival order: one
    client sends a frame at every turn of the loop, the other only after each answer.
    The model alternates between them."""
    served: list[bytes] = []

    async def scenario():
        model = asyncio.Lock()

        async def one_at_a_time(data: bytes, options) -> FrameAnswer:
            async with model:
                for _ in range(5):  # a pass takes a few turns of the loop
                    await asyncio.sleep(0)
                served.append(data[:1])
                return FrameAnswer(data, 8, 8, {})

        fast, slow = Transport(), Transport()
        streams = [make_stream(t, one_at_a_time) for t in (fast, slow)]
        running = [asyncio.ensure_future(stream.run()) for stream in streams]
        await slow.incoming.put(b"s")
        while len(served) < 20:
            await fast.incoming.put(b"f")
            if slow.sent and slow.sent[-1] == b"s":  # answered: the slow one sends again
                slow.sent.append("sent")
                await slow.incoming.put(b"s")
            await asyncio.sleep(0)
        first = served[:20]
        for transport in (fast, slow):
            await transport.incoming.put(None)
        await asyncio.gather(*running)  # both end (a cancellation is never lost)
        return streams, first

    (fast_stream, _), first = asyncio.run(scenario())
    counts = {name: first.count(name) for name in (b"f", b"s")}
    assert abs(counts[b"f"] - counts[b"s"]) <= 2, first
    assert fast_stream.skipped > fast_stream.processed  # its extra frames were skipped


def test_frames_wait_for_a_place_at_the_model_and_the_newest_goes():
    """One place at the model for two streams: while one stream's frame is being made, the
    other's waits, newer frames replacing it; once the place is free, its newest frame
    goes."""

    async def scenario():
        frames = GatedFrames()
        service = LiveService(make_config(live={"frames_at_model": 1}), frames)
        a, b = Transport(), Transport()
        streams = [
            LiveStream(
                t,
                service.options({}),
                LiveConfig(),
                frames,
                service.change_options,
                Counted(),
                service._at_model_slot,
            )
            for t in (a, b)
        ]
        running = [asyncio.ensure_future(stream.run()) for stream in streams]
        await a.incoming.put(b"a0")
        assert await frames.started.get() == b"a0"
        for name in (b"b0", b"b1", b"b2"):
            await b.incoming.put(name)
        while streams[1].received < 3:
            await asyncio.sleep(0)
        for _ in range(10):  # b's frame would have started by now, were there a place
            await asyncio.sleep(0)
        assert frames.started.empty()
        await frames.release.put(None)
        assert await frames.started.get() == b"b2"
        await frames.release.put(None)
        await b.wait_for(lambda m: m == b"out-b2")
        for t in (a, b):
            await t.incoming.put(None)
        await asyncio.gather(*running)
        return streams[1]

    waited = asyncio.run(scenario())
    assert (waited.processed, waited.skipped) == (1, 2)


# --- the service: options, admission, one frame -----------------------------------------


def test_live_options_take_the_live_defaults_and_bounds():
    service = LiveService(make_config(), InvertingModel(["alpha"]).stylize)
    options = service.options({})
    assert (options.size, options.style) == (LiveConfig().default_size, "alpha")
    assert service.options({"size": "128", "style": "beta"}).size == 128
    with pytest.raises(InvalidSize):
        service.options({"size": str(LiveConfig().max_size + 4)})
    with pytest.raises(InvalidSize):  # past the photos' synchronous bound too: not "use jobs"
        service.options({"size": str(make_config().limits.max_sync_size + 4)})
    with pytest.raises(InvalidParameters):
        service.options({"portrait": "crop"})


def test_admission_bounds_streams_per_replica_and_per_key():
    metrics = Counted()
    service = LiveService(
        make_config(live={"max_streams": 3, "max_streams_per_key": 2}),
        InvertingModel(["alpha"]).stylize,
        metrics=metrics,
    )

    async def scenario():
        async with service.admit("key-a"), service.admit("key-a"):
            with pytest.raises(TooManyStreams):
                async with service.admit("key-a"):
                    pass
            async with service.admit("key-b"):
                assert service.open_streams == 3
                with pytest.raises(LiveFull):
                    async with service.admit(None):
                        pass
        assert service.open_streams == 0
        async with service.admit("key-a"), service.admit("key-a"):  # places come back
            pass

    asyncio.run(scenario())
    assert metrics.open[-1] == 0 and max(metrics.open) == 3


@pytest.fixture(scope="module")
def redis_server():
    yield from started_server()


@pytest.fixture(params=["sqlite", "redis"])
def shared_places(request, tmp_path):
    """The record store every ingress replica of a node (SQLite) or a cluster (Redis)
    shares, as two replicas open it."""
    records_url = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        records_url = server.url
    config = JobsConfig(store_url=str(tmp_path / "jobs"), records_url=records_url)
    return lambda: open_record_store(config, tmp_path / "jobs")[0]


def test_a_key_s_bound_counts_its_streams_on_every_replica_that_shares_the_store(
    shared_places,
):
    config = make_config(live={"max_streams_per_key": 2})

    async def scenario():
        stores = [shared_places(), shared_places()]
        first, second = (
            LiveService(config, InvertingModel(["alpha"]).stylize, places=store) for store in stores
        )
        try:
            async with first.admit("key-a"), second.admit("key-a"):
                with pytest.raises(TooManyStreams) as refused:
                    async with first.admit("key-a"):
                        pass
                with pytest.raises(TooManyStreams):
                    async with second.admit("key-a"):
                        pass
                async with second.admit("key-b"):  # another key's bound is its own
                    pass
            await until(lambda: _released(first, second))
            async with first.admit("key-a"), first.admit("key-a"):  # places come back
                pass
            return refused.value
        finally:
            for store in stores:
                await store.close()

    refused = asyncio.run(scenario())
    assert "on this service's replicas" in refused.message


async def _released(*services: LiveService) -> bool:
    return not any(service._releasing for service in services)


def test_a_place_whose_replica_died_lapses_and_a_store_away_admits_by_the_replica(
    shared_places, monkeypatch
):
    monkeypatch.setattr(live_service, "PLACE_LEASE_S", 0.3)
    config = make_config(live={"max_streams_per_key": 1})

    async def scenario():
        store = shared_places()
        try:
            # A replica held a place and died: nothing renews or releases it.
            assert await store.hold_place("live:key-a", "dead-replica", 1, time.time() + 0.3)
            service = LiveService(config, InvertingModel(["alpha"]).stylize, places=store)
            with pytest.raises(TooManyStreams):
                async with service.admit("key-a"):
                    pass
            await asyncio.sleep(0.4)  # past the dead replica's lease
            async with service.admit("key-a"):
                pass
            away = LiveService(config, InvertingModel(["alpha"]).stylize, places=Unreachable())
            async with away.admit("key-a"):
                with pytest.raises(TooManyStreams):  # this replica's own count still holds
                    async with away.admit("key-a"):
                        pass
        finally:
            await store.close()

    asyncio.run(scenario())


class Unreachable:
    """A record store that cannot be reached."""

    async def hold_place(self, *args) -> bool:
        raise StoreError("the job record server (redis://nowhere) failed")

    renew_place = release_place = hold_place


class SlowPlaces:
    """Places in memory whose holds take until ``landed`` is set."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.landed = asyncio.Event()
        self.asked, self.taken = asyncio.Event(), asyncio.Event()

    async def hold_place(self, group: str, holder: str, bound: int, until: float) -> bool:
        # As a store's thread or a sent command: it goes on when its caller is cancelled.
        return await asyncio.shield(self._hold(holder))

    async def _hold(self, holder: str) -> bool:
        self.asked.set()
        await self.landed.wait()
        self.held.add(holder)
        self.taken.set()
        return True

    async def renew_place(self, group: str, holder: str, until: float) -> None:
        pass

    async def release_place(self, group: str, holder: str) -> None:
        self.held.discard(holder)


def test_a_client_that_leaves_during_its_hold_gives_the_place_back():
    """Serve cancels the handler of a client that leaves before the socket is accepted:
    the hold it sent still lands, and must not keep the key's place for its lease."""

    async def scenario():
        places = SlowPlaces()
        service = LiveService(make_config(), InvertingModel(["alpha"]).stylize, places=places)

        async def stream():
            async with service.admit("key-a"):
                await asyncio.Event().wait()

        admitting = asyncio.ensure_future(stream())
        await places.asked.wait()
        admitting.cancel()
        await asyncio.gather(admitting, return_exceptions=True)
        places.landed.set()
        await asyncio.wait_for(places.taken.wait(), 10)
        for _ in range(100):  # then its release runs
            if not places.held:
                break
            await asyncio.sleep(0.01)
        return places.held, service.open_streams

    held, open_streams = asyncio.run(scenario())
    assert held == set() and open_streams == 0


def test_a_frame_comes_back_stylized_in_its_own_format():
    model = InvertingModel(["alpha"])
    service = LiveService(make_config(), model.stylize)
    options = service.options({"size": "64"})

    async def both():
        return (
            await service.stylize_frame(synthetic_jpeg(160, 120), options),
            await service.stylize_frame(webp(96, 64), options),
        )

    jpeg_answer, webp_answer = asyncio.run(both())
    assert frame_format(jpeg_answer.data) == "jpeg" and frame_format(webp_answer.data) == "webp"
    assert (jpeg_answer.width, jpeg_answer.height) == (64, 48)
    with Image.open(io.BytesIO(webp_answer.data)) as picture:
        assert max(picture.size) == 64
    assert set(jpeg_answer.timings_ms) == {"decode", "queue", "inference", "encode"}
    assert model.pictures == 2


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"0" * 32, UnsupportedFormat),
        (b"\xff\xd8\xff" + b"0" * 32, UndecodableImage),
        ("huge", ImageTooLarge),
    ],
)
def test_a_bad_frame_gets_the_photo_error(data, error):
    config = make_config(limits={"max_pixels": 100 * 100})
    service = LiveService(config, InvertingModel(["alpha"]).stylize)
    data = synthetic_jpeg(200, 200) if data == "huge" else data
    with pytest.raises(error):
        asyncio.run(service.stylize_frame(data, service.options({})))


def test_a_dying_model_replica_is_retried_once():
    calls = []

    async def flaky(rgb: np.ndarray, style: str):
        calls.append(style)
        if len(calls) in (1, 3, 4):
            raise ReplicaFailed("replica died")
        return await InvertingModel(["alpha"]).stylize(rgb, style)

    service = LiveService(make_config(), flaky)
    options = service.options({"size": "32"})
    assert asyncio.run(service.stylize_frame(synthetic_jpeg(), options)).width == 32
    with pytest.raises(Unavailable):
        asyncio.run(service.stylize_frame(synthetic_jpeg(), options))
    assert len(calls) == 4


# --- the WebSocket route ----------------------------------------------------------------


@pytest.fixture
def live_client(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVE_TEST_KEYS", "secret-key")
    config = make_config(
        api_key_env="LIVE_TEST_KEYS",
        jobs={"store_url": str(tmp_path / "jobs")},
        live={"max_streams_per_key": 1},
    )
    model = InvertingModel(["alpha", "beta"])
    service = AnimeService(
        config, model, LocalCache(), {"alpha": RANDOM_WEIGHTS, "beta": RANDOM_WEIGHTS}
    )
    with TestClient(create_app(service)) as client:
        yield client


BEARER = ["animegan.live.v1", "bearer.secret-key"]


def leave(client: TestClient, ws) -> None:
    """Close from the client and wait for the stream's end on the server: the test
    client cancels whatever still runs when its session exits."""
    ws.close(1000)
    deadline = time.monotonic() + 10
    while client.app.state.service.live.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_route_answers_frames_over_a_websocket(live_client):
    with live_client.websocket_connect("/v1/live?style=beta&size=64", subprotocols=BEARER) as ws:
        assert ws.accepted_subprotocol == "animegan.live.v1"
        ws.send_bytes(synthetic_jpeg(160, 120))
        header = json.loads(ws.receive_text())
        frame = ws.receive_bytes()
        ws.send_text('{"style": "alpha"}')
        assert json.loads(ws.receive_text())["options"]["style"] == "alpha"
        leave(live_client, ws)
    assert (header["seq"], header["skipped"], header["style"]) == (0, 0, "beta")
    assert (header["width"], header["height"]) == (64, 48)
    assert frame_format(frame) == "jpeg"


@pytest.mark.parametrize(
    ("url", "protocols", "code"),
    [
        ("/v1/live", ["animegan.live.v1"], 4401),
        ("/v1/live", ["animegan.live.v1", "bearer.wrong"], 4401),
        ("/v1/live?size=4096", BEARER, 4422),
        ("/v1/live?style=nope", BEARER, 4422),
        ("/v1/live?portrait=crop", BEARER, 4422),
    ],
)
def test_refused_streams_close_with_the_documented_code(live_client, url, protocols, code):
    with (
        live_client.websocket_connect(url, subprotocols=protocols) as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_text()
    assert closed.value.code == code and closed.value.reason


def test_a_second_stream_of_one_key_past_its_bound_closes_4429(live_client):
    with live_client.websocket_connect("/v1/live", subprotocols=BEARER) as first:
        first.send_text("{}")
        first.receive_text()  # the first stream is open and admitted
        with (
            live_client.websocket_connect("/v1/live", subprotocols=BEARER) as second,
            pytest.raises(WebSocketDisconnect) as closed,
        ):
            second.receive_text()
        leave(live_client, first)
    assert closed.value.code == 4429


def test_plain_http_on_the_live_route_answers_426(live_client):
    headers = {"Authorization": "Bearer secret-key"}
    response = live_client.get("/v1/live", headers=headers)
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert response.json()["error"]["code"] == "upgrade_required"
    assert live_client.get("/v1/live").status_code == 401
    operation = live_client.get("/openapi.json", headers=headers).json()["paths"]["/v1/live"]
    assert "WebSocket" in operation["get"]["description"]
    size = next(p for p in operation["get"]["parameters"] if p["name"] == "size")
    assert size["schema"]["maximum"] == LiveConfig().max_size
