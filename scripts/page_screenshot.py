"""docs/page.png: the upload page with one example stylized, from a real dev service.

    flock /tmp/animegan-ray.lock python scripts/page_screenshot.py

Starts `serve run configs/dev.yaml` on a fresh local Ray (random weights: no download),
waits until its example photos are warm, clicks one in the system Chromium (driven by
Playwright), saves the page, and stops the service it started by its process group.
The result picture is the output of untrained weights: the README's caption says so.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BASE_URL = "http://127.0.0.1:8000"  # configs/dev.yaml's http_options
CHROMIUM = "/usr/bin/chromium"
STYLE = "paprika"
EXAMPLE = "3.jpg"  # the scene
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 90

logger = logging.getLogger("page_screenshot")


def start_service(log_path: Path, jobs_dir: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",  # a fresh local Ray, never a recorded cluster
        "ANIMEGAN_JOBS_STORE_URL": str(jobs_dir),  # not the user's own job store
    }
    env.pop("ANIMEGAN_API_KEYS", None)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "serve"), "run", "configs/dev.yaml"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )


def wait_warm(service: subprocess.Popen) -> None:
    """Until the service answers and every example is warm for every style."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"serve run exited with {service.returncode}")
        try:
            body = httpx.get(f"{BASE_URL}/v1/examples", timeout=10).json()
            warm = [all(e["warm"].values()) for e in body["examples"]]
            if body["examples"] and all(warm) and not body["warming"]:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(2)
    raise TimeoutError("the dev service did not warm its examples in time")


def stop_service(service: subprocess.Popen) -> None:
    """SIGINT (serve run shuts Serve and its local Ray down), then the group if needed."""
    if service.poll() is None:
        service.send_signal(signal.SIGINT)
        try:
            service.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("serve run did not stop on SIGINT; terminating its group")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.pid, signal.SIGTERM)  # anything of its group still there
    service.wait(STOP_TIMEOUT_S)


def screenshot(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(f"{BASE_URL}/")
            page.get_by_role("radio", name=STYLE).check()
            example = page.locator("#example-list button.example").filter(has_text=EXAMPLE)
            expect(example).to_be_enabled()
            example.click()
            card = page.locator("#results li.card").first
            expect(card).to_have_attribute("data-state", "done")
            expect(card.locator("img.after")).to_be_visible()
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "page.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="animegan-screenshot-"))
    service = start_service(work / "serve.log", work / "jobs")
    logger.info("serve run: pid %d, log %s", service.pid, work / "serve.log")
    try:
        wait_warm(service)
        screenshot(args.out)
        logger.info("wrote %s", args.out)
    finally:
        stop_service(service)


if __name__ == "__main__":
    main()
