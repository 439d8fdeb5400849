"""The upload page makes large prints as jobs: sizes above max_sync_size go to POST /v1/jobs,
the page follows the job's events with a real progress bar, fetches the result, and can
cancel it.

Real local Ray, real HTTP, and the system Chromium (tests/support/pages.py).
"""

from __future__ import annotations

import re

import httpx
import pytest
from PIL import Image

from tests.support.pages import (
    MAX_SIZE,
    SYNC_SIZE,
    TIMEOUT_MS,
    is_jobs_deploy,
    jobs_args,
    open_page,
    record_card_changes,
    slow_batches,
    wait_styles,
)
from tests.support.paths import ARTIFACTS
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import (
    STYLE_A,
    deploy,
    ingress_deployment,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB_SIZE = 384  # above SYNC_SIZE: a job
KEY = "jobs-page-key"
LEFT = r"(\d+ min )?\d+ s"  # the time left, as the page words it


@pytest.fixture(scope="module")
def jobs_app(default_app):
    """Jobs above 128 px, up to 512; the default app comes back after the module."""
    deploy(jobs_args(), stylizer=slow_batches())
    wait_healthy(default_app)
    wait_styles(default_app, is_jobs_deploy)
    return default_app


def start(page, path, size: int):
    """Choose the options, upload the file; return the newest card and the POST's answer."""
    page.get_by_label(STYLE_A, exact=True).check()
    page.get_by_label("Size (longer side, px)").fill(str(size))
    page.get_by_label("Format").select_option("png")
    with page.expect_response(
        lambda r: r.request.method == "POST" and httpx.URL(r.url).path == "/v1/jobs"
    ) as submitted:
        page.get_by_label("Choose photos").set_input_files(path)
    return page.locator("#results .card").first, submitted.value


def wait_state(card, state: str) -> None:
    from playwright.sync_api import expect

    expect(card).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


def test_a_large_size_is_made_as_a_job_with_a_progress_bar(browser, jobs_app, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "large.jpg"
    path.write_bytes(synthetic_jpeg(640, 480, seed=73_001))
    context, page, errors = open_page(browser, jobs_app)
    try:
        # The size hint says which sizes are jobs.
        expect(page.locator("#size-about")).to_have_text(
            f"Above {SYNC_SIZE} px: made as a job, with a progress bar"
        )
        expect(page.locator("#limits")).to_contain_text(
            f"sizes from 16 to {MAX_SIZE} px. Sizes above {SYNC_SIZE} px are made as jobs"
        )
        calls: list[tuple[str, str]] = []
        page.on("request", lambda r: calls.append((r.method, httpx.URL(r.url).path)))
        record_card_changes(page)

        card, submitted = start(page, path, JOB_SIZE)
        assert submitted.status == 202
        job = submitted.json()
        assert job["options"]["size"] == JOB_SIZE
        # While it runs (the batch wait at least): the bar, the time left, Cancel.
        expect(card.locator(".state")).to_contain_text(re.compile(rf"about {LEFT} left"))
        expect(card.get_by_role("button", name="Cancel")).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "page-job-running.png", full_page=True)
        wait_state(card, "done")

        job_path = f"/v1/jobs/{job['id']}"
        api = [call for call in calls if call[1].startswith("/v1/") and call[1] != "/v1/examples"]
        assert ("POST", "/v1/jobs") in api
        assert ("GET", f"{job_path}/events") in api
        assert ("GET", f"{job_path}/result") in api
        assert not [call for call in api if call[1].startswith("/v1/stylize")]

        # The bar followed the job's own progress (the events), never back, to complete.
        seen = page.evaluate("window.seen")
        following = [row for row in seen if row[0] in ("submitted", "running")]
        values = [float(row[1]) for row in following]
        assert values == sorted(values), following
        assert any(0 < value < 100 for value in values), following
        assert card.locator("progress").evaluate("p => p.value") == 100
        # The spoken value and the state line name the state and the time left.
        spoken = [row[3] or "" for row in following if row[0] == "running"]
        assert any(re.fullmatch(rf"Running \d+% · about {LEFT} left", s) for s in spoken), seen
        shown = [row[2] for row in following]
        assert any(re.fullmatch(rf"Running \d+% · about {LEFT} left · \d+\.\d s", s) for s in shown)

        # The picture and its download, as on the synchronous path.
        after = card.locator("img.after")
        expect(after).to_be_visible()
        assert after.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [JOB_SIZE, 288]
        expect(card.locator(".meta")).to_contain_text(f"{JOB_SIZE}×288 PNG")
        expect(card.locator(".meta")).to_contain_text(re.compile(r"cache (miss|hit|coalesced)"))
        expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
        expect(page.get_by_role("status")).to_contain_text("done")
        with page.expect_download() as download_info:
            card.get_by_role("link", name=re.compile("Download")).click()
        download = download_info.value
        assert download.suggested_filename == f"large-{STYLE_A}.png"
        saved = Image.open(download.path())
        assert (saved.format, saved.size) == ("PNG", (JOB_SIZE, 288))
        result = httpx.get(f"{jobs_app}{job_path}/result", timeout=30)
        assert result.content == download.path().read_bytes()  # the job's very picture
        page.screenshot(path=ARTIFACTS / "page-job.png", full_page=True)
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_a_running_job_is_cancelled_from_the_page(browser, jobs_app, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "print.jpg"
    path.write_bytes(synthetic_jpeg(800, 600, seed=73_002))
    context, page, errors = open_page(browser, jobs_app)
    try:
        card, submitted = start(page, path, MAX_SIZE)
        job_id = submitted.json()["id"]
        cancel = card.get_by_role("button", name="Cancel")
        with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
            cancel.click()
        assert httpx.URL(deleted.value.url).path == f"/v1/jobs/{job_id}"
        assert deleted.value.status == 200
        assert deleted.value.json()["state"] == "cancelled"  # it was running: stopped
        wait_state(card, "cancelled")
        expect(card.locator(".state")).to_have_text("Cancelled")
        expect(page.get_by_role("status")).to_contain_text("cancelled")
        expect(cancel).to_be_hidden()
        expect(card.locator("img.after")).to_be_hidden()
        expect(card.locator(".download")).to_be_hidden()
        expect(card.locator(".error")).to_be_hidden()
        gone = httpx.get(f"{jobs_app}/v1/jobs/{job_id}", timeout=30)
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "unknown_job"
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_a_broken_events_stream_falls_back_to_polling(browser, jobs_app, tmp_path):
    path = tmp_path / "polled.jpg"
    path.write_bytes(synthetic_jpeg(400, 300, seed=73_003))
    context, page, errors = open_page(browser, jobs_app)
    try:
        # The stream opens, carries only a keep-alive comment, and ends: not a final state.
        page.route(
            re.compile(r"/v1/jobs/[0-9a-f]+/events$"),
            lambda route: route.fulfill(
                status=200, content_type="text/event-stream", body=": keep-alive\n\n"
            ),
        )
        polls: list[str] = []

        def asked_for_the_job(request) -> None:
            path = httpx.URL(request.url).path
            if request.method == "GET" and re.fullmatch(r"/v1/jobs/[0-9a-f]+", path):
                polls.append(path)

        page.on("request", asked_for_the_job)
        card, submitted = start(page, path, 192)
        wait_state(card, "done")
        assert polls, "the page never asked for the job itself"
        assert set(polls) == {f"/v1/jobs/{submitted.json()['id']}"}
        size = card.locator("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [192, 144]
        assert card.locator("progress").evaluate("p => p.value") == 100
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_a_failed_job_shows_its_error_like_other_errors(browser, jobs_app, tmp_path):
    from playwright.sync_api import expect

    # A smooth gradient has no face: portrait mode's job fails with `no_face`, at run time.
    path = tmp_path / "faceless.jpg"
    path.write_bytes(synthetic_jpeg(400, 300, seed=73_005))
    context, page, errors = open_page(browser, jobs_app)
    try:
        page.get_by_label("Portrait", exact=True).select_option("crop")
        card, submitted = start(page, path, 192)
        assert submitted.status == 202  # accepted: the face search runs in the job
        wait_state(card, "failed")
        job = httpx.get(f"{jobs_app}/v1/jobs/{submitted.json()['id']}", timeout=30).json()
        assert (job["state"], job["error"]["code"]) == ("failed", "no_face")
        expect(card.locator(".error")).to_have_text(job["error"]["message"])
        expect(page.get_by_role("status")).to_contain_text(job["error"]["message"])
        expect(card.locator(".state")).to_have_text("Failed")
        expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
        expect(card.locator(".download")).to_be_hidden()
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_with_an_api_key_every_job_call_carries_it(browser, jobs_app, tmp_path):
    actor_options = {"num_cpus": 0, "runtime_env": {"env_vars": {"ANIMEGAN_API_KEYS": KEY}}}
    deploy(
        jobs_args(),
        stylizer=slow_batches(),
        ingress=ingress_deployment(ray_actor_options=actor_options),
    )
    wait_healthy(jobs_app)
    wait_styles(jobs_app, lambda answer: answer.status_code == 401)
    bearer = {"Authorization": f"Bearer {KEY}"}
    wait_styles(jobs_app, is_jobs_deploy, headers=bearer)

    path = tmp_path / "keyed.jpg"
    path.write_bytes(synthetic_jpeg(640, 480, seed=73_004))
    context, page, errors = open_page(browser, jobs_app, key=KEY)
    try:
        calls = []
        page.on("request", lambda r: "/v1/jobs" in r.url and calls.append(r))
        card, submitted = start(page, path, 256)
        assert submitted.status == 202
        wait_state(card, "done")
        job_path = f"/v1/jobs/{submitted.json()['id']}"
        paths = [httpx.URL(call.url).path for call in calls]
        assert paths[0] == "/v1/jobs"
        assert f"{job_path}/events" in paths and f"{job_path}/result" in paths
        sent = [call.header_value("authorization") for call in calls]
        assert sent == [bearer["Authorization"]] * len(calls)
        size = card.locator("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [256, 192]
        # Without the key, the job is not anyone's to read.
        assert httpx.get(f"{jobs_app}{job_path}", timeout=30).status_code == 401
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
