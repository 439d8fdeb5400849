"""The upload page takes videos and animated pictures: a video goes to POST /v1/jobs and is
followed frame by frame, its result plays in a <video>; a small animated GIF comes back
animated from /v1/stylize, and one past the synchronous budget is sent on as a job.

Real local Ray, real HTTP, and the system Chromium (tests/support/pages.py). VP9 in WebM,
because Debian's Chromium may lack H.264.
"""

from __future__ import annotations

import io
import re

import av
import httpx
import pytest
from PIL import Image

from tests.support.media import make_animation, make_vp9_opus_webm
from tests.support.pages import (
    TIMEOUT_MS,
    is_jobs_deploy,
    jobs_args,
    open_page,
    record_card_changes,
    slow_batches,
    src_bytes,
    wait_styles,
)
from tests.support.serve import STYLE_A, deploy, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 64  # small frames keep the model cheap on two cores
# Long enough (and sent to the model two frames a call) for the job's progress, recorded
# every half second, to be seen short of the end on a fast machine too.
VIDEO_SECONDS, VIDEO_FPS = 4.0, 10
VIDEO_FRAMES = round(VIDEO_SECONDS * VIDEO_FPS)
SMALL_GIF_FRAMES, LARGE_GIF_FRAMES = 6, 24
# Frames × output pixels that /v1/stylize makes at once: the small GIF (6 × 64×48) fits,
# the large one (24 × 64×48) is answered use_jobs.
SYNC_PIXELS = 40_000
VIDEO_TIMEOUT_MS = 4 * TIMEOUT_MS  # every frame goes through the model (and its batch wait)


@pytest.fixture(scope="module")
def video_app(default_app):
    """The job page tests' app, with the animation budget above; the default app comes
    back after the module."""
    media = {"max_sync_pixels": SYNC_PIXELS, "frame_batch": 2}
    deploy({**jobs_args(), "media": media}, stylizer=slow_batches())
    wait_healthy(default_app)
    wait_styles(default_app, is_jobs_deploy)
    return default_app


def choose(page, size: int = SIZE) -> None:
    page.get_by_label(STYLE_A, exact=True).check()
    page.get_by_label("Size (longer side, px)").fill(str(size))


def upload(page, path, route: str):
    """Upload the file; return the newest card and the first POST to `route`."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and httpx.URL(r.url).path == route
    ) as posted:
        page.get_by_label("Choose photos").set_input_files(path)
    return page.locator("#results .card").first, posted.value


def wait_state(card, state: str, timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait for the card's final state (not only `state`: a failure ends the wait at once)."""
    from playwright.sync_api import expect

    final = re.compile(r"^(done|failed|cancelled)$")
    expect(card).to_have_attribute("data-state", final, timeout=timeout_ms)
    reached = card.get_attribute("data-state")
    assert reached == state, f"{reached}: {card.locator('.error').text_content()}"


def source_duration(path) -> float:
    with av.open(str(path)) as source:
        return source.duration / av.time_base


