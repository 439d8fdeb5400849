"""Jobs over HTTP: waiting for one to end."""

from __future__ import annotations

import time

import httpx

ENDED = ("done", "failed", "cancelled")


def wait_done(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    """The job's record once it has ended, or as it is when ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["state"] in ENDED or time.monotonic() > deadline:
            return body
        time.sleep(0.2)
