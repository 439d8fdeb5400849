"""The live camera over a real WebSocket on real Ray: frames in, stylized frames out, the
latest frame winning, two styles at once, the bounds' close codes, and a Stylizer replica
killed under a running stream."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time

import httpx
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serve_app.client import AsyncClient, Client
from serve_app.errors import InvalidSize, UnsupportedFormat
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import (
    STYLE_A,
    STYLE_B,
    app_args,
    deploy,
    kill_replica,
    running_replicas,
    stylizer_deployment,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE, MAX_SIZE, MAX_STREAMS = 64, 128, 2
ANSWER_TIMEOUT_S = 120  # one frame on a busy 2-core machine
LIVE_FRAMES = r'^ray_animegan_live_frames_total\{[^}]*outcome="(\w+)"'


@pytest.fixture(scope="module")
def live_url(default_app):
    deploy(
        app_args(live={"default_size": SIZE, "max_size": MAX_SIZE, "max_streams": MAX_STREAMS}),
        stylizer=stylizer_deployment(num_replicas=2),
    )
    wait_ready(default_app)
    return default_app.replace("http://", "ws://") + "/v1/live"


def frames(count: int, seed: int = 0) -> list[bytes]:
    return [synthetic_jpeg(96, 72, seed=seed + index) for index in range(count)]


def webp_frame() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 72), (40, 120, 200)).save(out, "WEBP")
    return out.getvalue()


def answer(ws) -> tuple[dict, bytes | None]:
    """The next answer: a header and its frame, or an error header alone."""
    header = json.loads(ws.recv(timeout=ANSWER_TIMEOUT_S))
    if "error" in header or "seq" not in header:
        return header, None
    return header, ws.recv(timeout=ANSWER_TIMEOUT_S)


def test_frames_come_back_stylized_in_order_and_in_their_format(live_url):
    with connect(f"{live_url}?style={STYLE_B}", subprotocols=["animegan.live.v1"]) as ws:
        assert ws.subprotocol == "animegan.live.v1"
        answers = []
        for frame in [*frames(3), webp_frame()]:
            ws.send(frame)
            answers.append(answer(ws))
    assert [header["seq"] for header, _ in answers] == [0, 1, 2, 3]
    for header, data in answers:
        assert (header["style"], header["width"], header["height"]) == (STYLE_B, 64, 48)
        assert header["skipped"] == 0 and header["timings_ms"]["inference"] > 0
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.size == (64, 48)
    assert [Image.open(io.BytesIO(d)).format for _, d in answers] == ["JPEG"] * 3 + ["WEBP"]


def test_a_client_faster_than_the_model_gets_the_latest_frames(live_url):
    sent = 12
    with connect(live_url) as ws:
        for frame in frames(sent, seed=100):  # all at once: far faster than the model
            ws.send(frame)
        answered = []
        while not answered or answered[-1][0] != sent - 1:  # the last frame always wins
            header, data = answer(ws)
            assert data is not None, header
            answered.append((header["seq"], header["skipped"]))
    seqs = [seq for seq, _ in answered]
    assert seqs == sorted(set(seqs))  # increasing, none twice
    skipped = answered[-1][1]
    assert skipped >= 1  # a model pass (and its batch wait) outlasts the burst
    assert len(seqs) + skipped == sent  # every frame answered or counted as skipped


def test_two_streams_of_two_styles_at_once(live_url):
    shared = frames(4, seed=200)
    with connect(f"{live_url}?style={STYLE_A}") as a, connect(f"{live_url}?style={STYLE_B}") as b:
        results = {STYLE_A: [], STYLE_B: []}
        for frame in shared:
            a.send(frame)
            b.send(frame)
            for ws in (a, b):
                header, data = answer(ws)
                results[header["style"]].append(data)
    assert len(results[STYLE_A]) == len(results[STYLE_B]) == 4
    assert results[STYLE_A] != results[STYLE_B]  # each stream got its own style


def closed_with(ws) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=ANSWER_TIMEOUT_S)
    return closed.value


def test_a_page_of_another_site_is_refused_and_the_service_s_own_page_streams(live_url):
    """Browsers send Origin on a WebSocket and apply no CORS to it: the service checks."""
    with connect(live_url, origin="https://elsewhere.test") as ws:
        refused = closed_with(ws)
    assert refused.rcvd.code == 4403 and refused.rcvd.reason.startswith("origin_refused:")
    own = live_url.replace("ws://", "http://").removesuffix("/v1/live")
    with connect(live_url, origin=own) as ws:
        ws.send(frames(1, seed=400)[0])
        assert answer(ws)[1] is not None


def test_the_bounds_close_with_their_codes_and_a_bad_frame_keeps_the_stream(live_url):
    with connect(f"{live_url}?size={MAX_SIZE * 2}") as ws:
        refused = closed_with(ws)
    assert refused.rcvd.code == 4422 and "size" in refused.rcvd.reason
    with connect(live_url) as first, connect(live_url) as second:
        for ws in (first, second):  # both admitted: each answers a frame
            ws.send(frames(1, seed=300)[0])
            assert answer(ws)[1] is not None
        with connect(live_url) as third:
            full = closed_with(third)
        assert full.rcvd.code == 4503 and full.rcvd.reason
        huge = Image.new("RGB", (2100, 2000), (10, 20, 30))  # over limits.max_pixels
        out = io.BytesIO()
        huge.save(out, "JPEG")
        first.send(out.getvalue())
        first.send(b"not a picture at all")
        first.send(frames(1, seed=301)[0])
        codes = []
        while True:
            header, data = answer(first)
            if data is not None:
                break
            codes.append(header["error"]["code"])
        # A refused frame may also be skipped if the next one replaced it while it waited.
        assert set(codes) <= {"image_too_large", "unsupported_format"} and codes
        assert header["seq"] == 3


def test_live_metrics_count_streams_and_frames(live_url, metrics_url):
    with connect(live_url) as ws:
        ws.send(frames(1, seed=400)[0])
        answer(ws)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(metrics_url, timeout=10).text
        outcomes = set(
            re.findall(r'^ray_animegan_live_frames_total\{[^}]*outcome="(\w+)"', text, re.M)
        )
        if {"received", "processed"} <= outcomes and "ray_animegan_live_frame_ms_bucket" in text:
            break
        time.sleep(1)  # Ray exports a replica's metrics about once a second
    assert {"received", "processed"} <= outcomes
    assert "ray_animegan_live_frame_ms_bucket" in text and "ray_animegan_live_streams" in text


def test_a_killed_stylizer_replica_costs_a_stream_at_most_its_frame_in_flight(live_url):
    answered, failed = 0, 0
    with connect(live_url) as ws:
        ws.send(frames(1, seed=500)[0])
        assert answer(ws)[1] is not None
        kill_replica("Stylizer")
        for frame in frames(8, seed=501):  # one at a time: one frame in flight
            ws.send(frame)
            _, data = answer(ws)
            answered += data is not None
            failed += data is None
    assert failed <= 1 and answered >= 7
    deadline = time.monotonic() + 120
    while running_replicas("Stylizer") < 2 and time.monotonic() < deadline:
        time.sleep(1)  # leave the deployment whole for what runs next


# The client's own use of the websockets library stays current (17.1 deprecated a sync
# connection used outside its context).
@pytest.mark.filterwarnings("error::DeprecationWarning:serve_app.client")
def test_the_python_clients_stream_and_raise_a_close_as_its_error(live_url, default_app):
    first, second = frames(2, seed=600)
    with Client(default_app) as client:
        with client.live(style=STYLE_B) as live:
            live.send(first)
            answered = live.receive(timeout_s=ANSWER_TIMEOUT_S)
            live.change(style=STYLE_A)
            live.send(second)
            restyled = live.receive(timeout_s=ANSWER_TIMEOUT_S)
            live.send(b"not a frame")
            refused = live.receive(timeout_s=ANSWER_TIMEOUT_S)
            acknowledged = live.options
        with client.live(size=MAX_SIZE * 2) as too_large, pytest.raises(InvalidSize):
            too_large.receive(timeout_s=ANSWER_TIMEOUT_S)
    assert (answered.seq, answered.style, answered.width) == (0, STYLE_B, SIZE)
    assert answered.data[:3] == b"\xff\xd8\xff" and answered.error is None
    assert (restyled.seq, restyled.style, acknowledged["style"]) == (1, STYLE_A, STYLE_A)
    assert refused.seq == 2 and isinstance(refused.error, UnsupportedFormat)

    async def one_frame():
        async with AsyncClient(default_app) as client, await client.live() as live:
            await live.send(first)
            return await asyncio.wait_for(live.receive(), ANSWER_TIMEOUT_S)

    assert asyncio.run(one_frame()).width == SIZE
