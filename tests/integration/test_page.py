"""The upload page in a real browser: the system Chromium driven by Playwright (sync API).

Playwright never downloads a browser here: it launches `chromium` from the PATH (CI
installs it with apt). Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.pages import KEY_ITEM, TIMEOUT_MS, page_opener
from tests.support.paths import ARTIFACTS
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import (
    STYLE_A,
    STYLE_B,
    TEST_SIZE,
    deployed_with_keys,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 128  # not the default (96): the page's choice must reach the API
KEYS = ["page-key-one", "page-key-two"]
RIGHT_KEY = "page-key-two"  # not the first: every configured key is accepted


@pytest.fixture
def open_page(browser, base_url):
    """open_page(width, height) -> a loaded page whose style picker is filled."""
    with page_opener(browser, base_url) as opener:
        yield lambda width=1100, height=900: opener(width=width, height=height)


@pytest.fixture
def photo_file(tmp_path, photo_bytes) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo_bytes)
    return path


def stylize_in_page(page, path: Path, style: str, size: int, fmt: str):
    """Choose the options, upload the file; return the newest result card (a Locator)."""
    page.get_by_label(style, exact=True).check()
    page.get_by_label("Size (longer side, px)").fill(str(size))
    page.get_by_label("Format").select_option(fmt)
    page.get_by_label("Choose photos").set_input_files(path)
    return page.locator("#results .card").first


def wait_state(card, state: str) -> None:
    from playwright.sync_api import expect

    expect(card).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


def natural_size(card) -> tuple[int, int]:
    return tuple(card.locator("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]"))


def test_page_stylizes_a_photo_and_shows_errors(open_page, photo_file, photo_bytes, base_url):
    from playwright.sync_api import expect

    page = open_page()
    # The picker comes from /v1/styles: both random-weight styles, badged as such.
    assert page.locator(".style .badge.warn").count() == 2
    expect(page.get_by_label(STYLE_A, exact=True)).to_be_checked()  # the default style
    expect(page.get_by_label("Size (longer side, px)")).to_have_value(str(TEST_SIZE))

    card = stylize_in_page(page, photo_file, STYLE_B, SIZE, "webp")
    wait_state(card, "done")
    # Enter in the size field (a phone keyboard's "Go") keeps the page and its cards: the
    # options form submitted itself and the browser loaded the page again.
    documents = []
    page.on("request", lambda r: r.resource_type == "document" and documents.append(r.url))
    page.get_by_label("Size (longer side, px)").press("Enter")
    page.evaluate("0")  # after the key's default action (a submit asks for a document)
    assert documents == [] and page.locator("#results .card").count() == 1
    width, height = natural_size(card)
    assert max(width, height) == SIZE
    source = Image.open(io.BytesIO(photo_bytes)).size
    assert width / height == pytest.approx(source[0] / source[1], rel=0.05)
    expect(card.locator(".meta")).to_contain_text(re.compile(r"cache (miss|hit|coalesced)"))
    expect(card.locator(".meta")).to_contain_text(re.compile(r"\d+ ms"))
    expect(card.locator("img.after")).to_have_attribute("alt", re.compile(STYLE_B))
    expect(page.get_by_role("status")).to_contain_text("done")
    # No keys configured: the page never shows the key prompt nor the "forget" button.
    expect(page.get_by_label("API key", exact=True)).to_be_hidden()
    expect(page.get_by_role("button", name="Forget the key")).to_be_hidden()
    # The page names its icon (else browsers ask for /favicon.ico, which is a 404), and it loads.
    icon = page.evaluate(
        """async () => {
            const response = await fetch(document.querySelector('link[rel=icon]').href);
            return [response.status, response.headers.get('content-type')]; }"""
    )
    assert icon == [200, "image/svg+xml"]

    # The download button saves the result under the right extension.
    with page.expect_download() as download_info:
        card.get_by_role("link", name=re.compile("Download")).click()
    download = download_info.value
    assert download.suggested_filename == f"photo-{STYLE_B}.webp"
    saved = Image.open(download.path())
    assert saved.format == "WEBP"
    assert saved.size == (width, height)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page.png", full_page=True)

    # A text file: the page shows the API's own message for it, word for word.
    text_file = photo_file.with_name("notes.txt")
    text_file.write_text("this is not a picture\n")
    api = httpx.post(
        f"{base_url}/v1/stylize",
        params={"style": STYLE_B, "size": SIZE, "format": "webp"},
        files={"image": (text_file.name, text_file.read_bytes(), "text/plain")},
        timeout=60,
    )
    assert 400 <= api.status_code < 500
    message = api.json()["error"]["message"]
    failed = stylize_in_page(page, text_file, STYLE_B, SIZE, "webp")
    wait_state(failed, "failed")
    expect(failed.locator(".error")).to_have_text(message)
    expect(page.get_by_role("status")).to_contain_text(message)
    expect(failed.locator(".download")).to_be_hidden()
    assert page.locator("#results .card").count() == 2  # the photo's result stays
    page.screenshot(path=ARTIFACTS / "page-error.png", full_page=True)


def test_page_sends_the_look_controls(open_page, photo_file):
    from playwright.sync_api import expect

    page = open_page()
    strength = page.get_by_label("Strength")
    strength.fill("0.35")  # a range input takes fill() as its value
    expect(page.locator("#strength-value")).to_have_text("35%")
    page.get_by_label("Keep the photo's colours").check()
    with page.expect_request(re.compile(r"/v1/stylize\?")) as request_info:
        card = stylize_in_page(page, photo_file, STYLE_A, SIZE, "png")
    query = httpx.URL(request_info.value.url).params
    assert (query["strength"], query["preserve_color"]) == ("0.35", "true")
    wait_state(card, "done")
    assert max(natural_size(card)) == SIZE


def test_page_on_a_phone_takes_several_files_and_stacks_before_and_after(open_page, photo_file):
    from playwright.sync_api import expect

    page = open_page(375, 740)
    # Record every per-file state the page shows, to see the elapsed time ticking.
    page.evaluate(
        """() => { window.seenStates = [];
            new MutationObserver(() => document.querySelectorAll('.card .state')
                .forEach(el => window.seenStates.push(el.textContent)))
            .observe(document.querySelector('#results'),
                     {subtree: true, childList: true, characterData: true}); }"""
    )
    second = photo_file.with_name("second.jpg")
    second.write_bytes(synthetic_jpeg(200, 300, seed=4242))
    page.get_by_label("Choose photos").set_input_files([photo_file, second])
    cards = page.locator("#results .card")
    assert cards.count() == 2
    for card in cards.all():
        wait_state(card, "done")
    card = cards.filter(has_text="photo.jpg")
    assert max(natural_size(card)) == TEST_SIZE
    assert natural_size(cards.filter(has_text="second.jpg")) == (64, 96)  # portrait kept
    seen = page.evaluate("window.seenStates")
    assert any(re.fullmatch(r"(Uploading \d+%|Stylizing) · \d+\.\d s", s) for s in seen), seen

    before = card.locator("img.before").bounding_box()
    after = card.locator("img.after").bounding_box()
    assert after["y"] >= before["y"] + before["height"]  # stacked, not side by side
    # Nothing overlaid to compare on a phone: no before/after slider (wider screens have it).
    expect(card.locator("img.after")).to_be_visible()
    expect(card.locator("input.split")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scroll
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-phone.png", full_page=True)


def test_page_is_labelled_and_keyboard_reachable(open_page):
    page = open_page()
    labels = (
        "Size (longer side, px)",
        "Format",
        "Keep the photo's colours",
        "Portrait",
        "Choose photos",
    )
    for label in (*labels, STYLE_A, STYLE_B):
        assert page.get_by_label(label, exact=True).count() == 1, label
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(el => !(el.labels?.length || el.getAttribute('aria-label')
                            || el.getAttribute('aria-labelledby') || el.textContent.trim()))
            .map(el => el.outerHTML)"""
    )
    assert unlabelled == []
    assert page.locator("[aria-live]").count() >= 1
    assert page.locator("img:not([alt])").count() == 0

    # Tab reaches every control, and the focused one is visibly outlined.
    reached = set()
    for _ in range(24):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const el = document.activeElement;
                       return [el.name || el.id || el.tagName,
                               getComputedStyle(el).outlineStyle]; }"""
        )
        reached.add(focused[0])
        if focused[0] in ("size", "format"):
            assert focused[1] != "none", focused
    controls = {"style", "size", "format", "strength", "preserve_color", "portrait", "photos"}
    assert controls <= reached, reached


@pytest.fixture
def keyed_app(base_url):
    with deployed_with_keys(base_url, KEYS) as url:
        yield url


def stored_key(page):
    return page.evaluate(f"sessionStorage.getItem({KEY_ITEM!r})")


def focused_id(page) -> str:
    return page.evaluate("document.activeElement.id")


def test_page_asks_for_the_api_key_when_the_service_needs_one(
    browser, keyed_app, photo_file, photo_bytes
):
    from playwright.sync_api import expect

    message = httpx.get(f"{keyed_app}/v1/styles", timeout=30).json()["error"]["message"]
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    errors, calls = [], []
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: "/v1/" in request.url and calls.append(request))

        def authorizations(start: int = 0) -> list[str | None]:
            return [call.header_value("authorization") for call in calls[start:]]

        page.goto(f"{keyed_app}/")

        # /v1/styles answers 401: the prompt shows the API's message, no style loads.
        key_field = page.get_by_label("API key", exact=True)
        expect(key_field).to_be_visible()
        expect(key_field).to_have_attribute("type", "password")
        prompt = page.locator("#key-form")
        expect(prompt.get_by_role("alert")).to_have_text(message)
        expect(page.get_by_text("once the API key is accepted")).to_be_visible()
        styles = page.locator('input[name="style"]')
        assert styles.count() == 0
        assert authorizations() == [None]
        expect(key_field).to_be_focused()  # nothing else had the focus: the prompt takes it
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "page-key.png", full_page=True)

        # By keyboard alone: Tab from the top reaches the field; Enter submits a wrong key.
        page.locator(".skip").focus()  # the first stop of the page
        for _ in range(3):
            page.keyboard.press("Tab")
            if focused_id(page) == "api-key":
                break
        assert focused_id(page) == "api-key"
        page.keyboard.type("not-a-key")
        page.keyboard.press("Enter")
        expect(prompt.get_by_role("alert")).to_have_text(f"The key was refused. {message}")
        expect(key_field).to_have_attribute("aria-invalid", "true")
        expect(key_field).to_be_focused()
        assert authorizations()[-1] == "Bearer not-a-key"
        assert styles.count() == 0
        assert stored_key(page) is None
        page.screenshot(path=ARTIFACTS / "page-key-refused.png", full_page=True)

        # The right key, submitted with the button reached by Tab: the styles load.
        key_field.fill(RIGHT_KEY)
        page.keyboard.press("Tab")
        submit = prompt.get_by_role("button", name="Use this key")
        expect(submit).to_be_focused()
        page.keyboard.press("Enter")
        expect(styles).to_have_count(2)
        expect(key_field).to_be_hidden()
        expect(page.get_by_role("status")).to_contain_text("accepted")
        assert stored_key(page) == RIGHT_KEY
        assert page.evaluate("localStorage.length") == 0  # it goes with the tab, no further

        # An upload carries the key too; the result decodes at the chosen size.
        card = stylize_in_page(page, photo_file, STYLE_B, SIZE, "png")
        wait_state(card, "done")
        assert authorizations()[-1] == f"Bearer {RIGHT_KEY}"
        data = card.locator("img.after").evaluate(
            """async (img) => { const bytes = new Uint8Array(
                    await (await fetch(img.src)).arrayBuffer());
                let text = ""; for (const b of bytes) text += String.fromCharCode(b);
                return btoa(text); }"""
        )
        result = Image.open(io.BytesIO(base64.b64decode(data)))
        assert result.format == "PNG"
        result.load()
        assert max(result.size) == SIZE
        source = Image.open(io.BytesIO(photo_bytes)).size
        assert result.size[0] / result.size[1] == pytest.approx(source[0] / source[1], rel=0.05)

        # Reloaded in the same tab: the key is still there, nothing is asked.
        seen = len(calls)
        with page.expect_request(re.compile(r"/v1/jobs\?")):
            page.reload()
        expect(styles).to_have_count(2)
        expect(key_field).to_be_hidden()
        # Every call of a load carries it: the styles, the example photos' list, the key's
        # recent jobs.
        loaded = [httpx.URL(call.url).path for call in calls[seen:]]
        assert loaded == ["/v1/styles", "/v1/examples", "/v1/jobs"]
        assert authorizations(seen) == [f"Bearer {RIGHT_KEY}"] * 3
        expect(page.get_by_role("region", name="Recent jobs")).to_be_hidden()  # none made
        forget = page.get_by_role("button", name="Forget the key")
        expect(forget).to_be_visible()

        # Forget the key: the page asks again, at once, with the focus in the field.
        forget.focus()
        page.keyboard.press("Enter")
        expect(key_field).to_be_visible()
        expect(key_field).to_be_focused()
        expect(prompt.get_by_role("alert")).to_have_text(message)
        expect(forget).to_be_hidden()
        assert stored_key(page) is None

        # An upload meanwhile waits for the key, then goes again with it.
        card = stylize_in_page(page, photo_file, STYLE_B, SIZE, "png")
        wait_state(card, "waiting")
        key_field.fill(RIGHT_KEY)
        key_field.press("Enter")
        wait_state(card, "done")
        assert max(natural_size(card)) == SIZE
        expect(key_field).to_be_hidden()

        # Forgotten, then a reload: the page asks again from the start.
        forget.click()
        expect(key_field).to_be_visible()
        page.reload()
        expect(key_field).to_be_visible()
        expect(page.get_by_text("once the API key is accepted")).to_be_visible()
        assert styles.count() == 0
        assert stored_key(page) is None
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
