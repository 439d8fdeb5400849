"""What makes the upload page worth keeping: a before/after slider on each result, a
history kept in the browser (IndexedDB) that a reload shows again, "Download all" as one
zip made in the page, Share where the browser can share files, and calls answered 503 or
429 with Retry-After sent again after a countdown the user sees.

The session's default application (no redeploy), real HTTP, the system Chromium
(tests/support/pages.py). Jobs in the history after a reload: test_jobs_page.py, on its
jobs application.
"""

from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.support.pages import (
    history_items,
    page_opener,
    record_card_changes,
    src_bytes,
)
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import STYLE_A

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUSY_MESSAGE = "The model is busy; try again shortly."  # what the routed 503 says
LIMITED_MESSAGE = "Too many requests from this caller."  # what the routed 429s say
ZIP_NAME = "animegan-results.zip"
# Records each call to /v1/stylize the page makes: when it was sent and when its answer's
# headers came, by the page's own clock.
RECORD_STYLIZE_CALLS = """
window.stylizeCalls = [];
const open = XMLHttpRequest.prototype.open;
XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.calledUrl = String(url);
    return open.call(this, method, url, ...rest);
};
const send = XMLHttpRequest.prototype.send;
XMLHttpRequest.prototype.send = function (body) {
    if (this.calledUrl.includes("/v1/stylize")) {
        const call = {sent: performance.now()};
        window.stylizeCalls.push(call);
        this.addEventListener("readystatechange", () => {
            if (this.readyState === XMLHttpRequest.HEADERS_RECEIVED) {
                call.answered = performance.now();
                call.status = this.status;
            }
        });
    }
    return send.call(this, body);
};
"""
# Every line the status region shows, from the first.
RECORD_STATUS_LINES = """
window.statusLines = [];
new MutationObserver(() => {
    const text = document.getElementById("status")?.textContent;
    if (text && text !== window.statusLines.at(-1)) window.statusLines.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
NO_SHARE = "delete Navigator.prototype.share; delete Navigator.prototype.canShare;"
# A browser that shares files: what it was given is kept in window.shared.
STUB_SHARE = """
Object.defineProperty(Navigator.prototype, "canShare", {configurable: true,
    value: (data) => Array.isArray(data?.files) && data.files.every((f) => f instanceof File)});
Object.defineProperty(Navigator.prototype, "share", {configurable: true,
    value: async (data) => {
        window.shared = await Promise.all(data.files.map(async (file) => {
            const bytes = new Uint8Array(await file.arrayBuffer());
            let text = "";
            for (const b of bytes) text += String.fromCharCode(b);
            return {name: file.name, type: file.type, data: btoa(text)};
        }));
    }});
"""


@pytest.fixture
def open_page(browser, base_url):
    """open_page(init_script=None, width=1100, prepare=None) -> a loaded page whose style
    picker is filled; prepare(page) runs before it loads (routes)."""
    with page_opener(browser, base_url) as opener:
        yield lambda init_script=None, width=1100, prepare=None: opener(
            init_script=init_script, width=width, prepare=prepare
        )


def picture(tmp_path: Path, name: str, seed: int, size=(200, 150), quality: int = 90) -> Path:
    path = tmp_path / name
    path.write_bytes(synthetic_jpeg(*size, seed=seed, quality=quality))
    return path


def stylize(page, path: Path):
    """Upload the file at the page's defaults; its card (the newest), once done."""
    from playwright.sync_api import expect

    page.get_by_label("Choose photos").set_input_files(path)
    card = page.locator("#results .card").first
    expect(card.locator(".name")).to_have_text(path.name)
    expect(card).to_have_attribute("data-state", "done")
    return card


def on_top(page, element, fraction: float) -> str:
    """The class of what the page shows on top at `fraction` of the element's width, at its
    middle height (hit testing follows the original's clip)."""
    return page.evaluate(
        """([el, fraction]) => { el.scrollIntoView({block: "center"});
            const box = el.getBoundingClientRect();
            return document.elementFromPoint(box.left + fraction * box.width,
                                             box.top + box.height / 2).className; }""",
        [element.element_handle(), fraction],
    )


def test_the_slider_compares_the_original_and_the_result(open_page, tmp_path):
    from playwright.sync_api import expect

    page = open_page()
    card = stylize(page, picture(tmp_path, "compared.jpg", seed=81_001))
    slider = card.get_by_role("slider", name="Compare the original and the result: compared.jpg")
    expect(slider).to_be_visible()
    expect(slider).to_have_value("50")
    after = card.locator("img.after")
    expect(after).to_be_visible()
    # The original shows left of the divider, the result right of it.
    expect(card).to_have_class(re.compile(r"\bcomparing\b"))
    assert on_top(page, after, 0.25) == "before"
    assert on_top(page, after, 0.75) == "after"
    # Overlaid exactly: one box for both pictures.
    assert card.locator("img.before").bounding_box() == after.bounding_box()

    # By keyboard: End shows all of the original, Home all of the result, arrows step.
    slider.focus()
    page.keyboard.press("End")
    expect(slider).to_have_value("100")
    assert on_top(page, after, 0.95) == "before"
    page.keyboard.press("Home")
    assert on_top(page, after, 0.05) == "after"
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    expect(slider).to_have_value("5")
    expect(slider).to_have_attribute("aria-valuetext", "5% original, 95% stylized")

    # By pointer: the divider follows a drag across the picture itself.
    after.scroll_into_view_if_needed()
    box = after.bounding_box()
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.3 * box["width"], middle)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.8 * box["width"], middle, steps=5)
    page.mouse.up()
    assert 78 <= int(slider.input_value()) <= 82
    assert on_top(page, after, 0.7) == "before"
    assert on_top(page, after, 0.9) == "after"

    # "Again": while it is made anew, the two are side by side; compared again once done.
    card.get_by_role("button", name="Again with current settings").click()
    expect(card).to_have_attribute("data-state", "done")
    expect(card).to_have_class(re.compile(r"\bcomparing\b"))
    expect(slider).to_have_value("50")


