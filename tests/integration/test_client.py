"""The Python client against a real service on real Ray, with an API key: pictures, a
batch, a video job followed to its end, a cancel, a full queue's 503 waited out, errors
as the service's own classes; and the README's Python example, run as written."""

from __future__ import annotations

import asyncio
import io
import re

import av
import pytest
from PIL import Image

from serve_app.client import AsyncClient, Client
from serve_app.errors import InvalidSize, Unauthorized, UndecodableImage, UnknownJob
from tests.support.media import make_h264_aac_mp4
from tests.support.paths import REPO
from tests.support.pictures import synthetic_jpeg
from tests.support.ray_cluster import wait_for
from tests.support.serve import app_args, deploy, keyed_ingress, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY, OTHER_KEY = "client-key", "other-client-key"
MAX_SIZE = 256
QUEUE = {"max_running": 1, "max_queued": 1}  # a third job waiting is refused: 503
MEDIA = {"max_bytes": 3 * 2**20, "max_duration_s": 30, "max_frames": 400}


@pytest.fixture(scope="module")
def service(default_app, tmp_path_factory) -> str:
    args = app_args(
        limits={"max_size": MAX_SIZE, "max_bytes": 2 * 2**20, "max_pixels": 4_000_000},
        jobs={"store_url": str(tmp_path_factory.mktemp("client-jobs")), **QUEUE},
        media=MEDIA,
    )
    deploy(args, ingress=keyed_ingress([KEY, OTHER_KEY]))
    wait_healthy(default_app)
    return default_app


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-clips")
    return {
        "short": make_h264_aac_mp4(folder / "short.mp4", seconds=1.0, fps=8),
        "long": make_h264_aac_mp4(folder / "long.mp4", seconds=20.0, fps=12),
    }


def test_a_picture_and_a_batch(service):
    photo = synthetic_jpeg(160, 120, seed=94_001)
    with Client(service, KEY) as client:
        first = client.stylize(photo, media_type="image/jpeg", size=64, format="png")
        again = client.stylize(photo, media_type="image/jpeg", size=64, format="png")
        made, refused = client.stylize_batch([photo, b"not a picture"], size=64)
        with pytest.raises(InvalidSize) as too_large:
            client.stylize(photo, media_type="image/jpeg", size=MAX_SIZE * 4)
    with Image.open(io.BytesIO(first.data)) as picture:
        assert picture.format == "PNG" and picture.size == (64, 48)
    assert (first.cache, again.cache, again.data) == ("miss", "hit", first.data)
    assert made.picture is not None and made.picture.width == 64
    assert isinstance(refused.error, UndecodableImage) and refused.error.status == 400
    assert too_large.value.status == 422


def test_a_video_job_followed_with_progress_to_its_end(service, clips, tmp_path):
    async def scenario():
        seen = []
        async with AsyncClient(service, KEY) as client:
            job = await client.submit_job(clips["short"], size=64)
            done = await client.wait(job["id"], timeout_s=120, on_progress=seen.append)
            download = await client.result(job["id"], tmp_path / "anime.mp4")
        return job, seen, done, download

    job, seen, done, download = asyncio.run(scenario())
    assert job["state"] in ("queued", "running", "done") and done["state"] == "done"
    assert seen[-1] == done
    assert [each["frames_done"] for each in seen] == sorted(each["frames_done"] for each in seen)
    with av.open(str(download.path)) as video:
        frames = sum(1 for _ in video.decode(video=0))
    assert download.media_type == "video/mp4" and frames == done["frames_total"]


def test_a_job_is_cancelled_and_hidden_from_another_key(service, clips):
    with Client(service, KEY) as client, Client(service, OTHER_KEY) as other:
        job = client.submit_job(clips["long"], size=64)
        with pytest.raises(UnknownJob):
            other.job(job["id"])
        assert client.cancel(job["id"])["state"] == "cancelled"
        assert client.wait(job["id"], timeout_s=30)["state"] == "cancelled"
    with Client(service, "not-a-key") as stranger, pytest.raises(Unauthorized):
        stranger.styles()


def test_a_full_queue_is_waited_out_after_its_retry_after(service, clips):
    """One job runs and one waits: the next submission is a real 503 with Retry-After.
    While the client waits it out, the two are cancelled; its retry then gets in."""
    with Client(service, KEY) as setup:
        # Two jobs (another size each: the same owner's same job is one job).
        held = [setup.submit_job(clips["long"], size=size) for size in (64, 72)]

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            for job in held:
                setup.cancel(job["id"])
            wait_for(lambda: not _jobs_on_the_replica(setup), 60, "the held jobs to end")

        waits: list[float] = []
        with Client(service, KEY, sleep=sleep) as client:
            # A size no other test asks for: a job made before (the async test's) would
            # be found again, full as the replica is, with no 503 to wait out.
            job = client.submit_job(clips["short"], size=56)
    assert len(waits) == 1 and waits[0] > 0
    assert job["id"] not in {each["id"] for each in held}


def _jobs_on_the_replica(client: Client) -> int:
    figures = client.stats()["jobs"]
    return figures["running"] + figures["queued"]


def test_the_readmes_python_example_runs_as_written(service, tmp_path, monkeypatch):
    """Only what the test deploy differs in is replaced: its address, its style's name,
    and smaller sizes (random weights on a small machine)."""
    readme = (REPO / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert "from serve_app.client import Client" in example
    code = example.replace("http://127.0.0.1:8000", service).replace('"paprika"', '"alpha"')
    code = code.replace('"serve_app/samples/', f'"{REPO}/serve_app/samples/')
    code = re.sub(r"size=\d+", "size=128", code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANIMEGAN_API_KEY", KEY)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    for name, kind in (("anime.webp", "WEBP"), ("anime-print.png", "PNG")):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == kind and max(picture.size) == 128
