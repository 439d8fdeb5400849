"""The upload page in a real browser (the system Chromium driven by Playwright), and the
application the pages that make jobs run against."""

from __future__ import annotations

import base64
import contextlib
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.support.serve import app_args, stylizer_deployment

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
KEY_ITEM = "animegan-serve.api-key"  # where api.js keeps the key in sessionStorage


def fake_camera_args(video, allowed: bool = True) -> list[str]:
    """Chromium's flags for a camera that plays ``video`` (a .y4m file, looped), its
    permission granted (or, not ``allowed``, denied) without a prompt."""
    return [
        "--use-fake-ui-for-media-stream" + ("" if allowed else "=deny"),
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]


@contextlib.contextmanager
def chromium_launcher():
    """``launch(extra_args)``: the system Chromium as the ``browser`` fixture launches it,
    with ``extra_args`` (one Playwright for them all); every one is closed on the way out."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("the system Chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        launched = []

        def launch(extra_args: list[str]):
            args = [*CHROMIUM_ARGS, *extra_args]
            launched.append(playwright.chromium.launch(executable_path=executable, args=args))
            return launched[-1]

        try:
            yield launch
        finally:
            for chromium in launched:
                chromium.close()


# The application of the pages that make jobs: sizes above SYNC_SIZE are jobs.
MAX_SIZE, SYNC_SIZE = 512, 128
# The model waits this long for a batch to fill before it runs one picture alone: every
# job here stays "running" (at the decoded stage's progress) for at least this long, so
# the page sees progress before the end, and a Cancel lands while the job runs.
BATCH_WAIT_S = 2.0


def jobs_args() -> dict:
    return app_args(
        limits={
            "max_size": MAX_SIZE,
            "max_sync_size": SYNC_SIZE,
            "max_bytes": 2 * 2**20,
            "max_pixels": 4_000_000,
        }
    )


def slow_batches() -> dict:
    return stylizer_deployment(
        user_config={"max_batch_size": 8, "batch_wait_timeout_s": BATCH_WAIT_S}
    )


def wait_styles(base_url: str, check, headers: dict | None = None, timeout_s: float = 60):
    """A redeployed Ingress's old replica may answer a moment longer: wait for the new one."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.get(f"{base_url}/v1/styles", headers=headers, timeout=30)
        if check(answer):
            return
        assert time.monotonic() < deadline, f"/v1/styles: {answer.status_code} {answer.text}"
        time.sleep(0.2)


def is_jobs_deploy(answer: httpx.Response) -> bool:
    if answer.status_code != 200:
        return False
    body = answer.json()
    return (body["max_size"], body.get("max_sync_size")) == (MAX_SIZE, SYNC_SIZE)


def open_page(
    browser,
    base_url,
    key: str | None = None,
    *,
    width: int = 1100,
    height: int = 900,
    init_script: str | None = None,
    prepare=None,
):
    """A loaded page whose style picker is filled: (its context, the page, the page's
    uncaught errors). ``init_script`` runs in the page before its own scripts,
    ``prepare(page)`` before it loads (routes)."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": width, "height": height})
    if key:  # as if given in this tab before: the page sends it from its first call
        context.add_init_script(f"sessionStorage.setItem({KEY_ITEM!r}, {key!r})")
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if prepare:
        prepare(page)
    page.goto(f"{base_url}/")
    expect(page.locator('input[name="style"]')).to_have_count(2)
    return context, page, errors


@contextlib.contextmanager
def page_opener(browser, base_url):
    """A function opening pages as ``open_page`` does (its keywords); on the way out their
    contexts are closed and no page may have thrown an uncaught error."""
    opened = []

    def opener(**options):
        opened.append(open_page(browser, base_url, **options))
        return opened[-1][1]

    yield opener
    for context, _, _ in opened:
        context.close()
    errors = [error for _, _, page_errors in opened for error in page_errors]
    assert not errors, f"uncaught errors in the page: {errors}"


def record_card_changes(page) -> None:
    """Keep, in window.seen, every [state, progress value, state text, spoken value] of
    the newest card, at each change the page makes."""
    page.evaluate(
        """() => { window.seen = [];
            const results = document.querySelector('#results');
            new MutationObserver(() => {
                const card = results.querySelector('.card');
                if (!card) return;
                const bar = card.querySelector('progress');
                window.seen.push([card.dataset.state, bar.getAttribute('value'),
                                  card.querySelector('.state').textContent,
                                  bar.getAttribute('aria-valuetext')]);
            }).observe(results, {subtree: true, childList: true, characterData: true,
                                 attributes: true});
        }"""
    )


def src_bytes(element) -> bytes:
    """The bytes behind an <img>/<video>'s src (an object URL), as the page holds them."""
    encoded = element.evaluate(
        """async (el) => {
            const bytes = new Uint8Array(await (await fetch(el.src)).arrayBuffer());
            let text = '';
            for (let i = 0; i < bytes.length; i += 0x8000)
                text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
            return btoa(text);
        }"""
    )
    return base64.b64decode(encoded)


def history_items(page):
    """The items of the page's history (history.js), newest first."""
    return page.get_by_role("region", name="History").get_by_role("listitem")