def test_the_history_survives_a_reload_and_downloads_as_one_zip(open_page, tmp_path):
    from playwright.sync_api import expect

    cafe = picture(tmp_path, "café.jpg", seed=81_002)  # a name beyond ASCII: UTF-8 in the zip
    plain = picture(tmp_path, "plain.jpg", seed=81_003, size=(120, 160))
    page = open_page()
    items = history_items(page)
    expect(items).to_have_count(0)
    made = {}
    for path in (cafe, plain):
        card = stylize(page, path)
        made[path.name] = src_bytes(card.locator("img.after"))
    # The same photo again: the same name, a second entry (cache hit: the same bytes).
    card = page.locator("#results .card").filter(has_text="café.jpg")
    card.get_by_role("button", name="Again with current settings").click()
    expect(card).to_have_attribute("data-state", "done")
    expect(items).to_have_count(3)
    names = ["café-alpha.png", "plain-alpha.png", "café-alpha-2.png"]  # newest first
    expected = [made["café.jpg"], made["plain.jpg"], made["café.jpg"]]

    # Before the reload: the page's results are the history's, zipped once each.
    assert zipped(page) == dict(zip(names, expected, strict=True))

    page.reload()
    expect(page.locator('input[name="style"]')).to_have_count(2)
    expect(items).to_have_count(3)
    assert page.locator("#results .card").count() == 0  # the cards went with the page
    headings = items.get_by_role("heading").all_inner_texts()
    assert headings == ["café.jpg", "plain.jpg", "café.jpg"]
    originals = [cafe.read_bytes(), plain.read_bytes(), cafe.read_bytes()]
    for item, result, original in zip(items.all(), expected, originals, strict=True):
        # The very bytes, both of them, each compared with the other in the item.
        assert src_bytes(item.locator("img.history-after")) == result
        assert src_bytes(item.locator("img.history-before")) == original
        expect(item.get_by_role("slider")).to_be_visible()
        expect(item.locator(".history-meta")).to_contain_text(f"{STYLE_A} · ")
    with page.expect_download() as download_info:
        items.nth(1).get_by_role("link", name="Download").click()
    assert download_info.value.suggested_filename == "plain-alpha.png"
    assert download_info.value.path().read_bytes() == made["plain.jpg"]

    # After the reload: the zip is the history's.
    assert zipped(page) == dict(zip(names, expected, strict=True))

    # One removed: gone for good. Then all of it.
    items.first.get_by_role("button", name="Remove").click()
    expect(items).to_have_count(2)
    expect(items.first.get_by_role("button", name="Remove")).to_be_focused()
    page.reload()
    expect(items).to_have_count(2)
    assert items.get_by_role("heading").all_inner_texts() == ["plain.jpg", "café.jpg"]
    page.get_by_role("button", name="Clear the history").click()
    expect(page.get_by_role("region", name="History")).to_be_hidden()  # nothing left to show
    expect(page.get_by_role("status")).to_have_text("The history is cleared.")
    page.reload()
    expect(page.locator('input[name="style"]')).to_have_count(2)
    expect(page.locator("#history")).to_be_hidden()
    assert page.locator("#history-list li").count() == 0


def zipped(page) -> dict[str, bytes]:
    """Click "Download all (.zip)"; the archive's entries, in order, checked as a zip."""
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download all (.zip)").click()
    download = download_info.value
    assert download.suggested_filename == ZIP_NAME
    with zipfile.ZipFile(download.path()) as archive:
        assert archive.testzip() is None  # every entry's CRC-32 holds
        entries = archive.infolist()
        for entry in entries:
            assert entry.compress_type == zipfile.ZIP_STORED
            assert entry.flag_bits & 0x800  # the name is UTF-8
            assert entry.file_size == entry.compress_size
        return {entry.filename: archive.read(entry) for entry in entries}


