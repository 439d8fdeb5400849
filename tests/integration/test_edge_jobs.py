"""Jobs through the shipped nginx edge at the service's own limits: a job's upload up to
``media.max_bytes`` streamed to Serve, its events as Server-Sent Events and over a
WebSocket, its result whole and by ``Range``.

The edge is the shipped file rendered for the test application's config (its bounds
derived from it: tests/support/nginx_edge.py), with only a quicker body timeout. Each test
sends from its own loopback address, so the per-client budgets of one never hold back
another. Jobs are reached through the links of the submission's answer only.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import av
import httpx
import pytest

from tests.support.media import frame_count, make_large_h264_mp4
from tests.support.nginx_edge import (
    Edge,
    MiB,
    directive_value,
    new_id,
    open_socket,
    render_for,
    request_head,
    running_edge,
    set_directive,
    wait_for_close,
    websocket_messages,
)
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import STYLE_A, make_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEST_APP = make_config()
JOBS_LIMIT_MIB = int(
    directive_value(render_for(TEST_APP), "client_max_body_size", "location = /v1/jobs")[:-1]
)
PICTURE_LIMIT_MIB = int(directive_value(render_for(TEST_APP), "client_max_body_size")[:-1])
BODY_TIMEOUT_S = 2
BIG_VIDEO_BYTES = 100 * 10**6
# nginx's warning when it stores a request body instead of passing it on as it comes.
BUFFERED_BODY = "a client request body is buffered to a temporary file"

assert PICTURE_LIMIT_MIB < 100 < JOBS_LIMIT_MIB  # the big video needs the jobs route's bound


def quick_body_timeout(text: str) -> str:
    return set_directive(text, "client_body_timeout", f"{BODY_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def edge(base_url, tmp_path_factory) -> Iterator[Edge]:
    upstream = urlsplit(base_url).netloc
    directory = tmp_path_factory.mktemp("edge-jobs")
    with running_edge(directory, upstream, TEST_APP, quick_body_timeout) as running:
        yield running


@pytest.fixture(scope="session")
def big_video(tmp_path_factory) -> Path:
    """A ~100 MB H.264 video of few frames (made once per session)."""
    started = time.monotonic()
    path = make_large_h264_mp4(tmp_path_factory.mktemp("big") / "big.mp4", BIG_VIDEO_BYTES)
    print(
        f"big video: {path.stat().st_size / 1e6:.1f} MB, {frame_count(path)} frames, "
        f"made in {time.monotonic() - started:.1f} s"
    )
    return path


def client_from(edge: Edge, address: str, timeout_s: float = 120) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=edge.url, timeout=timeout_s, transport=transport)


def sse_states(response: httpx.Response) -> list[str]:
    return [
        line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")
    ]


def buffered_uploads(edge: Edge, client_address: str) -> list[str]:
    """nginx's warnings that it stored a body of this client's instead of streaming it."""
    log = edge.error_log.read_text() if edge.error_log.exists() else ""
    client = f"client: {client_address},"
    return [line for line in log.splitlines() if BUFFERED_BODY in line and client in line]


def test_a_100_mb_video_job_through_the_edge(edge, big_video):
    """Submitted through the edge (streamed to Serve, not stored at the edge), followed by
    its events, its result fetched whole and by ranges that add up to the same bytes."""
    upload = big_video.read_bytes()
    request_id = new_id("big-video")
    with client_from(edge, "127.0.0.3") as client:
        submitted = client.post(
            "/v1/jobs",
            params={"style": STYLE_A},
            files={"file": ("big.mp4", upload, "video/mp4")},
            headers={"X-Request-ID": request_id},
        )
        assert submitted.status_code == 202, submitted.text
        links = submitted.json()["links"]
        with client.stream("GET", links["events"]) as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
            states = sse_states(events)
        whole = client.get(links["result"])
        from_zero = client.get(links["result"], headers={"Range": "bytes=0-"})
        size = len(whole.content)
        first, last = size // 3, 2 * size // 3
        middle = client.get(links["result"], headers={"Range": f"bytes={first}-{last}"})
    entry = edge.log_entry(request_id)
    assert entry["upstream_status"] == "202", entry
    assert int(entry["bytes_in"]) > len(upload)
    assert buffered_uploads(edge, "127.0.0.3") == []
    assert states[-1] == "done", states

    assert whole.status_code == 200, whole.text
    assert whole.headers["accept-ranges"] == "bytes"
    assert int(whole.headers["content-length"]) == size > 0
    with av.open(io.BytesIO(whole.content)) as video:
        decoded = sum(1 for _ in video.decode(video=0))
    assert decoded == frame_count(big_video)

    assert from_zero.status_code == 206
    assert from_zero.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    assert from_zero.content == whole.content
    assert middle.status_code == 206
    assert middle.headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert middle.content == whole.content[first : last + 1]


def test_a_job_body_over_the_picture_bound_reaches_the_app(edge):
    """/v1/jobs has the media bound, not the picture one: a body larger than the picture
    bound is passed to the app, streamed; the app reads it and refuses it itself (bytes
    that are no video are held to the picture limits)."""
    junk = b"\x00" * ((PICTURE_LIMIT_MIB + 1) * MiB)
    request_id = new_id("jobs-bound")
    with client_from(edge, "127.0.0.4") as client:
        response = client.post(
            "/v1/jobs",
            content=junk,
            headers={"Content-Type": "video/mp4", "X-Request-ID": request_id},
        )
    assert response.status_code in (400, 413, 415), response.text
    assert response.json()["error"]["code"] != "payload_too_large"  # the edge's code
    entry = edge.log_entry(request_id)
    assert entry["upstream_status"] == str(response.status_code), entry
    assert buffered_uploads(edge, "127.0.0.4") == []


def test_a_job_body_over_the_jobs_bound_is_refused_at_the_edge(edge):
    request_id = new_id("jobs-oversize")
    headers = {"Content-Type": "video/mp4", "Content-Length": str(JOBS_LIMIT_MIB * MiB + 1)}
    with open_socket(edge, "127.0.0.4") as sock:
        sock.sendall(request_head("POST", "/v1/jobs", request_id, headers))
        sock.settimeout(10)
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b'"payload_too_large"' in head
    entry = edge.log_entry(request_id)
    assert entry["status"] == "413" and entry["upstream_addr"] == "", entry


def test_a_stalled_job_upload_is_cut_off_at_the_edge(edge):
    """Streamed to Serve, a job's upload is still cut off by the edge when the client
    stops sending: the connection closes after client_body_timeout, with no answer."""
    request_id = new_id("jobs-stall")
    headers = {"Content-Type": "video/mp4", "Content-Length": "1000000"}
    with open_socket(edge, "127.0.0.5") as sock:
        sock.sendall(request_head("POST", "/v1/jobs", request_id, headers) + b"\x00" * 10_000)
        elapsed, received = wait_for_close(sock, BODY_TIMEOUT_S + 10)
    print(f"stalled job upload: closed after {elapsed:.2f} s (timeout {BODY_TIMEOUT_S} s)")
    assert received == b""
    assert elapsed >= BODY_TIMEOUT_S - 0.5  # not before the timeout; the 408 says it was it
    assert edge.log_entry(request_id)["status"] == "408"


def test_a_jobs_events_over_a_websocket_through_the_edge(edge):
    """The upgrade passes the edge: the events arrive as JSON messages up to the final
    state, then the service closes the socket normally."""
    photo = synthetic_jpeg(120, 90, seed=424_260)
    with client_from(edge, "127.0.0.6") as client:
        submitted = client.post(
            "/v1/jobs", params={"style": STYLE_A}, files={"file": ("a.jpg", photo, "image/jpeg")}
        )
    assert submitted.status_code == 202, submitted.text
    url = f"ws://{edge.host}:{edge.port}{submitted.json()['links']['events']}"
    events, close_code = websocket_messages(url, open_socket(edge, "127.0.0.6"))
    assert close_code == 1000
    assert events and events[-1]["event"] == "done", events
    assert events[-1]["data"]["state"] == "done"
