"""The Python client (sync and async) against a scripted service: requests as the routes
take them, answers and errors read into the service's own classes, retries bounded."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys

import httpx
import pytest

from serve_app.client import Client, NoAnswer, Picture, ServiceError
from serve_app.client.wire import MAX_RETRY_WAIT_S, RETRIES
from serve_app.errors import InvalidSize, Overloaded, UndecodableImage, UnknownJob
from tests.support.paths import REPO
from tests.support.scripted_service import (
    JOB_ID,
    KEY,
    PICTURE,
    URL,
    KeepsAlive,
    Service,
    answer,
    events,
    job,
    refusal,
)

STYLIZED = b"\x89PNG stylized"


def stylized(cache: str = "miss") -> httpx.Response:
    headers = {"content-type": "image/png", "x-cache": cache, "x-style": "alpha"}
    return httpx.Response(200, content=STYLIZED, headers=headers)


@pytest.fixture
def service() -> Service:
    return Service()


def test_stylize_sends_the_raw_picture_typed_with_options_as_query(service, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(PICTURE)
    service.on("POST", "/v1/stylize", lambda request: stylized())
    with service.client(api_key=KEY) as client:
        picture = client.stylize(
            photo, style="alpha", size=256, portrait="crop", preserve_color=True
        )
    assert picture == Picture(STYLIZED, "image/png", cache="miss", style="alpha")
    (sent,) = service.requests
    assert sent.content == PICTURE and sent.headers["content-type"] == "image/jpeg"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert dict(sent.url.params) == {
        "style": "alpha",
        "size": "256",
        "portrait": "crop",
        "preserve_color": "true",
    }
    assert KEY not in str(sent.url)


def test_an_option_the_service_does_not_take_is_refused_before_sending(service):
    with service.client() as client, pytest.raises(TypeError, match="unknown stylize options"):
        client.stylize(PICTURE, colour="red")
    assert service.requests == []


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_answer_is_sent_again_after_retry_after(service, status):
    busy = refusal(status, "overloaded", "busy", {"Retry-After": "2"})
    service.on("POST", "/v1/stylize", busy, lambda request: stylized())
    with service.client() as client:
        assert client.stylize(PICTURE).data == STYLIZED
    assert service.sleeps == [2.0] and len(service.requests) == 2
    assert service.requests[0].content == service.requests[1].content == PICTURE


def test_retries_are_bounded_and_end_in_the_services_error(service):
    service.on("POST", "/v1/stylize", refusal(503, "overloaded", "busy", {"Retry-After": "600"}))
    with service.client() as client, pytest.raises(Overloaded) as raised:
        client.stylize(PICTURE)
    assert service.sleeps == [MAX_RETRY_WAIT_S] * RETRIES
    assert raised.value.status == 503 and raised.value.retry_after_s == 600


def test_errors_are_the_services_own_classes(service):
    service.on("POST", "/v1/stylize", refusal(422, "invalid_size", "size must be 16..1024"))
    service.on("GET", "/v1/stats", lambda request: httpx.Response(502, text="<h1>Bad Gateway</h1>"))
    with service.client() as client:
        with pytest.raises(InvalidSize) as refused:
            client.stylize(PICTURE, size=9)
        with pytest.raises(ServiceError) as proxy:
            client.stats()
    assert (refused.value.status, refused.value.message) == (422, "size must be 16..1024")
    assert (proxy.value.status, proxy.value.code) == (502, "http_502")
    assert service.sleeps == []  # a refusal or a 502 without Retry-After is not retried


def test_no_answer_is_its_own_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client(URL, transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(NoAnswer) as raised,
    ):
        client.styles()
    assert raised.value.code == "unreachable" and URL in raised.value.message


def test_a_batch_answers_each_picture_or_its_own_error(service):
    body = {
        "results": [
            {
                "index": 0,
                "status": 200,
                "media_type": "image/png",
                "cache": "hit",
                "style": "alpha",  # the default style: the call named none
                "width": 64,
                "height": 48,
                "data": base64.b64encode(STYLIZED).decode(),
            },
            {
                "index": 1,
                "status": 400,
                "error": {"code": "undecodable_image", "message": "not a picture"},
            },
            {
                "index": 2,
                "status": 503,
                "error": {"code": "overloaded", "message": "busy"},
                "retry_after_s": 1,
            },
        ]
    }
    service.on("POST", "/v1/stylize/batch", answer(200, body))
    with service.client() as client:
        made, refused, busy = client.stylize_batch([PICTURE, b"junk", PICTURE])
    assert made.picture == Picture(STYLIZED, "image/png", "hit", "alpha", 64, 48)
    assert isinstance(refused.error, UndecodableImage) and refused.picture is None
    assert isinstance(busy.error, Overloaded) and busy.error.retry_after_s == 1
    (sent,) = service.requests
    assert sent.headers["content-type"].startswith("multipart/form-data")
    assert sent.content.count(b'name="images"') == 3


def test_the_key_and_url_come_from_the_environment(monkeypatch):
    seen = []
    monkeypatch.setenv("ANIMEGAN_URL", URL)
    monkeypatch.setenv("ANIMEGAN_API_KEY", KEY)
    transport = httpx.MockTransport(
        lambda request: seen.append(request) or answer(200, {})(request)
    )
    with Client(transport=transport) as client:
        client.styles()
    assert str(seen[0].url) == f"{URL}/v1/styles"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


def test_async_a_job_submitted_followed_with_progress_and_fetched(service, tmp_path):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    running = job("running", progress=0.5, frames_done=3, frames_total=6)
    service.on("GET", f"{path}/events", events(running, job("done", progress=1.0)))
    video = b"\x00\x00\x00\x18ftypmp42 a video"
    service.on(
        "GET",
        f"{path}/result",
        lambda request: httpx.Response(200, content=video, headers={"content-type": "video/mp4"}),
    )

    async def scenario():
        seen = []
        async with service.async_client() as client:
            submitted = await client.submit_job(
                PICTURE, media_type="video/mp4", style="alpha", wait_s=5
            )
            done = await client.wait(submitted["id"], on_progress=seen.append)
            download = await client.result(done["id"], tmp_path / "out" / "anime.mp4")
        return seen, done, download

    seen, done, download = asyncio.run(scenario())
    assert [each["state"] for each in seen] == ["running", "done"] and done["state"] == "done"
    assert download.path.read_bytes() == video and download.media_type == "video/mp4"
    (submit,) = service.sent("POST", "/v1/jobs")
    assert submit.headers["prefer"] == "wait=5" and submit.headers["content-type"] == "video/mp4"


def test_async_errors_and_cancel(service):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("DELETE", path, answer(200, job("cancelled")))
    service.on("GET", path, refusal(404, "unknown_job", "no such job"))

    async def scenario():
        async with service.async_client() as client:
            cancelled = await client.cancel(JOB_ID)
            with pytest.raises(UnknownJob):
                await client.job(JOB_ID)
        return cancelled

    assert asyncio.run(scenario())["state"] == "cancelled"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_ends_at_its_deadline_while_the_job_does_not_change(service, kind):
    """Only keep-alives arrive (each resets the read timeout): the wait still ends at
    the first one past its deadline, with the job as it is."""
    stream = KeepsAlive(service)
    service.on(
        "GET",
        f"/v1/jobs/{JOB_ID}/events",
        lambda request: httpx.Response(
            200, stream=stream, headers={"content-type": "text/event-stream"}
        ),
    )
    service.on("GET", f"/v1/jobs/{JOB_ID}", answer(200, job("queued")))
    if kind == "sync":
        with service.client() as client:
            waited = client.wait(JOB_ID, timeout_s=30)
    else:

        async def scenario():
            async with service.async_client() as client:
                return await client.wait(JOB_ID, timeout_s=30)

        waited = asyncio.run(scenario())
    assert waited["state"] == "queued" and stream.sent == 2  # 15 s, 30 s: the deadline


def test_a_submission_carries_one_idempotency_key_across_its_retries(service):
    busy = refusal(503, "overloaded", "busy", {"retry-after": "1"})
    service.on("POST", "/v1/jobs", busy, answer(202, job("queued")))
    with service.client() as client:
        client.submit_job(PICTURE, media_type="image/png")
        client.submit_job(PICTURE, media_type="image/png", idempotency_key="mine")
    first, again, mine = (sent.headers.get("idempotency-key") for sent in service.requests)
    assert first and first == again  # the retry finds the job the first send made
    assert mine == "mine"
    with service.client() as client:
        client.submit_job(PICTURE, media_type="image/png")
    assert service.requests[-1].headers["idempotency-key"] not in (first, mine)


def test_a_redirect_is_an_error_that_names_the_new_address(service, tmp_path):
    moved = {"location": "https://jobs.test/v1/jobs"}
    service.on("GET", f"/v1/jobs/{JOB_ID}", answer(301, None, moved))
    service.on("GET", f"/v1/jobs/{JOB_ID}/result", answer(308, None, moved))
    with service.client() as client:
        with pytest.raises(ServiceError) as read:
            client.job(JOB_ID)
        with pytest.raises(ServiceError) as fetched:
            client.result(JOB_ID, tmp_path / "anime.mp4")
    assert read.value.status == 301 and "https://jobs.test/v1/jobs" in read.value.message
    assert fetched.value.status == 308 and list(tmp_path.iterdir()) == []


def test_the_client_imports_without_torch_ray_or_image_libraries():
    blocked = ("torch", "ray", "numpy", "PIL", "av", "fastapi", "starlette", "redis")
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from serve_app.client import AsyncClient, Client\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
