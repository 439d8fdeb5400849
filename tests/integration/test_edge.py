"""The shipped nginx edge (configs/nginx/animegan.conf), run by Debian's nginx in front of
the real service.

The tests render the shipped file for the test application's config (the bounds that
follow from the app's limits are derived from it: tests/support/nginx_edge.py) with this
session's addresses and smaller numbers of their own (a 1 MiB bound on a picture's body,
2 s timeouts, 2 requests/s), so that every check takes seconds; the rendering swaps exact
directives and fails if one of them is no longer in the file. The edge's picture bound is
rendered *below* the test app's own upload limit (2 MiB): an oversize body that the edge
passed on would then reach an app that accepts its size, so a 413 can only come from the
edge. Each refusal is also looked up in the edge's JSON access log, where an empty
``upstream_addr`` says that nginx answered without contacting Serve.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.support.nginx_edge import (
    Edge,
    MiB,
    directive_value,
    new_id,
    open_socket,
    render_for,
    replace_exactly,
    request_head,
    running_edge,
    set_directive,
    wait_for_close,
)
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import STYLE_A, free_port, make_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEST_APP = make_config()  # the session's application (tests/support/serve.py)
EDGE_BODY_LIMIT = 1 * MiB  # rendered for every route but the batch and job ones
APP_MAX_BYTES = TEST_APP.limits.max_bytes  # the test app's own limit: 2 MiB
OVERSIZE = EDGE_BODY_LIMIT + MiB // 2  # over the edge's bound, under the app's
BODY_TIMEOUT_S = 2
HEADER_TIMEOUT_S = 2
RATE_PER_S = 2
BURST = 5


def _edge_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([km]?)", value).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20}[unit]


# The bounds derived from the test app's config, as the rendered edge has them.
EDGE_BATCH_LIMIT = _edge_size(
    directive_value(render_for(TEST_APP), "client_max_body_size", "location = /v1/stylize/batch")
)
EDGE_JOBS_LIMIT = _edge_size(
    directive_value(render_for(TEST_APP), "client_max_body_size", "location = /v1/jobs")
)

assert EDGE_BODY_LIMIT < OVERSIZE < APP_MAX_BYTES < EDGE_BATCH_LIMIT < EDGE_JOBS_LIMIT


def quick_numbers(text: str) -> str:
    """The test's own, smaller numbers: quick timeouts and budgets, and a picture bound
    below the app's (see the module's docstring)."""
    text = set_directive(text, "client_max_body_size", f"{EDGE_BODY_LIMIT // MiB}m")
    return replace_exactly(
        text,
        [
            ("client_body_timeout 15s;", f"client_body_timeout {BODY_TIMEOUT_S}s;", 1),
            ("client_header_timeout 10s;", f"client_header_timeout {HEADER_TIMEOUT_S}s;", 1),
            ("rate=10r/s", f"rate={RATE_PER_S}r/s", 1),
            ("burst=20 ", f"burst={BURST} ", 6),
        ],
    )


@pytest.fixture
def edge(base_url, tmp_path) -> Iterator[Edge]:
    """An nginx of the test's own (it starts in milliseconds): its rate-limit zone, its
    connections and its access log begin empty, whatever the tests before it sent."""
    upstream = urlsplit(base_url).netloc
    with running_edge(tmp_path / "edge", upstream, TEST_APP, quick_numbers) as on:
        yield on


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)["error"]


def read_reply(sock: socket.socket, timeout_s: float = 10) -> Reply:
    sock.settimeout(timeout_s)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def send_until_answered(sock: socket.socket, pieces: Iterator[bytes], pace_s: float = 0) -> int:
    """Send pieces until the server's answer is readable (or it closed); bytes sent."""
    sent = 0
    for piece in pieces:
        if answered(sock):
            break
        try:
            sock.sendall(piece)
        except OSError:  # the edge closed the connection after answering
            break
        sent += len(piece)
        if pace_s:
            time.sleep(pace_s)
    return sent


def assert_edge_answered(edge: Edge, request_id: str, status: int) -> dict:
    entry = edge.log_entry(request_id)
    assert entry["status"] == str(status), entry
    assert entry["upstream_addr"] == "", f"nginx passed the request to Serve: {entry}"
    return entry


# ---- Through the edge to the real service ----------------------------------------------


