"""Jobs without Ray: a fake stylize call and a real store in a temporary folder."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve_app.config import JobsConfig
from serve_app.errors import JobNotDone, StoreFull, UnknownJob, UnsupportedFormat
from serve_app.jobs.service import (
    RECORD,
    RESULT,
    UPLOAD,
    JobRecord,
    JobService,
    JobStore,
    sse_event,
)
from serve_app.options import StylizeOptions
from serve_app.pipeline.results import StylizeResult

JOB1, JOB2 = "a1" * 20, "b2" * 20
OPTIONS = StylizeOptions(style="alpha", size=32, format="png", quality=None)


def fast_config(**overrides) -> JobsConfig:
    fields = {"heartbeat_s": 0.05, "stale_after_s": 0.3, "poll_interval_s": 0.02, **overrides}
    return JobsConfig(**fields)


class FakeStylize:
    """Answers after ``delay`` s; counts calls; ``gate`` (if set) holds every call."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None):
        self.delay, self.error = delay, error
        self.calls = 0
        self.cancelled = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, data: bytes, options: StylizeOptions, timeout_s: float):
        self.calls += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return StylizeResult(
            data=b"picture:" + data,
            media_type="image/png",
            cache="miss",
            style=options.style,
            width=options.size,
            height=options.size,
            key="k",
            random_weights=True,
        )


def service(tmp_path, stylize: FakeStylize, **config) -> JobService:
    config = fast_config(store_url=str(tmp_path / "jobs"), **config)
    return JobService(config, stylize)


async def until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def state_is(jobs: JobService, job_id: str, *states: str):
    async def check() -> bool:
        try:
            return (await jobs.get(job_id)).state in states
        except UnknownJob:
            return False

    return check


def test_a_job_runs_to_done_and_keeps_its_result(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        jobs = service(tmp_path, stylize)
        record, created = await jobs.submit(JOB1, b"photo", OPTIONS)
        assert created
        assert record.state == "queued" and record.frames_total == 1
        await until(state_is(jobs, JOB1, "done"))
        output = await jobs.result(JOB1)
        done = await jobs.get(JOB1)
        return output, done, jobs

    output, done, jobs = asyncio.run(scenario())
    assert output.data == b"picture:photo"
    assert (output.media_type, output.width) == ("image/png", 32)
    assert done.result.bytes == len(output.data)
    assert done.frames_done == done.frames_total == 1
    assert done.started_at >= done.created_at and done.finished_at >= done.started_at
    folder = tmp_path / "jobs" / JOB1
    assert sorted(p.name for p in folder.iterdir()) == sorted([RECORD, RESULT])  # upload gone
    view = jobs.view(done, "http://x")
    assert view.links["result"] == f"http://x/v1/jobs/{JOB1}/result" and view.eta_s == 0.0


def test_the_same_job_submitted_again_is_the_same_job(tmp_path):
    async def scenario():
        stylize = FakeStylize(delay=0.2)
        jobs = service(tmp_path, stylize)
        await jobs.submit(JOB1, b"photo", OPTIONS)
        again, created = await jobs.submit(JOB1, b"photo", OPTIONS)  # while it runs
        assert not created
        await until(state_is(jobs, JOB1, "done"))
        started = time.monotonic()
        finished, _ = await jobs.submit(JOB1, b"photo", OPTIONS)  # once done
        return stylize.calls, again, finished, time.monotonic() - started

    calls, again, finished, seconds = asyncio.run(scenario())
    assert calls == 1
    assert again.id == JOB1 and again.state in ("queued", "running")
    assert finished.state == "done" and seconds < 1


def test_a_failed_job_reports_its_error_and_runs_again_when_resubmitted(tmp_path):
    async def scenario():
        stylize = FakeStylize(error=UnsupportedFormat("not a picture we take"))
        jobs = service(tmp_path, stylize)
        await jobs.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(jobs, JOB1, "failed"))
        failed = await jobs.get(JOB1)
        with pytest.raises(JobNotDone):
            await jobs.result(JOB1)
        stylize.error = None
        await jobs.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(jobs, JOB1, "done"))
        return failed, stylize.calls

    failed, calls = asyncio.run(scenario())
    assert failed.error.code == "unsupported_format"
    assert failed.error.message == "not a picture we take"
    assert calls == 2


