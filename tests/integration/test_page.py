"""The upload page in a real browser: the system Chromium driven by Playwright (sync API).

Playwright never downloads a browser here: it launches `chromium` from the PATH (CI
installs it with apt). Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import REPO, synthetic_jpeg
from tests.integration.conftest import STYLE_A, STYLE_B, TEST_SIZE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 90_000  # one stylize on a busy 2-core machine, Ray's first call included
SIZE = 128  # not the default (96): the page's choice must reach the API


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("the system Chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser, base_url):
    """open_page(width, height) -> a loaded page whose style picker is filled."""
    from playwright.sync_api import expect

    contexts, errors = [], []

    def opener(width: int = 1100, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base_url}/")
        expect(page.locator('input[name="style"]')).to_have_count(2)
        return page

    yield opener
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


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
    width, height = natural_size(card)
    assert max(width, height) == SIZE
    source = Image.open(io.BytesIO(photo_bytes)).size
    assert width / height == pytest.approx(source[0] / source[1], rel=0.05)
    expect(card.locator(".meta")).to_contain_text(re.compile(r"cache (miss|hit|coalesced)"))
    expect(card.locator(".meta")).to_contain_text(re.compile(r"\d+ ms"))
    expect(card.locator("img.after")).to_have_attribute("alt", re.compile(STYLE_B))
    expect(page.get_by_role("status")).to_contain_text("done")

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


def test_page_on_a_phone_takes_several_files_and_stacks_before_and_after(open_page, photo_file):
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
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scroll
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page-phone.png", full_page=True)


def test_page_is_labelled_and_keyboard_reachable(open_page):
    page = open_page()
    for label in ("Size (longer side, px)", "Format", "Choose photos", STYLE_A, STYLE_B):
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
    for _ in range(20):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const el = document.activeElement;
                       return [el.name || el.id || el.tagName,
                               getComputedStyle(el).outlineStyle]; }"""
        )
        reached.add(focused[0])
        if focused[0] in ("size", "format"):
            assert focused[1] != "none", focused
    assert {"style", "size", "format", "photos"} <= reached, reached