def test_the_history_keeps_the_newest_within_its_bounds(open_page, tmp_path):
    from playwright.sync_api import expect

    small = [picture(tmp_path, f"small-{n}.jpg", seed=81_010 + n) for n in range(2)]
    large = picture(tmp_path, "large.jpg", seed=81_020, size=(1200, 900), quality=95)
    # Two items, and a byte budget whose tenth (the most one original may take) is just
    # under the large photo: its result is kept, not its original.
    max_bytes = 10 * (large.stat().st_size - 1)
    assert max(path.stat().st_size for path in small) * 10 < max_bytes

    def with_limits(route):
        answer = route.fetch()
        html = answer.text()
        for old, new in (
            ('data-max-items="50"', 'data-max-items="2"'),
            ('data-max-bytes="104857600"', f'data-max-bytes="{max_bytes}"'),
        ):
            assert html.count(old) == 1, old
            html = html.replace(old, new)
        route.fulfill(response=answer, body=html)

    page = open_page(prepare=lambda page: page.route(re.compile(r"/$"), with_limits))
    for path in (*small, large):
        stylize(page, path)
    items = history_items(page)
    expect(items).to_have_count(2)
    page.reload()
    expect(items).to_have_count(2)
    assert items.get_by_role("heading").all_inner_texts() == ["large.jpg", "small-1.jpg"]
    expect(items.first.locator("img.history-before")).to_be_hidden()  # no original kept
    expect(items.first.get_by_role("slider")).to_have_count(0)
    expect(items.nth(1).get_by_role("slider")).to_be_visible()
    Image.open(io.BytesIO(src_bytes(items.first.locator("img.history-after")))).verify()


def test_a_busy_answer_is_retried_after_its_retry_after(open_page, tmp_path):
    from playwright.sync_api import expect

    # The styles, at load: answered 503 once; the page says so and gets them after 1 s.
    def busy_styles(page):
        page.route(re.compile(r"/v1/styles$"), busy(503, BUSY_MESSAGE, "1"), times=1)

    page = open_page(RECORD_STYLIZE_CALLS + RECORD_STATUS_LINES, prepare=busy_styles)
    lines = page.evaluate("window.statusLines")
    assert "The service is busy — retrying in 1 s… (retry 1 of 3)" in lines, lines

    # An upload answered 503 once: counted down on its card, then sent again, and done.
    page.route(re.compile(r"/v1/stylize\?"), busy(503, BUSY_MESSAGE, "1"), times=1)
    record_card_changes(page)
    card = stylize(page, picture(tmp_path, "busy.jpg", seed=81_030))
    seen = page.evaluate("window.seen")
    waiting = [row[2] for row in seen if row[0] == "waiting"]
    assert "The service is busy — retrying in 1 s… (retry 1 of 3)" in waiting, seen
    calls = page.evaluate("window.stylizeCalls")
    assert [call["status"] for call in calls] == [503, 200]
    assert calls[1]["sent"] - calls[0]["answered"] >= 990  # not before its Retry-After
    assert "busy.jpg: The service is busy — retrying in 1 s… (retry 1 of 3)" in page.evaluate(
        "window.statusLines"
    )
    expect(card.locator(".error")).to_be_hidden()
    Image.open(io.BytesIO(src_bytes(card.locator("img.after")))).verify()

    # Answered 429 every time: sent 3 times more, then its error, as any other error.
    page.evaluate("window.stylizeCalls = []")
    page.route(re.compile(r"/v1/stylize\?"), busy(429, LIMITED_MESSAGE, "0"))
    page.get_by_label("Choose photos").set_input_files(picture(tmp_path, "limited.jpg", 81_031))
    card = page.locator("#results .card").first
    expect(card).to_have_attribute("data-state", "failed")
    expect(card.locator(".error")).to_have_text(LIMITED_MESSAGE)
    assert [call["status"] for call in page.evaluate("window.stylizeCalls")] == [429] * 4


def busy(status: int, message: str, retry_after: str):
    """A route handler: the service's error answer, with Retry-After."""
    code = "overloaded" if status == 503 else "rate_limited"

    def answer(route):
        route.fulfill(
            status=status,
            headers={"Retry-After": retry_after},
            json={"error": {"code": code, "message": message}},
        )

    return answer


def test_share_is_offered_only_where_the_browser_can_share_files(open_page, tmp_path):
    from playwright.sync_api import expect

    path = picture(tmp_path, "shared.jpg", seed=81_040)
    page = open_page(NO_SHARE)
    card = stylize(page, path)
    expect(card.get_by_role("link", name="Download .png")).to_be_visible()
    expect(card.locator(".share")).to_be_hidden()
    expect(history_items(page)).to_have_count(1)
    expect(history_items(page).locator(".share")).to_be_hidden()

    page = open_page(STUB_SHARE)
    card = stylize(page, path)
    card.get_by_role("button", name="Share").click()
    page.wait_for_function("window.shared !== undefined")
    shared = page.evaluate("window.shared")
    assert [(file["name"], file["type"]) for file in shared] == [
        (f"shared-{STYLE_A}.png", "image/png")
    ]
    assert base64.b64decode(shared[0]["data"]) == src_bytes(card.locator("img.after"))
    page.evaluate("window.shared = undefined")
    item = history_items(page).first
    item.get_by_role("button", name="Share").click()
    page.wait_for_function("window.shared !== undefined")
    assert base64.b64decode(page.evaluate("window.shared")[0]["data"]) == src_bytes(
        card.locator("img.after")
    )