def test_an_unexpected_exception_fails_the_job_as_internal_error(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(error=RuntimeError("boom")))
        await jobs.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(jobs, JOB1, "failed"))
        return await jobs.get(JOB1)

    assert asyncio.run(scenario()).error.code == "internal_error"


def test_cancel_stops_the_work_and_deletes_the_files(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize)
        await jobs.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(jobs, JOB1, "running"))
        cancelled = await jobs.cancel(JOB1)
        await asyncio.sleep(0.05)
        with pytest.raises(UnknownJob):
            await jobs.get(JOB1)
        return cancelled, stylize

    cancelled, stylize = asyncio.run(scenario())
    assert cancelled.state == "cancelled"
    assert stylize.cancelled == 1
    assert not (tmp_path / "jobs" / JOB1).exists()


def test_a_delete_on_another_replica_stops_the_runner(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        runner = service(tmp_path, stylize)
        other = service(tmp_path, FakeStylize())
        await runner.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(other, JOB1, "running"))
        await other.cancel(JOB1)
        await until(lambda: _true_when(stylize.cancelled == 1))
        await asyncio.sleep(0.1)
        return stylize

    stylize = asyncio.run(scenario())
    assert stylize.cancelled == 1
    assert not (tmp_path / "jobs" / JOB1).exists()  # the runner wrote nothing back


async def _true_when(value: bool) -> bool:
    return value


def test_a_job_whose_runner_died_is_taken_over_and_finished(tmp_path):
    async def scenario():
        dead = FakeStylize()
        dead.gate = asyncio.Event()  # never opens: this runner "dies" mid-job
        first = service(tmp_path, dead)
        await first.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(first, JOB1, "running"))
        # The replica dies: its tasks stop without a word (no record written).
        for task in list(first._tasks.values()):
            task.cancel()
        await asyncio.sleep(0)
        survivor_model = FakeStylize()
        survivor = service(tmp_path, survivor_model)
        await asyncio.sleep(0.35)  # past stale_after_s
        taken = await survivor.get(JOB1)
        await until(state_is(survivor, JOB1, "done"))
        data = (await survivor.result(JOB1)).data
        return taken, data, survivor_model.calls, survivor.runner_id

    taken, data, calls, survivor_id = asyncio.run(scenario())
    assert taken.runner == survivor_id and taken.state == "queued"
    assert data == b"picture:photo" and calls == 1


def test_jobs_past_max_running_wait_queued(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize, max_running=1)
        await jobs.submit(JOB1, b"one", OPTIONS)
        await jobs.submit(JOB2, b"two", OPTIONS)
        await until(state_is(jobs, JOB1, "running"))
        await asyncio.sleep(0.15)  # a few heartbeats: the waiting job stays queued
        waiting = await jobs.get(JOB2)
        stylize.gate.set()
        await until(state_is(jobs, JOB2, "done"))
        return waiting, stylize.calls

    waiting, calls = asyncio.run(scenario())
    assert waiting.state == "queued" and waiting.heartbeat_at is not None
    assert calls == 2


def test_a_full_store_refuses_new_jobs_and_expired_ones_are_swept(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(), max_store_bytes=1000)
        await jobs.submit(JOB1, b"x" * 300, OPTIONS)
        await until(state_is(jobs, JOB1, "done"))
        with pytest.raises(StoreFull):
            await jobs.submit(JOB2, b"y" * 800, OPTIONS)
        record = await jobs.get(JOB1)
        old = record.model_copy(update={"finished_at": time.time() - 10 * 86400})
        jobs.store.write(old)
        (tmp_path / "jobs" / "debris").mkdir()  # a folder with no record
        await jobs.submit(JOB2, b"y" * 800, OPTIONS)  # the sweep made room
        return jobs.store.job_ids()

    assert asyncio.run(scenario()) == [JOB2]


