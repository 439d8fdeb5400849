"""The upload page makes large prints as jobs: sizes above max_sync_size go to POST /v1/jobs,
the page follows the job's events with a real progress bar, fetches the result, and can
cancel it. After a reload it lists the user's recent jobs: with an API key, the key's
(GET /v1/jobs); on an open service, those the browser sent (their ids in localStorage).

Real local Ray, real HTTP, and the system Chromium (tests/support/pages.py).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.pages import (
    MAX_SIZE,
    SYNC_SIZE,
    TIMEOUT_MS,
    history_items,
    is_jobs_deploy,
    jobs_args,
    open_page,
    record_card_changes,
    slow_batches,
    src_bytes,
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
LIST_KEY = "jobs-page-list-key"  # only the listing test makes jobs with this key
JOBS_ITEM = "animegan-serve.jobs"  # where recent.js keeps the ids of the jobs it sent
LEFT = r"(\d+ min )?\d+ s"  # the time left, as the page words it


@pytest.fixture(scope="module")
def jobs_app(default_app):
    """Jobs above 128 px, up to 512; the default app comes back after the module."""
    deploy(jobs_args(), stylizer=slow_batches())
    wait_healthy(default_app)
    wait_styles(default_app, is_jobs_deploy)
    return default_app


def start(page, path, size: int):
    """Choose the options, upload the file; return its card (the one headed with the
    file's name: cards are added newest first) and the POST's answer."""
    page.get_by_label(STYLE_A, exact=True).check()
    page.get_by_label("Size (longer side, px)").fill(str(size))
    page.get_by_label("Format").select_option("png")
    with page.expect_response(
        lambda r: r.request.method == "POST" and httpx.URL(r.url).path == "/v1/jobs"
    ) as submitted:
        page.get_by_label("Choose photos").set_input_files(path)
    card = page.locator("#results .card").filter(
        has=page.get_by_role("heading", name=Path(path).name, exact=True)
    )
    return card, submitted.value


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
        # The record stays, cancelled; the result was never made.
        kept = httpx.get(f"{jobs_app}/v1/jobs/{job_id}", timeout=30)
        assert (kept.status_code, kept.json()["state"]) == (200, "cancelled")
        result = httpx.get(f"{jobs_app}/v1/jobs/{job_id}/result", timeout=30)
        assert (result.status_code, result.json()["error"]["code"]) == (409, "job_not_done")
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


def stored_ids(page) -> list[str] | None:
    stored = page.evaluate(f"localStorage.getItem({JOBS_ITEM!r})")
    return None if stored is None else json.loads(stored)


def listed(page, job_id: str):
    """The recent jobs' entry of a job."""
    return page.locator(f'#recent li[data-job="{job_id}"]')


def open_the_result(page, entry, size: list[int], base_url: str, headers: dict | None = None):
    """Show a listed job's result: the picture at `size`, and a download of the job's bytes."""
    from playwright.sync_api import expect

    entry.get_by_role("button", name="Show the result").click()
    picture = entry.locator(".recent-result img")
    expect(picture).to_be_visible()
    expect(picture).to_have_js_property("complete", True)
    assert picture.evaluate("i => [i.naturalWidth, i.naturalHeight]") == size
    download_link = entry.get_by_role("link", name="Download .png")
    expect(download_link).to_be_focused()  # it replaced the button that had the focus
    with page.expect_download() as download_info:
        download_link.click()
    job_id = entry.get_attribute("data-job")
    assert download_info.value.suggested_filename == f"picture-{job_id[:8]}-{STYLE_A}.png"
    result = httpx.get(f"{base_url}/v1/jobs/{job_id}/result", headers=headers, timeout=30)
    assert download_info.value.path().read_bytes() == result.content


def test_a_reload_lists_the_jobs_this_browser_sent(browser, jobs_app, tmp_path):
    """An open service lists nobody's jobs: the page keeps the ids of those it sent."""
    from playwright.sync_api import expect

    paths = []
    for seed in (73_006, 73_007, 73_008):
        paths.append(tmp_path / f"sent-{seed}.jpg")
        paths[-1].write_bytes(synthetic_jpeg(400, 300, seed=seed))
    context, page, errors = open_page(browser, jobs_app)
    try:
        expect(page.locator("#recent")).to_be_hidden()  # nothing sent yet
        finished_card, finished = start(page, paths[0], 192)
        followed_card, followed = start(page, paths[1], 192)
        _, cancelled = start(page, paths[2], 192)
        assert followed.status == 202  # its answer: the job as it was, queued
        queued = followed.json()
        finished_id, followed_id, cancelled_id = (
            answer.json()["id"] for answer in (finished, followed, cancelled)
        )
        deleted = httpx.delete(f"{jobs_app}/v1/jobs/{cancelled_id}", timeout=30)
        assert deleted.json()["state"] == "cancelled"
        wait_state(finished_card, "done")
        wait_state(followed_card, "done")
        assert stored_ids(page) == [cancelled_id, followed_id, finished_id]  # newest first
        # An id the service does not know (expired, as far as the page can tell), and junk.
        unknown = secrets.token_hex(16)
        stored = [cancelled_id, followed_id, finished_id, unknown, "not-an-id"]
        page.evaluate(f"localStorage.setItem({JOBS_ITEM!r}, {json.dumps(stored)!r})")

        # After the reload, the followed job is first answered as it was when it was sent
        # (queued, the service's own answer): the page must follow it to its end.
        page.route(
            re.compile(rf"/v1/jobs/{followed_id}$"),
            lambda route: route.fulfill(status=200, json=queued),
            times=1,
        )
        asked: list[str] = []
        page.on("request", lambda r: asked.append(f"{r.method} {httpx.URL(r.url).path}"))
        page.reload()
        recent = page.get_by_role("region", name="Recent jobs")
        expect(recent).to_be_visible()
        expect(recent.get_by_role("listitem")).to_have_count(3)
        assert page.locator("#results .card").count() == 0  # the cards went with the page
        order = recent.get_by_role("listitem").evaluate_all("li => li.map(i => i.dataset.job)")
        assert order == [cancelled_id, followed_id, finished_id]
        assert stored_ids(page) == [cancelled_id, followed_id, finished_id]  # the rest let go
        assert "GET /v1/jobs" not in asked  # an open service lists nobody's jobs
        # The history kept the pictures the page showed: both jobs' very bytes, no request.
        kept = history_items(page)
        expect(kept).to_have_count(2)
        for path, job_id in ((paths[0], finished_id), (paths[1], followed_id)):
            heading = page.get_by_role("heading", name=path.name, exact=True)
            item = kept.filter(has=heading)
            expect(item.locator(".history-meta")).to_contain_text("made as a job")
            result = httpx.get(f"{jobs_app}/v1/jobs/{job_id}/result", timeout=30)
            assert src_bytes(item.locator("img.history-after")) == result.content
            assert f"GET /v1/jobs/{job_id}/result" not in asked

        entry = listed(page, finished_id)
        expect(entry.get_by_role("heading")).to_have_text(f"Picture · {STYLE_A} · 192 px")
        expect(entry).to_have_attribute("data-state", "done")
        expect(entry.locator(".state")).to_have_text("Done · 192×144 PNG")
        expect(entry.get_by_role("button", name="Cancel")).to_be_hidden()
        assert f"GET /v1/jobs/{finished_id}/events" not in asked  # nothing left to follow
        open_the_result(page, entry, [192, 144], jobs_app)

        entry = listed(page, followed_id)
        expect(entry).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        assert f"GET /v1/jobs/{followed_id}/events" in asked
        expect(entry.get_by_role("button", name="Show the result")).to_be_visible()

        entry = listed(page, cancelled_id)
        expect(entry).to_have_attribute("data-state", "cancelled")
        expect(entry.locator(".state")).to_have_text("Cancelled")
        expect(entry.get_by_role("button", name="Show the result")).to_be_hidden()
        expect(entry.locator(".download")).to_be_hidden()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "page-recent-jobs.png", full_page=True)
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def deploy_with_keys(base_url: str) -> None:
    """The jobs app with API keys (KEY and LIST_KEY); the module's fixture puts the open
    default app back at its end."""
    keys = f"{KEY},{LIST_KEY}"
    actor_options = {"num_cpus": 0, "runtime_env": {"env_vars": {"ANIMEGAN_API_KEYS": keys}}}
    deploy(
        jobs_args(),
        stylizer=slow_batches(),
        ingress=ingress_deployment(ray_actor_options=actor_options),
    )
    wait_healthy(base_url)
    wait_styles(base_url, lambda answer: answer.status_code == 401)
    wait_styles(base_url, is_jobs_deploy, headers={"Authorization": f"Bearer {KEY}"})


