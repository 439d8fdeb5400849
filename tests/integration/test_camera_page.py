"""The page's Camera mode in a real browser: Chromium's fake camera plays a .y4m video this
module writes (shapes moving over a gradient), the page streams it to /v1/live on the real
app and shows the stylized frames, switches style by a control message on the same socket,
and sends a snapshot through POST /v1/stylize to a result card; and it says why when there
is no camera, the permission is denied, or the service refuses the stream.

Real local Ray, real HTTP and WebSocket, the system Chromium (tests/support/pages.py).
"""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.pages import (
    TIMEOUT_MS,
    chromium_launcher,
    fake_camera_args,
    page_opener,
    src_bytes,
)
from tests.support.paths import ARTIFACTS
from tests.support.serve import STYLE_A, STYLE_B, TEST_SIZE, deployed_with_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDTH, HEIGHT, FPS, FRAMES = 160, 120, 30, 36
LIVE_SIZE = 128  # small frames keep the model cheap on two cores

# Every /v1/live socket the page opens, the text messages it hears and sends, and how it
# closed: window.live = {urls, heard, said, closed}. `extra` is added to the socket's query
# (a refused option), as if the page had sent it.
RECORD_SOCKETS = """(() => {
    const Native = window.WebSocket;
    const live = (window.live = {urls: [], heard: [], said: [], closed: null});
    window.WebSocket = class extends Native {
        constructor(url, protocols) {
            const isLive = String(url).includes('/v1/live');
            super(isLive ? String(url) + (window.liveExtra || '') : url, protocols);
            if (!isLive) return;
            live.urls.push(String(url));
            this.addEventListener('message', (event) => {
                if (typeof event.data === 'string') live.heard.push(JSON.parse(event.data));
            });
            this.addEventListener('close', (event) => {
                live.closed = [event.code, event.reason];
            });
        }
        send(data) {
            if (typeof data === 'string') live.said.push(JSON.parse(data));
            return super.send(data);
        }
    };
})()"""

FRAME_HEADERS = "window.live.heard.filter((m) => m.timings_ms)"


def moving_shapes(index: int) -> np.ndarray:
    """One RGB frame: a colour gradient, a red square moving right, a blue disc moving down."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack(
        [
            40 + 150 * x / WIDTH,
            60 + 120 * y / HEIGHT,
            np.full_like(x, 90, dtype=float),
        ],
        axis=-1,
    )
    left = (index * 4) % (WIDTH - 40)
    rgb[30:70, left : left + 40] = (230, 30, 30)
    top = (index * 3) % (HEIGHT - 30)
    disc = (x - 110) ** 2 + (y - top - 15) ** 2 < 15**2
    rgb[disc] = (30, 40, 220)
    return rgb


def write_y4m(path):
    """A YUV4MPEG2 video (4:2:0, full-range BT.601 as "C420jpeg" says), written by hand."""
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(FRAMES):
            r, g, b = np.moveaxis(moving_shapes(index), -1, 0)
            luma = 0.299 * r + 0.587 * g + 0.114 * b
            cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
            cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
            half = [p.reshape(HEIGHT // 2, 2, WIDTH // 2, 2).mean(axis=(1, 3)) for p in (cb, cr)]
            out.write(b"FRAME\n")
            for plane in (luma, *half):
                out.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory):
    return write_y4m(tmp_path_factory.mktemp("camera") / "moving.y4m")


@pytest.fixture(scope="module")
def launch():
    with chromium_launcher() as launch:
        yield launch


@pytest.fixture(scope="module")
def browser(launch, camera_video):
    """Chromium with a fake camera playing the moving shapes (for this module only)."""
    return launch(fake_camera_args(camera_video))


@pytest.fixture
def open_page(browser, base_url):
    with page_opener(browser, base_url) as opener:
        yield opener


def console_errors(page) -> list[str]:
    """The page's console errors, each with the address it came from (a failed load's line
    names none in its text), and each answer of 400 or more."""
    errors: list[str] = []
    page.on(
        "console",
        lambda message: (
            message.type == "error"
            and errors.append(f"{message.text} ({message.location.get('url')})")
        ),
    )
    page.on(
        "response",
        lambda response: (
            response.status >= 400
            and errors.append(f"{response.request.method} {response.url}: {response.status}")
        ),
    )
    return errors


def difference_from_camera(page) -> float:
    """The mean difference per channel (0-255) between the live view and the camera's
    frame now, drawn at the live view's size."""
    return page.evaluate(
        """() => {
            const live = document.querySelector('#camera-live');
            const video = document.querySelector('#camera-preview');
            const camera = Object.assign(document.createElement('canvas'),
                                         {width: live.width, height: live.height});
            camera.getContext('2d').drawImage(video, 0, 0, live.width, live.height);
            const pixels = (canvas) => canvas.getContext('2d')
                .getImageData(0, 0, live.width, live.height).data;
            const [a, b] = [pixels(live), pixels(camera)];
            let sum = 0, count = 0;
            for (let i = 0; i < a.length; i += 4)
                for (let c = 0; c < 3; c++, count++) sum += Math.abs(a[i + c] - b[i + c]);
            return sum / count;
        }"""
    )