def test_upload_passes_with_its_headers_and_a_repeat_is_a_cache_hit(edge, base_url):
    photo = synthetic_jpeg(200, 150, seed=424_242)
    request_id = new_id("upload")
    with httpx.Client(base_url=edge.url, timeout=60) as client:

        def upload(headers: dict[str, str]) -> httpx.Response:
            files = {"image": ("photo.jpg", photo, "image/jpeg")}
            return client.post(
                "/v1/stylize", params={"style": STYLE_A}, files=files, headers=headers
            )

        first = upload({"X-Request-ID": request_id})
        second = upload({})
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(first.content)).format == "PNG"
    assert first.headers["x-cache"] == "miss"
    assert first.headers["x-style"] == STYLE_A
    assert first.headers["etag"].strip('"')
    assert first.headers["x-request-id"] == request_id  # the client's id reached Serve
    assert second.status_code == 200, second.text
    assert second.headers["x-cache"] == "hit"
    assert second.headers["etag"] == first.headers["etag"]
    assert second.content == first.content
    # No id from the client: nginx's own (32 hex digits) went to Serve and came back.
    assert re.fullmatch(r"[0-9a-f]{32}", second.headers["x-request-id"])
    entry = edge.log_entry(request_id)
    assert entry["upstream_addr"] == urlsplit(base_url).netloc
    assert entry["upstream_status"] == "200"


def test_a_job_goes_through_the_edge(edge):
    """A job through the edge: submitted, its event stream read to the final state (the
    events location is unbuffered), its result fetched."""
    photo = synthetic_jpeg(240, 180, seed=424_250)
    with httpx.Client(base_url=edge.url, timeout=60) as client:
        files = {"image": ("photo.jpg", photo, "image/jpeg")}
        submitted = client.post("/v1/jobs", params={"style": STYLE_A}, files=files)
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        states = []
        with client.stream("GET", job["links"]["events"]) as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
            states = [
                line.removeprefix("event: ")
                for line in events.iter_lines()
                if line.startswith("event: ")
            ]
        result = client.get(job["links"]["result"])
    assert states and states[-1] == "done", states
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"


