"""Reading the app's metrics from Ray's Prometheus endpoint."""

from __future__ import annotations

import re
import time

import httpx

REQUESTS = "ray_animegan_requests_total"


def request_routes(metrics_url: str) -> set[str]:
    """The `route` labels the request counter has now."""
    text = httpx.get(metrics_url, timeout=10).text
    return set(re.findall(rf'^{REQUESTS}\{{[^}}]*route="([^"]+)"', text, re.MULTILINE))


def wait_for_routes(metrics_url: str, wanted: set[str], timeout_s: float = 30) -> set[str]:
    """The request counter's route labels once they include ``wanted`` (or at the
    deadline: the caller's assertion shows what is missing)."""
    deadline = time.monotonic() + timeout_s
    while not wanted <= (routes := request_routes(metrics_url)) and time.monotonic() < deadline:
        time.sleep(1)  # Ray exports a replica's metrics about once a second
    return routes