def test_camera_mode_streams_switches_style_in_place_and_snaps(open_page):
    from playwright.sync_api import expect

    page = open_page(init_script=RECORD_SOCKETS)
    errors = console_errors(page)
    expect(page.get_by_label(STYLE_A, exact=True)).to_be_checked()  # the default style

    page.get_by_role("tab", name="Camera").click()
    expect(page.get_by_role("tab", name="Camera")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_label("Choose photos")).to_be_hidden()
    expect(page.get_by_role("button", name="Stop the camera")).to_be_visible()
    page.get_by_label("Live size (px)").select_option(str(LIVE_SIZE))

    # Stylized frames at the live size, shown at a rate, each timed by the service.
    page.wait_for_function(
        f"{FRAME_HEADERS}.some((m) => Math.max(m.width, m.height) === {LIVE_SIZE})"
    )
    page.wait_for_function("parseFloat(document.querySelector('#camera-fps').textContent) > 0")
    expect(page.locator("#camera-latency")).to_have_text(re.compile(r"^latency \d+ ms$"))
    expect(page.locator("#camera-timings")).to_contain_text(re.compile(r"model \d+"))
    live = page.locator("#camera-live")
    assert live.evaluate("(c) => Math.max(c.width, c.height)") == LIVE_SIZE
    first = live.evaluate("(c) => c.toDataURL()")
    page.wait_for_function(
        "(first) => document.querySelector('#camera-live').toDataURL() !== first", arg=first
    )
    # Random weights: nothing like the camera's picture.
    assert difference_from_camera(page) > 20

    # The style changes by a control message on the same socket.
    page.get_by_label(STYLE_B, exact=True).check()
    page.wait_for_function(f"{FRAME_HEADERS}.some((m) => m.style === {STYLE_B!r})")
    expect(page.locator("#camera-style")).to_have_text(STYLE_B)
    recorded = page.evaluate("window.live")
    assert len(recorded["urls"]) == 1, recorded["urls"]
    query = httpx.URL(recorded["urls"][0]).params
    assert query["style"] == STYLE_A
    assert {"style": STYLE_B} in recorded["said"]
    assert any(m.get("options", {}).get("style") == STYLE_B for m in recorded["heard"])
    styles = [m["style"] for m in recorded["heard"] if "timings_ms" in m]
    assert styles[0] == STYLE_A and styles[-1] == STYLE_B  # the same stream, both styles

    # A snapshot: the camera's picture at its full size, through POST /v1/stylize, on a card.
    with page.expect_request(
        lambda r: r.method == "POST" and httpx.URL(r.url).path == "/v1/stylize"
    ) as posted:
        page.get_by_role("button", name="Snapshot").click()
    assert posted.value.header_value("content-type") == "image/jpeg"
    assert httpx.URL(posted.value.url).params["style"] == STYLE_B
    card = page.locator("#results .card").first
    expect(card.locator(".name")).to_have_text("camera-1.jpg")
    expect(card).to_have_attribute("data-state", re.compile(r"^(done|failed)$"))
    assert card.get_attribute("data-state") == "done", card.locator(".error").text_content()
    sent = Image.open(io.BytesIO(src_bytes(card.locator("img.before"))))  # the file sent
    assert (sent.format, sent.size) == ("JPEG", (WIDTH, HEIGHT))
    after = card.locator("img.after").evaluate("(i) => [i.naturalWidth, i.naturalHeight]")
    assert max(after) == TEST_SIZE  # the page's Size, as for an upload

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-camera.png", full_page=True)

    # Stop: the socket is closed by the page, the camera let go.
    page.get_by_role("button", name="Stop the camera").click()
    expect(page.get_by_role("button", name="Start the camera")).to_be_visible()
    page.wait_for_function("window.live.closed !== null")
    assert page.evaluate("window.live.closed")[0] == 1000
    assert page.evaluate("document.querySelector('#camera-preview').srcObject") is None
    assert errors == []


def test_camera_mode_says_why_there_is_no_stream(open_page):
    from playwright.sync_api import expect

    # A browser without getUserMedia (as on a plain http:// page elsewhere than localhost).
    page = open_page(
        init_script="Object.defineProperty(navigator, 'mediaDevices', {value: undefined})"
    )
    page.get_by_role("tab", name="Upload").focus()
    page.keyboard.press("ArrowRight")  # the tabs follow the arrow keys
    expect(page.get_by_role("tab", name="Camera")).to_be_focused()
    expect(page.get_by_role("alert")).to_have_text(re.compile("no camera"))

    # The service refuses the stream: its close code and reason, in words.
    page = open_page(init_script=f"window.liveExtra = '&mood=grumpy'; {RECORD_SOCKETS}")
    page.get_by_role("tab", name="Camera").click()
    expect(page.get_by_role("alert")).to_contain_text("The service refused the camera's options")
    expect(page.get_by_role("alert")).to_contain_text("mood")
    assert page.evaluate("window.live.closed")[0] == 4422
    expect(page.get_by_role("button", name="Start the camera")).to_be_visible()