def test_the_batch_route_has_the_larger_bound(edge):
    """A body over the default bound but under the batch bound reaches the app."""
    junk = b"\x00" * (EDGE_BODY_LIMIT + MiB // 4)  # not a picture: fails alone
    files = [
        ("images", ("a.jpg", synthetic_jpeg(seed=424_243), "image/jpeg")),
        ("images", ("b.jpg", junk, "image/jpeg")),
    ]
    with httpx.Client(base_url=edge.url, timeout=60) as client:
        response = client.post("/v1/stylize/batch", files=files)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["status"] == 200, first
    assert second["status"] in (400, 415), second  # the app read it, and refused it alone
    assert second["error"]["code"] in ("undecodable_image", "unsupported_format")


def test_the_apps_own_errors_pass_through_untouched(edge):
    """nginx rewrites only its own errors; the app's JSON arrives as the app sent it."""
    request_id = new_id("passthrough")
    with httpx.Client(base_url=edge.url, timeout=60) as client:
        response = client.post(
            "/v1/stylize",
            params={"style": "no-such-style"},
            content=b"x",
            headers={"Content-Type": "image/jpeg", "X-Request-ID": request_id},
        )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_style"
    assert edge.log_entry(request_id)["upstream_status"] == "422"


# ---- Refusals at the edge --------------------------------------------------------------


def test_declared_oversize_body_is_refused_before_any_of_it_is_sent(edge):
    request_id = new_id("declared")
    headers = {"Content-Type": "image/jpeg", "Content-Length": str(OVERSIZE)}
    with open_socket(edge) as sock:
        sock.sendall(request_head("POST", "/v1/stylize", request_id, headers))
        reply = read_reply(sock)  # no body byte was sent; the app would wait for them
    assert reply.status == 413
    assert reply.error()["code"] == "payload_too_large"
    assert reply.headers["x-request-id"] == request_id
    assert_edge_answered(edge, request_id, 413)


def test_chunked_oversize_body_is_refused_while_it_streams(edge):
    """No length announced: nginx counts while it reads and answers mid-body. The body is
    never finished and stays under the app's limit, so the 413 cannot be the app's."""
    request_id = new_id("chunked")
    headers = {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}
    piece = 64 * 1024
    chunk = b"%x\r\n%b\r\n" % (piece, b"\xff" * piece)
    with open_socket(edge) as sock:
        sock.sendall(request_head("POST", "/v1/stylize", request_id, headers))
        sent_chunks = send_until_answered(sock, iter([chunk] * (OVERSIZE // piece)), 0.005)
        reply = read_reply(sock)
    sent = sent_chunks // len(chunk) * piece
    print(f"chunked: 413 after {sent} body bytes (edge bound {EDGE_BODY_LIMIT})")
    assert reply.status == 413
    assert reply.error()["code"] == "payload_too_large"
    assert EDGE_BODY_LIMIT - piece <= sent <= OVERSIZE
    assert_edge_answered(edge, request_id, 413)


def test_stalled_body_is_cut_off_at_the_edge(edge):
    """Part of the body, then silence: nginx drops the connection after
    client_body_timeout. It sends no answer (nginx ends a timed-out request without one,
    whatever error_page says) and logs 408; Serve never sees the request."""
    request_id = new_id("stall")
    headers = {"Content-Type": "image/jpeg", "Content-Length": "100000"}
    with open_socket(edge) as sock:
        sock.sendall(request_head("POST", "/v1/stylize", request_id, headers) + b"\xff" * 10_000)
        elapsed, received = wait_for_close(sock, BODY_TIMEOUT_S + 10)
    print(f"stalled body: connection closed after {elapsed:.2f} s (timeout {BODY_TIMEOUT_S} s)")
    assert received == b""
    # Not before the timeout; that it was the timeout (and not, say, a crash) is the 408.
    assert elapsed >= BODY_TIMEOUT_S - 0.5
    entry = assert_edge_answered(edge, request_id, 408)
    assert entry["bytes_out"] == "0"


def test_stalled_headers_are_cut_off_at_the_edge(edge):
    request_id = new_id("slowheaders")
    with open_socket(edge) as sock:
        sock.sendall(request_head("GET", "/healthz", request_id, {})[:-2])  # no blank line
        elapsed, received = wait_for_close(sock, HEADER_TIMEOUT_S + 10)
    print(f"stalled headers: connection closed after {elapsed:.2f} s")
    assert received == b""
    assert elapsed >= HEADER_TIMEOUT_S - 0.5  # not before the timeout; the 408 says it was it
    assert_edge_answered(edge, request_id, 408)


@pytest.mark.parametrize(
    ("label", "headers"),
    [
        ("one-huge-header", {"X-Huge": "a" * 16_000}),
        ("header-flood", {f"X-Flood-{i}": "b" * 1000 for i in range(200)}),
    ],
)
def test_oversize_headers_are_refused_as_json(edge, label, headers):
    request_id = new_id(label)
    head = request_head("GET", "/v1/styles", request_id, headers)
    lines = iter(head[i : i + 1024] for i in range(0, len(head), 1024))
    with open_socket(edge) as sock:
        sent = send_until_answered(sock, lines, 0.001)
        reply = read_reply(sock)
    print(f"{label}: 431 after {sent} of {len(head)} header bytes")
    assert reply.status == 431
    assert reply.error()["code"] == "headers_too_large"
    assert reply.headers["x-request-id"] == request_id
    assert_edge_answered(edge, request_id, 431)


def test_a_burst_from_one_client_is_rate_limited_and_others_are_not(edge):
    """The burst comes from 127.0.0.2 (its own budget: the key is the client address), so
    the other tests' requests from 127.0.0.1 neither count nor suffer."""
    burst = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=edge.url, timeout=30, transport=burst) as noisy:
        replies = [noisy.get("/v1/styles") for _ in range(40)]
        limited = [r for r in replies if r.status_code == 429]
        print(f"burst: {len(limited)} of {len(replies)} refused with 429")
        assert limited, [r.status_code for r in replies]
        assert {r.status_code for r in replies} == {200, 429}
        refusal = limited[-1]
        assert refusal.json()["error"]["code"] == "rate_limited"
        assert refusal.headers["content-type"] == "application/json"
        retry_after = int(refusal.headers["retry-after"])
        assert retry_after >= 1

        # Another client is not held back by this one's budget.
        assert httpx.get(f"{edge.url}/v1/styles", timeout=30).status_code == 200

        time.sleep(retry_after)
        again = noisy.get("/v1/styles")
        assert again.status_code == 200, again.text


# ---- Serve unreachable ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "status", "code"),
    [("refusing", 503, "unavailable"), ("silent", 504, "timeout")],
)
def test_an_unreachable_service_is_json_with_retry_after(tmp_path, upstream, status, code):
    """Nothing on the port (502 inside nginx, answered 503), or a port that accepts and
    never answers (nginx's 504 after proxy_read_timeout, rendered as 1 s)."""
    with contextlib.ExitStack() as stack:
        if upstream == "refusing":
            port = free_port()
        else:
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)  # the kernel completes connections; nobody reads them
            port = listener.getsockname()[1]

        def quick(text: str) -> str:
            return set_directive(quick_numbers(text), "proxy_read_timeout", "1s")

        running = stack.enter_context(running_edge(tmp_path, f"127.0.0.1:{port}", TEST_APP, quick))
        response = httpx.get(f"{running.url}/v1/styles", timeout=30)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert int(response.headers["retry-after"]) >= 1
