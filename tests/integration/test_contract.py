"""The OpenAPI document is an honest contract: schemathesis fuzzes the running service
(real local Ray, real HTTP) against ``/openapi.json`` with every check it has.

What the run must show: no 5xx, no status, content type, header or body the document does
not describe, schema-valid requests accepted and schema-violating ones refused. The few
places where schemathesis' defaults cannot hold for this API are set in ``ST_CONFIG`` and
on the command line below, each with its reason; nothing else is excluded.

Schemathesis runs as its own process (the ``st`` CLI, through ``python -m``): the CLI runs
its whole plan (the coverage phase's boundary values, wrong content types and unsupported
methods, then fuzzing) with exactly the checks `--checks all` names, and writes a JSON
report and an event log that the test reads. ``contract_hooks.py`` teaches it to make real
pictures for the image media types, so that positive cases reach the stylized answer
rather than a 400 for bytes that are not a picture.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.pictures import synthetic_jpeg
from tests.support.serve import app_args, deploy, ingress_deployment, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOOKS = Path(__file__).with_name("contract_hooks.py")
MAX_EXAMPLES = 40  # per operation in the fuzzing phase; the run takes about a minute
SEED = 20240917  # with the example database off, the same seed sends the same requests
RUN_TIMEOUT_S = 420

# The service runs with an API key, as in production: schemathesis sends it on every
# request (a request without one is the 401 the document describes, tested elsewhere).
API_KEY = "contract-key"

# schemathesis.toml for the run: its defaults, except where named.
ST_CONFIG = f"""
headers = {{ Authorization = "Bearer {API_KEY}" }}

[cache]
# Nothing kept between runs: each run starts from its seed alone.
enabled = false

[checks.negative_data_rejection]
# Schemathesis' default list of statuses that count as "rejected", plus 413: more
# multipart parts than the document's maxItems (the batch route's max_batch_images) is
# refused as Content Too Large, which is the right status for it (RFC 9110, 15.5.14).
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx",
]

[[operations]]
include-name = "POST /v1/jobs"
# An Idempotency-Key sent again with another upload or other options is refused with 422
# (the status the IETF Idempotency-Key draft names): a valid request, refused for what was
# sent before it. Schemathesis' default list, plus 422, for this operation only.
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx",
]

[[operations]]
include-name = "GET /v1/live"
# A WebSocket's path: valid options over plain HTTP are answered 426 Upgrade Required (the
# answer the document gives it; the stream itself is tested in test_live.py). Schemathesis'
# default list, plus 426, for this operation only.
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "426", "429", "5xx",
]
"""

ST_OPTIONS = [
    "--checks",
    "all",
    # A DELETE cancels a job and keeps its record (state `cancelled`) until it expires, so
    # that its owner can still read what became of it: reading it afterwards is the design.
    # (On the command line: `--checks all` there would enable it again over the config.)
    "--exclude-checks",
    "use_after_free",
    "--max-examples",
    str(MAX_EXAMPLES),
    "--seed",
    str(SEED),
    "--generation-database",
    "none",
    # One request at a time: the service under test needs the two cores more.
    "--workers",
    "1",
    "--request-timeout",
    "60",
    # `all` includes max_response_time, 10 s by default. This is a contract test, not a
    # speed test (the benchmark measures speed), and a loaded two-core machine can take
    # longer for a 256 px picture; the bound is the app's own deadline
    # (request_timeout_s, 60 s in the test app), past which it answers 504 itself.
    "--max-response-time",
    "60",
    "--no-color",
]

# Warnings the run gives by design: every valid request to a WebSocket's path over plain
# HTTP is answered 426, its one documented answer, which schemathesis reads as "valid
# requests mostly refused" (validation_mismatch).
EXPECTED_WARNINGS = {("validation_mismatch", "GET /v1/live")}

# The checks a run must have performed; `--checks all` names them.
CORE_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
}

# Deviations from the running app that schemathesis would otherwise report, and that come
# from Ray Serve's HTTP proxy rather than the app (a plain-text 404 for a path outside the
# app, a 400 for a request line uvicorn cannot parse): none occurs, because schemathesis
# only calls the documented paths and first probes what the HTTP layer accepts (its probe
# reports NUL bytes in headers unsupported, so it sends none). Should one appear, the
# interactions check below reports it with the request.


def run_schemathesis(base_url: str, workdir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    config = workdir / "schemathesis.toml"
    config.write_text(ST_CONFIG)
    events = workdir / "events.ndjson"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        *ST_OPTIONS,
        "--report",
        "json,ndjson",
        "--report-json-path",
        str(workdir / "report.json"),
        "--report-ndjson-path",
        str(events),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    # cwd: schemathesis and Hypothesis write their folders there, never into the checkout.
    # subprocess.run kills the process it started if the timeout passes.
    completed = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return completed, events


def decoded(content) -> bytes:
    if isinstance(content, dict) and "$base64" in content:
        return base64.b64decode(content["$base64"])
    return (content or "").encode() if isinstance(content, str) else b""


def interactions(events: Path) -> list[dict]:
    """Every request schemathesis sent and what came back, from its NDJSON event log."""
    found = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        checks = finished["recorder"].get("checks", {})
        for case_id, interaction in finished["recorder"].get("interactions", {}).items():
            request, response = interaction["request"], interaction.get("response")
            found.append(
                {
                    "phase": finished["phase"],
                    "method": request["method"],
                    "path": request["uri"].split("?")[0].split("/", 3)[-1],
                    "uri": request["uri"],
                    "status": response["status_code"] if response else None,
                    "content_type": (response["headers"].get("content-type") or [""])[0]
                    if response
                    else None,
                    "body": decoded(response["content"]) if response else b"",
                    "checks": {check["name"] for check in checks.get(case_id, [])},
                }
            )
    return found


@pytest.fixture(scope="module")
def keyed(default_app):
    """The test app with an API key required."""
    env = {"ANIMEGAN_API_KEYS": API_KEY}
    deploy(
        app_args(),
        ingress=ingress_deployment(
            ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
        ),
    )
    wait_healthy(default_app)
    with httpx.Client(
        base_url=default_app, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        yield default_app, client


def test_openapi_document_carries_the_running_limits(keyed):
    _, client = keyed
    document = client.get("/openapi.json").json()
    limits = client.get("/v1/styles").json()
    paths = document["paths"]
    for path in ("/v1/stylize", "/v1/stylize/batch", "/v1/jobs"):
        operation = paths[path]["post"]
        params = {p["name"]: p for p in operation["parameters"]}
        assert params["style"]["schema"]["enum"] == [s["name"] for s in limits["styles"]]
        assert params["format"]["schema"]["enum"] == limits["formats"]
        largest = limits["max_size"] if path == "/v1/jobs" else limits["max_sync_size"]
        assert params["size"]["schema"] == {
            "type": "integer",
            "minimum": limits["min_size"],
            "maximum": largest,
        }
        assert params["quality"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
        assert str(limits["max_bytes"]) in operation["requestBody"]["description"]
        expected = {"200", "400", "401", "408", "413", "415", "422", "429", "500", "503"}
        expected |= {"202", "507"} if path == "/v1/jobs" else {"504"}
        assert set(operation["responses"]) == expected
    batch_form = paths["/v1/stylize/batch"]["post"]["requestBody"]["content"]
    images = batch_form["multipart/form-data"]["schema"]["properties"]["images"]
    assert images["maxItems"] == limits["max_batch_images"]
    raw = paths["/v1/stylize"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/octet-stream"} <= set(raw)
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == error, (method, path, status)


def test_picture_part_without_filename_is_read_as_the_picture(keyed):
    _, client = keyed
    """RFC 7578 makes a part's filename optional; a picture sent without one is still it."""
    boundary = "contract-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + synthetic_jpeg(64, 48, seed=77)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/v1/stylize",
        content=body,
        params={"size": 32},
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"