def test_camera_mode_says_the_permission_was_denied(launch, camera_video, base_url):
    """In a browser that denies the camera (its own answer to the page, as a user's)."""
    from playwright.sync_api import expect

    denying = launch(fake_camera_args(camera_video, allowed=False))
    with page_opener(denying, base_url) as opener:
        page = opener(init_script=RECORD_SOCKETS)
        page.get_by_role("tab", name="Camera").click()
        expect(page.get_by_role("alert")).to_contain_text("camera permission was denied")
        expect(page.get_by_role("button", name="Start the camera")).to_be_visible()
        expect(page.get_by_role("button", name="Snapshot")).to_be_disabled()
        assert page.evaluate("window.live.urls") == []  # no camera: no stream either


SET_VISIBILITY = """(state) => {
    Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_a_hidden_page_lets_go_of_the_camera_and_takes_it_again_when_back(open_page):
    from playwright.sync_api import expect

    page = open_page(init_script=RECORD_SOCKETS)
    page.get_by_role("tab", name="Camera").click()
    page.wait_for_function(f"{FRAME_HEADERS}.length > 0")
    page.evaluate(SET_VISIBILITY, "hidden")  # another tab or app in front
    expect(page.locator("#camera-message")).to_contain_text("paused while the page is hidden")
    page.wait_for_function("window.live.closed !== null")
    assert page.evaluate("window.live.closed") == [1000, "stopped"]
    assert page.evaluate("document.querySelector('#camera-preview').srcObject") is None
    answered = page.evaluate(f"{FRAME_HEADERS}.length")
    page.evaluate(SET_VISIBILITY, "visible")
    page.wait_for_function(f"window.live.urls.length === 2 && {FRAME_HEADERS}.length > {answered}")
    expect(page.get_by_role("button", name="Stop the camera")).to_be_visible()


def test_camera_opened_before_the_api_key_starts_once_it_is_accepted(browser, base_url):
    """With API keys, the settings wait for the key: the Camera tab chosen meanwhile says
    so, then starts by itself once the key is accepted, its live size the service's
    default (it stayed waiting, its size list empty)."""
    from playwright.sync_api import expect

    key = "camera-key"
    with deployed_with_keys(base_url, [key]):
        live = httpx.get(
            f"{base_url}/v1/styles", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ).json()["live"]
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        try:
            context.add_init_script(RECORD_SOCKETS)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base_url}/")
            key_field = page.get_by_label("API key", exact=True)
            expect(key_field).to_be_visible()
            page.get_by_role("tab", name="Camera").click()
            expect(page.locator("#camera-message")).to_contain_text("Enter the API key first")
            key_field.fill(key)
            page.get_by_role("button", name="Use this key").click()
            page.wait_for_function(f"{FRAME_HEADERS}.length > 0")
            expect(page.get_by_label("Live size (px)")).to_have_value(str(live["default_size"]))
            size = httpx.URL(page.evaluate("window.live.urls[0]")).params["size"]
            assert size == str(live["default_size"])
        finally:
            context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_two_webcams_that_face_no_way_switch_in_turn_on_one_stream(launch, base_url):
    """A desktop's webcams say nothing of their facing: the switch takes the next camera
    in the browser's list (Chromium's two generated fake cameras), and the stream goes
    on over the same socket."""
    from playwright.sync_api import expect

    two_cameras = launch(
        ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream=device-count=2"]
    )
    in_use = "document.querySelector('#camera-preview').srcObject?.getVideoTracks()[0]?.label"
    with page_opener(two_cameras, base_url) as opener:
        page = opener(init_script=RECORD_SOCKETS)
        page.get_by_role("tab", name="Camera").click()
        page.wait_for_function(f"{FRAME_HEADERS}.length > 0")
        first = page.evaluate(in_use)
        switch = page.get_by_role("button", name="Switch camera")
        for expected in ("fake_device_1", first):  # the other one, then back
            switch.click()
            page.wait_for_function(f"{in_use} === {expected!r}")
            expect(page.locator("#status")).to_contain_text(f"The camera “{expected}” is on.")
            answered = page.evaluate(f"{FRAME_HEADERS}.length")
            page.wait_for_function(f"{FRAME_HEADERS}.length > {answered}")
        assert first == "fake_device_0"
        assert len(page.evaluate("window.live.urls")) == 1
        expect(page.locator("#camera-message")).to_be_hidden()