def test_a_video_is_made_as_a_job_and_plays_in_the_page(browser, video_app, tmp_path):
    from playwright.sync_api import expect

    path = make_vp9_opus_webm(
        tmp_path / "clip.webm", seconds=VIDEO_SECONDS, fps=VIDEO_FPS, size=(160, 96)
    )
    context, page, errors = open_page(browser, video_app)
    try:
        expect(page.locator("#photos")).to_have_attribute("accept", re.compile(r"video/\*"))
        calls: list[tuple[str, str]] = []
        page.on("request", lambda r: calls.append((r.method, httpx.URL(r.url).path)))
        record_card_changes(page)
        choose(page)
        card, submitted = upload(page, path, "/v1/jobs")
        assert submitted.status in (200, 202), submitted.text()
        job = submitted.json()
        assert job["kind"] == "video"
        # A video keeps its own container: the page's Format (for stills) is not sent.
        query = httpx.URL(submitted.request.url).params
        assert query["size"] == str(SIZE) and "format" not in query, query
        assert submitted.request.header_value("content-type") == "video/webm"

        # While it runs: "frame X of Y" with the bar and Cancel.
        expect(card.locator(".state")).to_contain_text(
            re.compile(rf"frame \d+ of {VIDEO_FRAMES}"), timeout=VIDEO_TIMEOUT_MS
        )
        expect(card.get_by_role("button", name="Cancel")).to_be_visible()
        wait_state(card, "done", VIDEO_TIMEOUT_MS)
        assert not [call for call in calls if call[1].startswith("/v1/stylize")], calls
        assert ("GET", f"/v1/jobs/{job['id']}/result") in calls

        # The bar and the frame count moved forward, through values short of the end.
        seen = page.evaluate("window.seen")
        following = [row for row in seen if row[0] in ("submitted", "running")]
        values = [float(row[1]) for row in following]
        assert values == sorted(values), following
        assert len(set(values)) >= 2 and any(0 < v < 100 for v in values), following
        frames = [
            int(m.group(1))
            for row in following
            if (m := re.search(rf"frame (\d+) of {VIDEO_FRAMES}", row[2]))
        ]
        assert frames == sorted(frames) and len(set(frames)) >= 2, following
        spoken = [row[3] or "" for row in following if row[0] == "running"]
        assert any(f"of {VIDEO_FRAMES}" in s for s in spoken), following

        # The result plays in a <video>, as long as the source.
        video = card.locator("video.after")
        expect(video).to_be_visible()
        expect(card.locator("img.after")).to_be_hidden()
        page.wait_for_function("v => v.readyState >= 1", arg=video.element_handle())
        played = video.evaluate("v => [v.duration, v.videoWidth, v.videoHeight]")
        assert played[0] == pytest.approx(source_duration(path), abs=0.3), played
        assert max(played[1:]) == SIZE, played
        expect(card.locator(".meta")).to_contain_text("WEBM")
        expect(card.get_by_role("button", name="Cancel")).to_be_hidden()

        # The download: a .webm, the job's very bytes.
        download_link = card.get_by_role("link", name=re.compile("Download"))
        expect(download_link).to_have_text("Download .webm")
        with page.expect_download() as download_info:
            download_link.click()
        download = download_info.value
        assert download.suggested_filename == f"clip-{STYLE_A}.webm"
        result = httpx.get(f"{video_app}/v1/jobs/{job['id']}/result", timeout=60)
        assert result.content == download.path().read_bytes()
        with av.open(str(download.path())) as made:
            assert made.streams.video[0].codec_context.name == "vp9"
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_a_small_animated_gif_comes_back_animated(browser, video_app, tmp_path):
    from playwright.sync_api import expect

    path = make_animation(tmp_path / "wave.gif", "gif", frames=SMALL_GIF_FRAMES, size=(64, 48))
    context, page, errors = open_page(browser, video_app)
    try:
        calls: list[str] = []
        page.on("request", lambda r: calls.append(httpx.URL(r.url).path))
        choose(page)
        card, answered = upload(page, path, "/v1/stylize")
        assert answered.status == 200, answered.text()
        assert "format" not in httpx.URL(answered.request.url).params  # a GIF stays a GIF
        wait_state(card, "done")
        assert not [call for call in calls if call.startswith("/v1/jobs")], calls

        after = card.locator("img.after")
        expect(after).to_be_visible()
        shown = Image.open(io.BytesIO(src_bytes(after)))
        assert (shown.format, shown.n_frames) == ("GIF", SMALL_GIF_FRAMES)
        assert max(shown.size) == SIZE
        expect(card.get_by_role("link", name=re.compile("Download"))).to_have_attribute(
            "download", f"wave-{STYLE_A}.gif"
        )
        expect(card.locator(".meta")).to_contain_text("GIF")
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_a_long_animation_answered_use_jobs_is_sent_on_as_a_job(browser, video_app, tmp_path):
    path = make_animation(tmp_path / "long.gif", "gif", frames=LARGE_GIF_FRAMES, size=(64, 48))
    context, page, errors = open_page(browser, video_app)
    try:
        choose(page)
        with page.expect_response(
            lambda r: r.request.method == "POST" and httpx.URL(r.url).path == "/v1/jobs"
        ) as submitted:
            card, refused = upload(page, path, "/v1/stylize")
        assert refused.status == 422 and refused.json()["error"]["code"] == "use_jobs"
        assert submitted.value.status in (200, 202), submitted.value.text()
        job = submitted.value.json()
        assert job["kind"] == "animation"
        # The same upload, both times: the same body and query.
        sent = [answer.request for answer in (refused, submitted.value)]
        assert [r.header_value("content-type") for r in sent] == ["image/gif"] * 2
        assert len({str(httpx.URL(r.url).params) for r in sent}) == 1
        wait_state(card, "done", VIDEO_TIMEOUT_MS)

        shown = Image.open(io.BytesIO(src_bytes(card.locator("img.after"))))
        assert (shown.format, shown.n_frames) == ("GIF", LARGE_GIF_FRAMES)
        result = httpx.get(f"{video_app}/v1/jobs/{job['id']}/result", timeout=60)
        assert result.headers["content-type"].startswith("image/gif")
        assert Image.open(io.BytesIO(result.content)).n_frames == LARGE_GIF_FRAMES
        link = card.get_by_role("link", name=re.compile("Download"))
        assert link.get_attribute("download") == f"long-{STYLE_A}.gif"
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_a_file_that_is_no_video_shows_the_services_message(browser, video_app, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "broken.webm"
    path.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 64)  # an EBML magic, then noise
    context, page, errors = open_page(browser, video_app)
    try:
        choose(page)
        card, submitted = upload(page, path, "/v1/jobs")
        wait_state(card, "failed", VIDEO_TIMEOUT_MS)
        if submitted.status >= 400:  # refused at the upload
            error = submitted.json()["error"]
        else:  # accepted, then failed in the job
            record = httpx.get(f"{video_app}/v1/jobs/{submitted.json()['id']}", timeout=30)
            error = record.json()["error"]
        assert error["code"] and error["message"]
        expect(card.locator(".error")).to_have_text(error["message"])
        expect(page.get_by_role("status")).to_contain_text(error["message"])
        expect(card.locator(".state")).to_have_text("Failed")
        expect(card.locator(".download")).to_be_hidden()
        expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
