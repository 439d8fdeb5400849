"""Every picture in Pillow's own test-image folder sent to the running service, over real
HTTP to a real Ray: ``POST /v1/stylize`` and ``POST /v1/jobs`` each answer a 2xx or a JSON
4xx (never a 5xx), and every job reaches an end: ``done``, or ``failed`` with an error
code that is the upload's (never ``internal_error``).

Four clients at once, each waiting for its job before sending the next file, so the
service's job queue never fills (a 503 there would be back-pressure, not a defect). At
size 32 the ~1,000 files take about a minute on two cores.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.pillow_corpus import corpus_files, name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 32
CLIENTS = 4
JOB_DEADLINE_S = 120  # a job not ended by then is a hang, reported as such
POLL_S = 0.05
PREFER_WAIT_S = 30  # under the client's 60 s timeout; a job still running is polled
RAW = {"content-type": "application/octet-stream"}
TERMINAL = ("done", "failed", "cancelled")


def _answer_problem(route: str, response: httpx.Response) -> str | None:
    """None for a 2xx or a 4xx with the JSON error body; else what is wrong."""
    if response.is_success:
        return None
    if 400 <= response.status_code < 500:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if code:
            return None
    return f"{route}: {response.status_code} {response.text[:200]}"


def _job_problem(client: httpx.Client, job_id: str) -> str | None:
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code != 200:
            return f"job {job_id}: GET answered {response.status_code} {response.text[:200]}"
        job = response.json()
        if job["state"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            return f"job {job_id}: still {job['state']} after {JOB_DEADLINE_S} s"
        time.sleep(POLL_S)
    return _job_problem_of(job)


def _job_problem_of(job: dict) -> str | None:
    """None for a job that ended as it should; else what is wrong."""
    error = job.get("error") or {}
    if job["state"] == "done":
        return None
    if job["state"] == "failed" and error.get("code") and error["code"] != "internal_error":
        return None
    return f"job {job['id']}: {job['state']} {error}"


def _send(client: httpx.Client, path: Path) -> list[str]:
    data = path.read_bytes()
    problems = []
    params = {"size": SIZE}
    stylized = client.post("/v1/stylize", params=params, content=data, headers=RAW)
    problems.append(_answer_problem("stylize", stylized))
    # Prefer: wait answers with the ended job when it ends soon (most do): no polling.
    headers = {**RAW, "Prefer": f"wait={PREFER_WAIT_S}"}
    submitted = client.post("/v1/jobs", params=params, content=data, headers=headers)
    problems.append(_answer_problem("jobs", submitted))
    if submitted.is_success and submitted.json()["state"] in TERMINAL:
        problems.append(_job_problem_of(submitted.json()))
    elif submitted.is_success:
        problems.append(_job_problem(client, submitted.json()["id"]))
    return [f"{name(path)}: {problem}" for problem in problems if problem]


def test_every_pillow_test_image_gets_a_2xx_or_a_json_4xx(client, base_url):
    files = corpus_files()
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(lambda path: _send(client, path), files))
    problems = [problem for found in outcomes for problem in found]
    elapsed = time.monotonic() - started
    print(f"{len(files)} files, stylized and submitted, in {elapsed:.0f} s")
    assert not problems, f"{len(problems)} of {len(files)} files got a wrong answer:\n" + (
        "\n".join(problems)
    )
