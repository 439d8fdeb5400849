"""The example photos: listed by /v1/examples, served by /examples/{name}, warmed at start
for every style, and one click away on the page, where the result comes from the cache.

Real local Ray, real HTTP, and the system Chromium (tests/support/pages.py).
"""

from __future__ import annotations

import re
import statistics
import time

import httpx
import pytest

from serve_app.config import CacheConfig
from tests.support.pages import TIMEOUT_MS
from tests.support.paths import ARTIFACTS
from tests.support.pictures import SAMPLES
from tests.support.serve import (
    STYLE_A,
    STYLE_B,
    TEST_SIZE,
    app_args,
    deploy,
    ingress_deployment,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Portrait, group, scene: what the shipped configs list, by their bare package names.
EXAMPLES = ["4.jpg", "2.jpg", "3.jpg"]
SIZES = {"4.jpg": (512, 512), "2.jpg": (1279, 867), "3.jpg": (1280, 672)}
WARM_TIMEOUT_S = 240  # 3 photos x 2 styles on a busy 2-core machine
CLICKS = 5
KEY = "examples-key"


def examples_args() -> dict:
    args = app_args(warm_examples=EXAMPLES)
    args["cache"]["name"] = f"{args['cache']['name']}-examples"  # empty at first: real warming
    # As shipped (the other tests turn it off): each ingress replica keeps recent results
    # in-process too, so the examples it warmed answer without a call to the cache actor.
    args["cache"]["local_max_bytes"] = CacheConfig().local_max_bytes
    return args


def wait_warm(base_url: str, headers: dict | None = None) -> dict:
    """Poll /v1/examples until this deploy's replica lists every example warm for every
    style (an older replica may answer for a moment, without examples)."""
    deadline = time.monotonic() + WARM_TIMEOUT_S
    while True:
        answer = httpx.get(f"{base_url}/v1/examples", headers=headers, timeout=30)
        if answer.status_code == 200:
            body = answer.json()
            listed = [example["name"] for example in body["examples"]]
            warm = [all(example["warm"].values()) for example in body["examples"]]
            if listed == EXAMPLES and all(warm) and not body["warming"]:
                return body
        assert time.monotonic() < deadline, f"examples not warm: {answer.text}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def examples_app(default_app):
    """The test application with the three examples, warm; the default app comes back after
    the module (default_app)."""
    deploy(examples_args())
    wait_healthy(default_app)
    wait_warm(default_app)
    return default_app


def test_examples_are_listed_served_and_warm(examples_app):
    with httpx.Client(base_url=examples_app, timeout=60) as client:
        body = client.get("/v1/examples").json()
        assert (body["size"], body["format"], body["warming"]) == (TEST_SIZE, "png", False)
        assert [e["name"] for e in body["examples"]] == EXAMPLES
        for example in body["examples"]:
            name = example["name"]
            assert example["url"] == f"/examples/{name}"
            assert example["media_type"] == "image/jpeg"
            assert (example["width"], example["height"]) == SIZES[name]
            assert example["warm"] == {STYLE_A: True, STYLE_B: True}

            photo = client.get(example["url"])
            assert photo.status_code == 200
            assert photo.content == (SAMPLES / name).read_bytes()  # the very bytes warmed
            assert photo.headers["content-type"] == "image/jpeg"
            assert "max-age=" in photo.headers["cache-control"]
            assert photo.headers["etag"].strip('"')
            # A browser's revalidation once max-age passed: nothing sent again.
            current = client.get(example["url"], headers={"If-None-Match": photo.headers["etag"]})
            assert (current.status_code, current.content) == (304, b"")

            # "warm" is honest: those bytes at the defaults are a cache hit for each style.
            for style in (STYLE_A, STYLE_B):
                answer = client.post(
                    "/v1/stylize", params={"style": style}, files={"image": (name, photo.content)}
                )
                assert answer.status_code == 200
                assert answer.headers["x-cache"] == "hit", (name, style)

        # The document names what this deploy serves.
        operation = client.get("/openapi.json").json()["paths"]["/examples/{name}"]["get"]
        assert operation["parameters"][0]["schema"]["enum"] == EXAMPLES
        assert list(operation["responses"]["200"]["content"]) == ["image/jpeg"]

        for unknown in ("1.jpg", "nope.png", "..%2Fconfig.py", "%2Fetc%2Fpasswd"):
            missing = client.get(f"/examples/{unknown}")
            assert missing.status_code == 404, unknown
            assert missing.headers["content-type"] == "application/json"
            assert missing.json()["error"]["code"] == "not_found"
            assert set(missing.json()["error"]) == {"code", "message"}


def open_examples_page(browser, base_url):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base_url}/")
    buttons = page.locator("#example-list button.example")
    expect(buttons).to_have_count(len(EXAMPLES))
    for button in buttons.all():
        expect(button).to_be_enabled()  # its photo's bytes are in the page
    return context, page, errors


