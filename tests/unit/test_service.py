"""The whole service without Ray: composed over a fake model and an in-process cache,
exactly as the ingress composes it over the Ray-backed ones."""

from __future__ import annotations

import asyncio
import io
import sys
import threading

import av
import pytest
from PIL import Image

from serve_app.config import AppConfig
from serve_app.errors import InvalidVideoOptions, NotReady
from serve_app.model.identity import ModelIdentity
from serve_app.service.service import AnimeService
from tests.support.fakes import FAKE_RUNTIME, RANDOM_WEIGHTS, InvertingModel, LocalCache
from tests.support.media import make_animation, make_video
from tests.support.pictures import synthetic_jpeg


def make_service(tmp_path, **overrides) -> tuple[AnimeService, InvertingModel]:
    config = AppConfig.model_validate(
        {
            "styles": [{"name": "alpha", "weights": "random"}],
            "default_size": 64,
            "jobs": {"store_url": str(tmp_path / "jobs"), "progress_every_s": 0.02},
            **overrides,
        }
    )
    model = InvertingModel(["alpha"])
    service = AnimeService(config, model, LocalCache(), {"alpha": RANDOM_WEIGHTS})
    return service, model


def run(tmp_path, scenario):
    async def main():
        service, model = make_service(tmp_path)
        await service.learn_model_identity()
        service.jobs.start()
        try:
            return await scenario(service, model)
        finally:
            await service.close()

    return asyncio.run(main())


def test_pictures_are_made_cached_and_figured(tmp_path):
    async def scenario(service, model):
        options = service.options({"size": 48, "format": "jpeg"})
        first = await service.stylize(synthetic_jpeg(seed=1), options)
        again = await service.stylize(synthetic_jpeg(seed=1), options)
        stats = await service.stats()
        return first, again, stats, model.pictures, service.styles()

    first, again, stats, pictures, styles = run(tmp_path, scenario)
    assert (first.cache, again.cache, pictures) == ("miss", "hit", 1)
    assert max(Image.open(io.BytesIO(first.data)).size) == 48
    assert stats.requests == {"miss": 1, "hit": 1} and stats.cache.shared.entries == 1
    assert styles.default_style == "alpha" and styles.styles[0].random_weights


def test_stills_share_a_result_whatever_the_options_only_motion_reads(tmp_path):
    gif = make_animation(tmp_path / "a.gif", "gif", frames=3).read_bytes()
    motion = [{}, {"exact_frames": "true"}, {"max_fps": "5", "container": "webm"}]

    async def scenario(service, model):
        photos = [await service.stylize(synthetic_jpeg(seed=3), service.options(o)) for o in motion]
        animations = [await service.stylize(gif, service.options(o)) for o in motion[:2]]
        return photos, animations

    photos, animations = run(tmp_path, scenario)
    assert [photo.cache for photo in photos] == ["miss", "hit", "hit"]
    assert len({photo.key for photo in photos}) == 1
    # An animation reads them: each its own result.
    assert [animation.cache for animation in animations] == ["miss", "miss"]
    assert animations[0].key != animations[1].key


def test_the_cache_gauges_skip_a_sum_a_slow_shard_left_out(tmp_path):
    class Recorded:
        def __init__(self):
            self.cache: list[dict] = []

        def record_result(self, result, options) -> None:
            pass

        def record_cache(self, shared: dict) -> None:
            self.cache.append(shared)

    class SlowShard(LocalCache):
        answered = 1

        async def stats(self) -> dict:
            return {**await super().stats(), "shards": 2, "shards_answered": self.answered}

    async def main():
        styles = [{"name": "alpha", "weights": "random"}]
        jobs = {"store_url": str(tmp_path / "jobs")}
        config = AppConfig.model_validate({"styles": styles, "jobs": jobs})
        metrics, cache = Recorded(), SlowShard()
        service = AnimeService(
            config, InvertingModel(["alpha"]), cache, {"alpha": RANDOM_WEIGHTS}, metrics=metrics
        )
        try:
            await service._cache_stats()
            cache.answered = 2
            await service._cache_stats()
        finally:
            await service.close()
        return metrics.cache

    assert len(asyncio.run(main())) == 1  # only the sum over both shards


def test_what_a_replica_of_the_deploy_before_makes_is_its_callers_only(tmp_path):
    """During a redeploy with other weights a replica of the deploy before may answer: a
    picture, an animation or a video it made goes to its caller, is never cached, and no
    later job copies it."""
    gif = make_animation(tmp_path / "a.gif", "gif", frames=3).read_bytes()
    video = make_video(tmp_path / "clip.mp4", seconds=0.5, fps=10).read_bytes()
    uploads = [synthetic_jpeg(seed=4), gif]

    async def made(service) -> list[str]:
        answers = [await service.stylize(data, service.options({})) for data in uploads]
        job, _ = await service.submit_job(video, service.options({"size": 64}, False))
        job = await service.jobs.wait(job.id, "", 60)
        assert job.state == "done", job.error
        return [answer.cache for answer in answers] + [job.result.cache]

    async def scenario(service, model):
        configured = model.identity
        model.identity = ModelIdentity("weights-of-the-deploy-before", configured.runtime)
        before = [await made(service), await made(service)]
        model.identity = configured
        return before, [await made(service), await made(service)]

    before, after = run(tmp_path, scenario)
    assert before == [["miss", "miss", "miss"]] * 2
    assert after == [["miss", "miss", "miss"], ["hit", "hit", "hit"]]


