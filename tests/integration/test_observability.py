"""Request ids, the structured request log, and metrics on Ray's Prometheus endpoint."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import ray

from tests.support.http import post_then_hang_up
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import wait_request_line

pytestmark = pytest.mark.integration


def post(client, data: bytes, **headers) -> httpx.Response:
    return client.post(
        "/v1/stylize", files={"image": ("a.jpg", data)}, params={"size": 64}, headers=headers
    )


def test_request_id_is_returned_and_kept(client):
    response = post(client, synthetic_jpeg(seed=7001))
    assert re.fullmatch(r"[0-9a-f-]{36}", response.headers["x-request-id"])
    mine = post(client, synthetic_jpeg(seed=7001), **{"X-Request-ID": "trace-abc.123"})
    assert mine.headers["x-request-id"] == "trace-abc.123"


def _log_lines(request_id: str) -> list[dict]:
    """The request lines in the Ingress replicas' Serve log files: every line of them is
    one JSON object (`logging_config: encoding: JSON`, as serve_config.yaml has it)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines = []
    for path in logs.glob("replica_animegan_Ingress_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if request_id in line:
                fields = json.loads(line)
                if "status" in fields:
                    lines.append(fields)
    return lines


def test_one_structured_log_line_per_request(client):
    request_id = f"log-check-{time.monotonic_ns()}"
    post(client, synthetic_jpeg(seed=7002), **{"X-Request-ID": request_id})
    deadline = time.monotonic() + 10
    while not (lines := _log_lines(request_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["request_id"] == request_id and line["levelname"] == "INFO"
    assert line["route"] == "/v1/stylize" and line["status"] == 200
    assert line["method"] == "POST" and line["message"].startswith("POST /v1/stylize 200 ")
    assert line["cache"] == "miss" and line["size"] == 64
    assert set(line["timings_ms"]) == {"decode", "queue", "inference", "encode"}
    assert line["deployment"].endswith("Ingress") and line["replica"]  # Serve's own fields


def test_a_client_that_hangs_up_mid_upload_is_logged_as_499_not_as_an_error(base_url):
    """Through Serve's proxy: the replica's receive fails once the proxy cancelled its side
    of the request. Its line says 499, and nothing is logged as an error (it was a 500 with
    a traceback; a hang-up during the work: ``test_shared_work.py``)."""
    request_id = f"gone-mid-upload-{time.monotonic_ns()}"
    photo = synthetic_jpeg(640, 480, seed=7005)
    post_then_hang_up(
        base_url, photo, 0.5, sent=len(photo) // 2, headers={"X-Request-ID": request_id}
    )
    lines = wait_request_line(request_id)
    assert [line["status"] for line in lines if "status" in line] == [499], lines
    assert not [line for line in lines if line["levelname"] == "ERROR"], lines


def _package_lines(message: str) -> list[dict]:
    """The Ingress replicas' JSON log lines whose message is ``message``."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [
        fields
        for path in logs.glob("replica_animegan_Ingress_*.log")
        for line in path.read_text(errors="replace").splitlines()
        if message in line and (fields := json.loads(line))["message"] == message
    ]


def test_the_package_s_own_lines_are_in_the_replica_s_json_log(client):
    """A module's INFO line (a job's end, logged by the job runner) is in the replica's log
    file as Serve writes its own: JSON, with the replica's fields."""
    files = {"image": ("a.jpg", synthetic_jpeg(seed=7003), "image/jpeg")}
    job = client.post("/v1/jobs", files=files, params={"size": 64}, headers={"Prefer": "wait=60"})
    assert job.status_code == 200 and job.json()["state"] == "done", job.text
    message = f"job {job.json()['id']} done"
    deadline = time.monotonic() + 10
    while not (lines := _package_lines(message)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(lines) == 1, lines
    assert lines[0]["levelname"] == "INFO" and lines[0]["deployment"].endswith("Ingress")
    assert lines[0]["replica"]


def _scrape(metrics_url: str) -> dict[str, float]:
    """Sum each metric name over its label sets."""
    totals: dict[str, float] = {}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("ray_animegan_"):
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def _scrape_until(metrics_url: str, predicate, timeout_s: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        totals = _scrape(metrics_url)
        if predicate(totals) or time.monotonic() > deadline:
            return totals
        time.sleep(1)


def test_metrics_move_after_requests(client, metrics_url):
    before = _scrape_until(metrics_url, lambda t: "ray_animegan_requests_total" in t)
    data = synthetic_jpeg(seed=7003)
    for _ in range(3):
        assert post(client, data).status_code == 200
    post(client, synthetic_jpeg(seed=7004))

    def moved(totals: dict) -> bool:
        return all(
            totals.get(name, 0) > before.get(name, 0)
            for name in (
                "ray_animegan_requests_total",
                "ray_animegan_cache_results_total",
                "ray_animegan_batch_size_count",
                "ray_animegan_inference_ms_count",
                "ray_animegan_decode_ms_count",
                "ray_animegan_encode_ms_count",
            )
        )

    after = _scrape_until(metrics_url, moved)
    assert moved(after), {k: (before.get(k), v) for k, v in after.items()}
    assert after["ray_animegan_model_loads_total"] >= 2
    assert "ray_animegan_cache_bytes" in after and "ray_animegan_cache_entries" in after
    # Encode times are labelled by the output format's name, as the dashboard groups them.
    encode_formats = set(
        re.findall(
            r'ray_animegan_encode_ms_count\{[^}]*format="([^"]+)"', httpx.get(metrics_url).text
        )
    )
    # Other tests in the session ask for JPEG and WebP too; every label must be a plain name.
    assert "png" in encode_formats, encode_formats
    assert encode_formats <= {"png", "jpeg", "webp"}, encode_formats