def test_a_click_on_an_example_shows_the_cached_result_at_once(
    browser,
    examples_app,
    record_property,
):
    from playwright.sync_api import expect

    context, page, errors = open_examples_page(browser, examples_app)
    try:
        section = page.get_by_role("region", name="Or try an example")
        expect(section).to_be_visible()
        buttons = section.get_by_role("button")
        assert buttons.all_inner_texts()[0].startswith("4.jpg")
        # At the defaults every example is marked ready for the chosen style.
        expect(section.locator(".ready:visible")).to_have_count(len(EXAMPLES))
        thumbs = section.locator("img.thumb")
        assert thumbs.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")

        # Time from the click to the result's `load`, measured inside the page: capture
        # listeners on the document run before the button's own handler.
        page.evaluate(
            """() => {
                window.exampleTiming = {};
                document.addEventListener("click", (event) => {
                    if (event.target.closest(".example"))
                        window.exampleTiming = {clicked: performance.now()};
                }, {capture: true});
                document.addEventListener("load", (event) => {
                    if (event.target.matches?.("img.after") && !window.exampleTiming.shown)
                        window.exampleTiming.shown = performance.now();
                }, {capture: true});
            }"""
        )
        downloads: list[str] = []
        page.on("request", lambda r: "/examples/" in r.url and downloads.append(r.url))
        portrait = section.get_by_role("button", name=re.compile(r"^4\.jpg"))
        shown_ms = []
        for _ in range(CLICKS):
            with page.expect_response(re.compile(r"/v1/stylize\?")) as response_info:
                portrait.click()
            response = response_info.value
            card = page.locator("#results .card").first
            expect(card).to_have_attribute("data-state", "done")
            page.wait_for_function("window.exampleTiming.shown !== undefined")
            timing = page.evaluate("window.exampleTiming")
            shown_ms.append(round(timing["shown"] - timing["clicked"], 1))
            assert response.headers["x-cache"] == "hit"
            query = httpx.URL(response.url).params
            assert (query["style"], query["size"], query["format"]) == (
                STYLE_A,
                str(TEST_SIZE),
                "png",
            )
            assert "portrait" not in query  # off: not sent
        assert downloads == []  # the photo was fetched at load, not on a click
        # Reported, not asserted: on a shared machine one click can carry another process's
        # scheduling spike. What makes the click fast is checked above: a cache hit for
        # bytes the page already holds, with no download.
        median = statistics.median(shown_ms)
        figure = f"example click -> result shown: {shown_ms} ms, median {median} ms"
        print(figure)  # shown with -s or -rP; also kept in the JUnit report
        record_property("example_click_to_shown_ms", shown_ms)
        expect(card.locator(".name")).to_have_text("4.jpg")
        expect(card.locator(".meta")).to_contain_text("cache hit")
        size = card.locator("img.after").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [TEST_SIZE, TEST_SIZE]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "page-examples.png", full_page=True)

        # By keyboard: the group photo, in the other style, is a hit as well.
        page.get_by_label(STYLE_B, exact=True).check()
        group = section.get_by_role("button", name=re.compile(r"^2\.jpg"))
        group.focus()
        with page.expect_response(re.compile(r"/v1/stylize\?")) as response_info:
            page.keyboard.press("Enter")
        assert response_info.value.headers["x-cache"] == "hit"
        assert httpx.URL(response_info.value.url).params["style"] == STYLE_B
        expect(page.locator("#results .card")).to_have_count(CLICKS + 1)
        expect(page.locator("#results .card").first).to_have_attribute("data-state", "done")
        assert downloads == []
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_the_portrait_control_reaches_the_request_and_ready_marks_follow_the_options(
    browser,
    examples_app,
):
    from playwright.sync_api import expect

    context, page, errors = open_examples_page(browser, examples_app)
    try:
        ready = page.locator("#example-list .ready:visible")
        expect(ready).to_have_count(len(EXAMPLES))
        portrait = page.get_by_label("Portrait", exact=True)
        assert portrait.evaluate("s => [...s.options].map(o => o.value)") == [
            "off",
            "crop",
            "paste",
        ]
        portrait.select_option("crop")
        expect(ready).to_have_count(0)  # not what was warmed: no promise of speed
        # Only the request is checked: what the service does with `portrait` is its own.
        with page.expect_request(re.compile(r"/v1/stylize\?")) as request_info:
            page.get_by_role("button", name=re.compile(r"^3\.jpg")).click()
        assert httpx.URL(request_info.value.url).params["portrait"] == "crop"

        portrait.select_option("off")
        expect(ready).to_have_count(len(EXAMPLES))
        page.get_by_label("Size (longer side, px)").fill(str(TEST_SIZE + 32))
        expect(ready).to_have_count(0)
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_with_api_keys_the_photos_stay_public_and_the_list_needs_the_key(examples_app):
    actor_options = {"num_cpus": 0, "runtime_env": {"env_vars": {"ANIMEGAN_API_KEYS": KEY}}}
    deploy(examples_args(), ingress=ingress_deployment(ray_actor_options=actor_options))
    wait_healthy(examples_app)
    deadline = time.monotonic() + 60  # the open replica may answer a moment longer
    while httpx.get(f"{examples_app}/v1/examples", timeout=30).status_code != 401:
        assert time.monotonic() < deadline, "/v1/examples stays open with keys configured"
        time.sleep(0.2)
    bearer = {"Authorization": f"Bearer {KEY}"}
    wait_warm(examples_app, bearer)  # the shared cache kept the results: quick
    with httpx.Client(base_url=examples_app, timeout=60) as client:
        listing = client.get("/v1/examples")
        assert listing.status_code == 401
        assert listing.json()["error"]["code"] == "unauthorized"
        photo = client.get("/examples/4.jpg")  # no key: public, like the page
        assert photo.status_code == 200
        assert photo.content == (SAMPLES / "4.jpg").read_bytes()
        refused = client.post("/v1/stylize", files={"image": ("4.jpg", photo.content)})
        assert refused.status_code == 401  # stylizing still needs the key
        answer = client.post(
            "/v1/stylize", files={"image": ("4.jpg", photo.content)}, headers=bearer
        )
        assert (answer.status_code, answer.headers["x-cache"]) == (200, "hit")
