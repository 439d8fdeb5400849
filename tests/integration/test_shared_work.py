"""Shared work over real HTTP: hang-ups and per-request deadlines of coalesced requests.

The model's batches wait seconds before they run, so a request's work is reliably still
queued while other clients join it or hang up.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.support.http import post_then_hang_up
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import (
    app_args,
    deploy,
    stylizer_deployment,
    wait_healthy,
    wait_request_line,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH_WAIT_S = 5.0
DEADLINE_S = 4.0


@pytest.fixture(scope="module")
def slow_batches(default_app):
    deploy(
        app_args(request_timeout_s=DEADLINE_S),
        stylizer=stylizer_deployment(
            user_config={"max_batch_size": 8, "batch_wait_timeout_s": BATCH_WAIT_S}
        ),
    )
    wait_healthy(default_app)
    with httpx.Client(base_url=default_app, timeout=30) as client:
        yield client


def post_later(client: httpx.Client, data: bytes, delay_s: float, out: list) -> threading.Thread:
    def send():
        time.sleep(delay_s)
        started = time.monotonic()
        response = client.post("/v1/stylize", content=data, headers={"Content-Type": "image/jpeg"})
        out.append((response, time.monotonic() - started))

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_follower_gets_its_picture_when_the_leader_hangs_up(slow_batches):
    data = synthetic_jpeg(seed=901)
    results: list = []
    # The follower joins 2.5 s in (its deadline is 6.5 s); the work, queued 5 s, is still
    # waiting for the model when the leader hangs up at 3 s.
    follower = post_later(slow_batches, data, 2.5, results)
    leader = f"leader-{time.monotonic_ns()}"
    post_then_hang_up(
        str(slow_batches.base_url), data, after_s=3.0, headers={"X-Request-ID": leader}
    )
    follower.join(timeout=30)
    [(response, _)] = results
    assert response.status_code == 200, response.text
    # The leader's request, cancelled by Serve, is a hang-up (499), not the server's error.
    lines = wait_request_line(leader)
    assert [line["status"] for line in lines if "status" in line] == [499], lines
    assert not [line for line in lines if line["levelname"] == "ERROR"], lines
    assert response.headers["x-cache"] == "coalesced"
    # The work completed for the cache too.
    again = slow_batches.post("/v1/stylize", content=data, headers={"Content-Type": "image/jpeg"})
    assert again.headers["x-cache"] == "hit"


def test_each_coalesced_request_keeps_its_own_deadline(slow_batches):
    data = synthetic_jpeg(seed=902)
    early: list = []
    late: list = []
    threads = [
        post_later(slow_batches, data, 0.0, early),
        post_later(slow_batches, data, 2.5, late),
    ]
    for thread in threads:
        thread.join(timeout=30)
    [(first, first_s)] = early
    [(second, second_s)] = late
    assert first.status_code == 504 and first.json()["error"]["code"] == "timeout"
    assert first_s == pytest.approx(DEADLINE_S, abs=1.0)
    # Joined 2.5 s in, so its own deadline is 6.5 s after the first arrived: the work
    # (queued BATCH_WAIT_S) finishes before it.
    assert second.status_code == 200, second.text
    assert second.headers["x-cache"] == "coalesced"
    assert second_s < DEADLINE_S