def test_portrait_mode_is_refused_for_videos_and_animations(tmp_path):
    """No frame of them is searched for faces: they came back whole, as without it."""
    gif = make_animation(tmp_path / "a.gif", "gif", frames=3).read_bytes()
    video = make_video(tmp_path / "clip.mp4", seconds=0.5, fps=10).read_bytes()

    async def scenario(service, model):
        refused = []
        for data, synchronous in ((gif, True), (gif, False), (video, False)):
            options = service.options({"portrait": "crop"}, synchronous)
            try:
                if synchronous:
                    await service.stylize(data, options)
                else:
                    await service.submit_job(data, options)
            except InvalidVideoOptions as error:
                refused.append(error.message)
        return refused, model.frame_calls

    refused, frame_calls = run(tmp_path, scenario)
    assert len(refused) == 3 and all("portrait mode takes still pictures" in m for m in refused)
    assert frame_calls == 0


def test_a_still_job_and_a_video_job_run_to_their_results(tmp_path):
    video = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=10).read_bytes()

    async def scenario(service, model):
        still, _ = await service.submit_job(synthetic_jpeg(seed=2), service.options({}, False))
        clip, _ = await service.submit_job(video, service.options({"size": 64}, False))
        done = [await service.jobs.wait(job.id, "", 60) for job in (still, clip)]
        outputs = [await service.jobs.result(job.id) for job in done]
        return done, outputs, model.frame_calls

    (still, clip), (picture, movie), frame_calls = run(tmp_path, scenario)
    assert still.state == clip.state == "done", (still.error, clip.error)
    assert clip.kind == "video" and clip.frames_done == 10 and frame_calls >= 1
    assert picture.media_type == "image/png"
    with av.open(io.BytesIO(movie.data)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10


def test_a_video_job_never_climbs_back_to_the_http_layer(tmp_path):
    """Every function a video job runs, from submission to its stored output, belongs to
    the service's layers: none is in ``serve_app.http``, the ingress or the model client."""
    video = make_video(tmp_path / "clip.mp4", seconds=0.5, fps=10).read_bytes()
    visited: set[str] = set()

    def profile(frame, event, arg):
        if event == "call":
            visited.add(frame.f_globals.get("__name__", ""))

    async def scenario(service, model):
        sys.setprofile(profile)
        threading.setprofile(profile)
        try:
            job, _ = await service.submit_job(video, service.options({"size": 32}, False))
            return await service.jobs.wait(job.id, "", 60)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)

    done = run(tmp_path, scenario)
    ours = {name for name in visited if name.startswith("serve_app")}
    assert done.state == "done"
    assert {"serve_app.jobs.runner", "serve_app.media.frames"} <= ours
    above = {n for n in ours if n.startswith(("serve_app.http", "serve_app.ingress"))}
    assert above | {n for n in ours if n == "serve_app.model_client"} == set()


@pytest.mark.parametrize("layer", ["serve_app.service", "serve_app.jobs", "serve_app.media"])
def test_the_service_layers_import_without_ray(layer):
    """The contract in pyproject.toml says so; this checks it in a fresh interpreter."""
    import subprocess

    code = f"import sys, {layer}.service; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class StartingModel(InvertingModel):
    """A model whose replica is still starting: no answer until ``started`` is set."""

    def __init__(self, styles: list[str]) -> None:
        super().__init__(styles)
        self.started = asyncio.Event()
        self.asked = 0

    async def identities(self):
        self.asked += 1
        return await super().identities() if self.started.is_set() else {}


def test_the_service_is_ready_once_the_model_answered_and_the_examples_are_warm(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("serve_app.service.service.MODEL_RETRY_S", 0.01)

    async def main():
        config = AppConfig.model_validate(
            {
                "styles": [{"name": "alpha", "weights": "random"}],
                "default_size": 64,
                "warm_examples": ["4.jpg", "2.jpg"],
                "jobs": {"store_url": str(tmp_path / "jobs")},
            }
        )
        model = StartingModel(["alpha"])
        service = AnimeService(config, model, LocalCache(), {"alpha": RANDOM_WEIGHTS})
        start = asyncio.ensure_future(service.start())
        try:
            while model.asked < 3:  # asked, and asked again: the model is still starting
                await asyncio.sleep(0.01)
            with pytest.raises(NotReady, match="no model replica has answered"):
                service.ready()
            assert model.pictures == 0
            model.started.set()
            await asyncio.wait_for(start, 30)
            answer = service.ready()
            assert (answer.status, answer.examples_warm) == ("ready", 2)
            assert all(e.warm["alpha"] for e in service.examples_info().examples)
        finally:
            await service.close()

    asyncio.run(main())


def test_a_replica_of_the_deploy_before_is_no_answer_and_teaches_no_runtime(tmp_path):
    """During a redeploy with other weights a replica of the deploy before may answer
    first: the service is not ready, and keys no picture under what that replica runs."""

    async def main():
        service, model = make_service(tmp_path)
        before = model.identity
        model.identity = ModelIdentity("weights-of-the-deploy-before", "cpu/other-runtime")
        await service.learn_model_identity()
        with pytest.raises(NotReady, match="no model replica has answered"):
            service.ready()
        unknown = service.pipeline.expected_identity("alpha")
        model.identity = before
        await service.learn_model_identity()
        service.ready()
        await service.close()
        return unknown, service.pipeline.expected_identity("alpha")

    unknown, learned = asyncio.run(main())
    assert unknown.runtime == "unknown" and learned.runtime == FAKE_RUNTIME


def test_the_service_is_not_ready_while_the_examples_warm(tmp_path):
    async def main():
        service, _ = make_service(tmp_path, warm_examples=["4.jpg"])
        await service.learn_model_identity()
        with pytest.raises(NotReady, match=r"examples are warming \(0 of 1 ready\)"):
            service.ready()
        await service.close()

    asyncio.run(main())