def test_with_an_api_key_every_job_call_carries_it(browser, jobs_app, tmp_path):
    deploy_with_keys(jobs_app)
    bearer = {"Authorization": f"Bearer {KEY}"}

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
        # Its own Idempotency-Key: a retried submission finds the job the first one made.
        (posted,) = [call for call in calls if call.method == "POST"]
        assert re.fullmatch(r"[0-9a-f]{32}", posted.header_value("idempotency-key") or "")
        size = card.locator("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [256, 192]
        # Without the key, the job is not anyone's to read.
        assert httpx.get(f"{jobs_app}{job_path}", timeout=30).status_code == 401
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_with_an_api_key_a_reload_lists_the_keys_jobs(browser, jobs_app, tmp_path):
    from playwright.sync_api import expect

    deploy_with_keys(jobs_app)
    bearer = {"Authorization": f"Bearer {LIST_KEY}"}
    path = tmp_path / "listed.jpg"
    path.write_bytes(synthetic_jpeg(640, 480, seed=73_009))
    context, page, errors = open_page(browser, jobs_app, key=LIST_KEY)
    try:
        card, submitted = start(page, path, 256)
        job_id = submitted.json()["id"]
        wait_state(card, "done")

        with page.expect_response(
            lambda r: r.request.method == "GET" and httpx.URL(r.url).path == "/v1/jobs"
        ) as listing:
            page.reload()
        assert listing.value.status == 200
        assert listing.value.request.header_value("authorization") == bearer["Authorization"]
        recent = page.get_by_role("region", name="Recent jobs")
        expect(recent.get_by_role("listitem")).to_have_count(1)  # this key's one job
        entry = listed(page, job_id)
        expect(entry).to_have_attribute("data-state", "done")
        expect(entry.locator(".state")).to_have_text("Done · 256×192 PNG")
        open_the_result(page, entry, [256, 192], jobs_app, headers=bearer)
        assert page.evaluate("localStorage.length") == 0  # the key's jobs are the service's to list

        # Forgotten, the key's jobs go from the page with it.
        page.get_by_role("button", name="Forget the key").click()
        expect(recent).to_be_hidden()
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