def test_events_follow_the_job_to_its_end(tmp_path):
    async def scenario():
        stylize = FakeStylize(delay=0.2)
        jobs = service(tmp_path, stylize)
        await jobs.submit(JOB1, b"photo", OPTIONS)
        return [record.state async for record in jobs.events(JOB1)]

    states = asyncio.run(scenario())
    assert states[-1] == "done"
    assert "running" in states
    assert len(states) == len(set(states))  # a change each time, heartbeats aside


def test_events_of_an_unknown_job_raise_before_streaming(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        async for _ in jobs.events("0" * 40):
            pass

    with pytest.raises(UnknownJob):
        asyncio.run(scenario())


def test_sse_event_carries_the_state_and_json():
    record = JobRecord(id=JOB1, state="done", options={}, created_at=0.0, finished_at=1.0)

    class Jobs(JobService):
        def __init__(self):  # only view() is used
            pass

    event = sse_event(Jobs().view(record)).decode()
    assert event.startswith("event: done\ndata: {") and event.endswith("}\n\n")
    assert '"elapsed_s": 1.0' in event


def test_the_store_takes_fsspec_urls(tmp_path):
    store = JobStore("memory://animegan-jobs-test")
    record = JobRecord(id="j1", state="queued", options={}, created_at=1.0)
    store.write(record)
    store.put_blob("j1", UPLOAD, b"abc")
    assert store.read("j1") == record and store.read_blob("j1", UPLOAD) == b"abc"
    assert store.job_ids() == ["j1"] and store.usage_bytes() > 3
    store.delete("j1")
    assert store.read("j1") is None and store.job_ids() == []
    local = JobStore(f"file://{tmp_path}/x")
    local.write(record)
    assert (tmp_path / "x" / "j1" / RECORD).exists()


def test_ids_that_are_not_digests_name_no_job(tmp_path):
    async def scenario(job_id: str):
        await service(tmp_path, FakeStylize()).get(job_id)

    for job_id in ("../../etc/passwd", "ABC", "", "a1" * 100):
        with pytest.raises(UnknownJob):
            asyncio.run(scenario(job_id))


def test_an_idle_event_stream_yields_keep_alives(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize)
        await jobs.submit(JOB1, b"photo", OPTIONS)
        seen = []
        async for record in jobs.events(JOB1, idle_s=0.1):
            seen.append(None if record is None else record.state)
            if seen.count(None) == 2:
                stylize.gate.set()
        return seen

    seen = asyncio.run(scenario())
    assert seen.count(None) >= 2 and seen[-1] == "done"


def test_progress_reported_by_the_model_reaches_the_record_and_the_eta(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        progress = {JOB1: 0.0}
        config = fast_config(store_url=str(tmp_path / "jobs"))
        jobs = JobService(config, stylize, progress_of=progress.get)
        await jobs.submit(JOB1, b"photo", OPTIONS)
        await until(state_is(jobs, JOB1, "running"))
        progress[JOB1] = 0.5

        async def halfway() -> bool:
            return (await jobs.get(JOB1)).progress == 0.5

        await until(halfway)
        view = jobs.view(await jobs.get(JOB1))
        stylize.gate.set()
        await until(state_is(jobs, JOB1, "done"))
        return view, await jobs.get(JOB1)

    view, done = asyncio.run(scenario())
    assert view.eta_s is not None and view.eta_s > 0
    assert done.progress == 1.0


class FakeMedia:
    """A media job: reports frames as it goes, then writes a 'video' file."""

    def __init__(self, tmp_path, frames: int = 6, delay: float = 0.02, hang: bool = False):
        self.tmp_path, self.frames, self.delay, self.hang = tmp_path, frames, delay, hang

    async def __call__(self, options: StylizeOptions, data: bytes, on_progress):
        from serve_app.media.frames import FrameCounts, MediaOutput

        counts = FrameCounts(total=self.frames)
        for _ in range(self.frames):
            await asyncio.sleep(self.delay)
            counts.done += 1
            counts.model += 1
            on_progress(counts)
        if self.hang:
            await asyncio.sleep(3600)
        path = self.tmp_path / "made.mp4"
        path.write_bytes(b"video:" + data)
        return MediaOutput("video/mp4", 64, 36, self.frames, 0.6, path=path)


class FakeInfo:
    kind = "video"
    frames = 6
    fps = 10.0
    duration_s = 0.6

    def to_dict(self) -> dict:
        return {"kind": "video", "frames": 6}


def test_a_video_job_reports_frames_and_stores_its_file(tmp_path):
    async def scenario():
        jobs = JobService(
            fast_config(store_url=str(tmp_path / "jobs")),
            FakeStylize(),
            run_media=FakeMedia(tmp_path),
        )
        record, created = await jobs.submit(JOB1, b"clip", OPTIONS, FakeInfo())
        assert created and record.kind == "video" and record.frames_total == 6
        await until(state_is(jobs, JOB1, "done"))
        done = await jobs.get(JOB1)
        assert (done.frames_done, done.frames_model, done.result.frames) == (6, 6, 6)
        assert done.result.media_type == "video/mp4" and done.result.bytes == len(b"video:clip")
        assert await jobs.result_range(JOB1, 6, 4) == b"clip"
        chunks = [chunk async for chunk in jobs.result_chunks(JOB1, done.result.bytes, 3)]
        assert b"".join(chunks) == b"video:clip"
        assert not (tmp_path / "made.mp4").exists()  # moved into the store

    asyncio.run(scenario())


def test_a_video_job_past_its_deadline_fails_with_timeout(tmp_path):
    async def scenario():
        jobs = JobService(
            fast_config(store_url=str(tmp_path / "jobs"), timeout_s=0.3),
            FakeStylize(),
            run_media=FakeMedia(tmp_path, hang=True),
        )
        await jobs.submit(JOB1, b"clip", OPTIONS, FakeInfo())
        await until(state_is(jobs, JOB1, "failed"))
        assert (await jobs.get(JOB1)).error.code == "timeout"

    asyncio.run(scenario())


def test_a_submitter_that_goes_away_mid_way_still_leaves_a_running_job(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        # No take-over within the test: the job must run because its submission finished.
        jobs = service(tmp_path, stylize, stale_after_s=60)
        storing = threading.Event()
        put_blob = jobs.store.put_blob

        def slow_put_blob(*args):
            storing.wait(5)
            put_blob(*args)

        jobs.store.put_blob = slow_put_blob
        submit = asyncio.ensure_future(jobs.submit(JOB1, b"photo", OPTIONS))
        await until(state_is(jobs, JOB1, "queued"))  # the record is written, the upload not
        submit.cancel()  # what Serve does when the client hangs up
        storing.set()
        with pytest.raises(asyncio.CancelledError):
            await submit
        await until(state_is(jobs, JOB1, "done", "failed"))
        assert (await jobs.get(JOB1)).state == "done" and stylize.calls == 1

    asyncio.run(scenario())


def test_the_same_upload_submitted_twice_at_once_is_one_job(tmp_path):
    async def scenario():
        stylize = FakeStylize(delay=0.05)
        jobs = service(tmp_path, stylize)
        (first, made_first), (second, made_second) = await asyncio.gather(
            jobs.submit(JOB1, b"photo", OPTIONS), jobs.submit(JOB1, b"photo", OPTIONS)
        )
        assert first.id == second.id and sorted([made_first, made_second]) == [False, True]
        await until(state_is(jobs, JOB1, "done"))
        assert stylize.calls == 1

    asyncio.run(scenario())