def test_schemathesis_finds_no_contract_violation(keyed, tmp_path):
    base_url, client = keyed
    documented = sum(len(ops) for ops in client.get("/openapi.json").json()["paths"].values())
    completed, events = run_schemathesis(base_url, tmp_path)
    output = completed.stdout[-12000:] + completed.stderr[-4000:]
    report_path = tmp_path / "report.json"
    assert report_path.is_file(), output
    report = json.loads(report_path.read_text())

    assert report["complete"], output
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    assert completed.returncode == 0, output
    operations = report["operations"]
    # Every operation of the live document: the next route cannot be left out.
    assert operations["tested"] == operations["total"] == documented, operations
    assert operations["errored"] == 0, operations
    assert report["phases"]["coverage"]["status"] == "success", report["phases"]
    assert report["phases"]["fuzzing"]["status"] == "success", report["phases"]
    warnings = {
        name: [operation for operation in operations if (name, operation) not in EXPECTED_WARNINGS]
        for name, operations in report["warnings"].items()
    }
    assert not any(warnings.values()), report["warnings"]

    seen = interactions(events)
    assert seen, "schemathesis recorded no request"
    ran = set().union(*(item["checks"] for item in seen))
    assert ran >= CORE_CHECKS, CORE_CHECKS - ran

    # What the checks above already say, stated directly: no 5xx, and every refusal is
    # the API's JSON error, never a proxy's or framework's plain text.
    for item in seen:
        where = f"{item['method']} {item['uri']} -> {item['status']}"
        assert item["status"] is not None and item["status"] < 500, where
        if item["status"] >= 400:
            assert item["content_type"] == "application/json", where
            error = json.loads(item["body"])["error"]
            assert set(error) == {"code", "message"}, where

    # The fuzzer reached the stylized answer, so positive_data_acceptance was not vacuous:
    # real pictures in, pictures out, on both routes.
    answered = Counter((item["path"], item["status"]) for item in seen)
    assert answered[("v1/stylize", 200)] >= 10, answered
    assert answered[("v1/stylize/batch", 200)] >= 10, answered
    for item in seen:
        if item["path"] == "v1/stylize" and item["status"] == 200:
            Image.open(io.BytesIO(item["body"])).load()
    batch_items = [
        result
        for item in seen
        if item["path"] == "v1/stylize/batch" and item["status"] == 200
        for result in json.loads(item["body"])["results"]
    ]
    assert any(result["status"] == 200 for result in batch_items), batch_items[:3]
