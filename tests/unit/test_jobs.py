"""Jobs without Ray: a fake stylize call, real record stores (SQLite, and a real Redis
server on loopback) and a real folder. Every test runs on both record stores."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time

import pytest

from serve_app.config import JobsConfig
from serve_app.errors import (
    IdempotencyKeyReused,
    InvalidParameters,
    JobExpired,
    JobNotDone,
    Overloaded,
    OwnerRequired,
    StoreFull,
    TooManyJobs,
    UnknownJob,
    UnsupportedFormat,
)
from serve_app.http.jobs import sse_event
from serve_app.jobs.blobs import UPLOAD
from serve_app.jobs.records import ANONYMOUS, JOB_ID, JobView
from serve_app.jobs.service import JobService
from serve_app.options import StylizeOptions
from tests.support.job_service import ALICE, BOB, OPTIONS, FakeStylize, submission, until
from tests.support.redis_server import started_server

RECORDS_URL: str | None = None  # the record store under test (None: SQLite in the folder)


@pytest.fixture(scope="module")
def redis_server():
    yield from started_server()


@pytest.fixture(params=["sqlite", "redis"], autouse=True)
def record_store(request):
    global RECORDS_URL
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        RECORDS_URL = server.url
    yield request.param
    RECORDS_URL = None


def fast_config(tmp_path, **overrides) -> JobsConfig:
    fields = {
        "store_url": str(tmp_path / "jobs"),
        "records_url": RECORDS_URL,
        "heartbeat_s": 0.05,
        "stale_after_s": 0.3,
        "progress_every_s": 0.02,
        "poll_interval_s": 0.02,
        **overrides,
    }
    return JobsConfig(**fields)


def service(tmp_path, stylize, **config) -> JobService:
    jobs = JobService(fast_config(tmp_path, **config), stylize)
    jobs.start()
    return jobs


def state_is(jobs: JobService, job_id: str, *states: str, owner: str = ALICE):
    async def check() -> bool:
        return (await jobs.get(job_id, owner)).state in states

    return check


def run(scenario):
    """Run an async scenario; every JobService it made is closed afterwards."""

    async def main():
        made: list[JobService] = []
        original = JobService.__init__

        def tracking(self, *args, **kwargs):
            original(self, *args, **kwargs)
            made.append(self)

        JobService.__init__ = tracking
        try:
            return await scenario()
        finally:
            JobService.__init__ = original
            for jobs in made:
                await jobs.close()

    return asyncio.run(main())


def test_a_job_runs_to_done_and_keeps_its_result_only(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        record, created = await jobs.submit(submission())
        assert created and record.state == "queued" and record.frames_total == 1
        done = await jobs.wait(record.id, ALICE, 10)
        return jobs, done, await jobs.result(record.id, ALICE)

    jobs, done, output = run(scenario)
    assert JOB_ID.match(done.id)
    assert output.data == b"picture:photo"
    assert (output.media_type, output.width) == ("image/png", 32)
    assert done.result.bytes == len(output.data) and done.frames_done == done.frames_total == 1
    assert done.started_at >= done.created_at and done.finished_at >= done.started_at
    folder = tmp_path / "jobs" / done.id
    assert [p.name for p in folder.iterdir()] == [done.result_name]  # the upload is gone
    view = jobs.view(done, "http://x")
    assert view.links["result"] == f"http://x/v1/jobs/{done.id}/result" and view.eta_s == 0.0
    assert "owner" not in view.model_dump() and "content_key" not in view.model_dump()


def test_ids_are_random_never_the_content(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        first, _ = await jobs.submit(submission(owner=""))
        second, created = await jobs.submit(submission(owner=""))
        return first, second, created

    first, second, created = run(scenario)
    assert created and first.id != second.id  # an open service never shares a job
    assert len(first.id) == 32 and first.content_key not in first.id


def test_the_same_owner_gets_its_job_back_another_owner_a_job_of_its_own(tmp_path):
    async def scenario():
        stylize = FakeStylize(delay=0.2)
        jobs = service(tmp_path, stylize)
        mine, _ = await jobs.submit(submission())
        again, created_again = await jobs.submit(submission())  # while it runs
        await jobs.wait(mine.id, ALICE, 10)
        started = time.monotonic()
        theirs, created_theirs = await jobs.submit(submission(owner=BOB))
        theirs = await jobs.wait(theirs.id, BOB, 10)
        return mine, again, created_again, theirs, created_theirs, time.monotonic() - started

    mine, again, created_again, theirs, created_theirs, seconds = run(scenario)
    assert again.id == mine.id and not created_again
    assert created_theirs and theirs.id != mine.id
    # Answered from the first job's output, copied: no second model call.
    assert theirs.state == "done" and theirs.result.cache == "hit" and seconds < 1


def test_a_picture_a_replica_of_the_deploy_before_made_is_its_owners_only(tmp_path):
    """During a redeploy with other weights a replica of the deploy before may make a job's
    picture: its owner gets it, another owner's job of the same content is made afresh
    (then shared again)."""

    async def scenario():
        stylize = FakeStylize()
        stylize.configured_weights = False
        jobs = service(tmp_path, stylize)
        mine, _ = await jobs.submit(submission())
        mine = await jobs.wait(mine.id, ALICE, 10)
        stylize.configured_weights = True
        made = []
        for owner in (BOB, "c" * 32):
            theirs, _ = await jobs.submit(submission(owner=owner))
            made.append(await jobs.wait(theirs.id, owner, 10))
        return mine, made, stylize.calls

    mine, (bobs, carols), calls = run(scenario)
    assert mine.state == bobs.state == carols.state == "done"
    assert (bobs.result.cache, carols.result.cache, calls) == ("miss", "hit", 2)


def test_another_owner_cannot_see_or_end_a_job(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize)
        mine, _ = await jobs.submit(submission())
        for call in (
            jobs.get(mine.id, BOB),
            jobs.cancel(mine.id, BOB),
            jobs.result(mine.id, BOB),
            anext(jobs.events(mine.id, BOB)),
        ):
            with pytest.raises(UnknownJob):
                await call
        with pytest.raises(UnknownJob):
            await jobs.get(mine.id, "")  # nor can anyone without the owner's key
        stylize.gate.set()
        return await jobs.wait(mine.id, ALICE, 10)

    assert run(scenario).state == "done"


def test_a_failed_job_reports_its_error_and_runs_again_when_resubmitted(tmp_path):
    async def scenario():
        stylize = FakeStylize(error=UnsupportedFormat("not a picture we take"))
        jobs = service(tmp_path, stylize)
        first, _ = await jobs.submit(submission())
        failed = await jobs.wait(first.id, ALICE, 10)
        with pytest.raises(JobNotDone):
            await jobs.result(first.id, ALICE)
        stylize.error = None
        second, created = await jobs.submit(submission())
        done = await jobs.wait(second.id, ALICE, 10)
        return failed, created, done, stylize.calls, await jobs.records.usage()

    failed, created, done, calls, usage = run(scenario)
    assert failed.error.code == "unsupported_format"
    assert failed.error.message == "not a picture we take"
    assert created and done.state == "done" and calls == 2
    assert usage == done.result.bytes  # the failed job holds no space


def test_a_still_job_that_finds_the_service_at_capacity_waits_for_room(tmp_path):
    async def scenario():
        stylize = FakeStylize(overloads=2)
        jobs = service(tmp_path, stylize)
        record, _ = await jobs.submit(submission())
        return await jobs.wait(record.id, ALICE, 10), stylize.calls

    done, calls = run(scenario)
    assert done.state == "done" and done.attempts == 1 and calls == 3


def test_a_still_job_whose_deadline_passes_at_capacity_fails_overloaded(tmp_path):
    async def scenario():
        stylize = FakeStylize(overloads=1000)
        jobs = service(tmp_path, stylize, timeout_s=1.0)
        record, _ = await jobs.submit(submission())
        return await jobs.wait(record.id, ALICE, 10), stylize.calls

    failed, calls = run(scenario)
    assert failed.state == "failed" and failed.error.code == "overloaded"
    assert 2 <= calls < 10  # asked again, waiting longer each time


def test_an_unexpected_exception_fails_the_job_as_internal_error(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(error=RuntimeError("boom")))
        record, _ = await jobs.submit(submission())
        return await jobs.wait(record.id, ALICE, 10)

    assert run(scenario).error.code == "internal_error"


def test_cancel_stops_the_work_deletes_the_files_and_keeps_the_record(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize)
        record, _ = await jobs.submit(submission())
        await stylize.started.wait()
        cancelled = await jobs.cancel(record.id, ALICE)
        await until(lambda: _now(stylize.cancelled == 1))
        again = await jobs.cancel(record.id, ALICE)  # a second DELETE changes nothing
        return cancelled, again, await jobs.get(record.id, ALICE), await jobs.records.usage()

    cancelled, again, read, usage = run(scenario)
    assert cancelled.state == again.state == read.state == "cancelled"
    assert read.expires_at > time.time() and usage == 0
    assert not (tmp_path / "jobs" / cancelled.id).exists()


async def _now(value: bool) -> bool:
    return value


def test_a_delete_on_another_replica_stops_the_runner_and_wins(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        runner = service(tmp_path, stylize)
        other = service(tmp_path, FakeStylize())
        record, _ = await runner.submit(submission())
        await stylize.started.wait()
        await other.cancel(record.id, ALICE)
        await until(lambda: _now(stylize.cancelled == 1))
        await until(lambda: _now(not len(runner.runs)))
        return await runner.get(record.id, ALICE)

    final = run(scenario)
    assert final.state == "cancelled" and final.result is None
    assert not (tmp_path / "jobs" / final.id).exists()  # the runner wrote nothing back


def test_a_delete_wins_over_a_runner_that_is_writing_its_result(tmp_path):
    """The runner's last writes are conditional: a cancel between its result upload and
    its "done" leaves the job cancelled, the result deleted."""

    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        blobs = jobs.blobs
        stored = asyncio.Event()
        record_id: list[str] = []
        original_put = blobs.put

        def put_then_cancel(job_id, name, data):
            original_put(job_id, name, data)
            if name.startswith("result"):
                stored.set()
                time.sleep(0.2)  # the DELETE lands while this write "finishes"

        blobs.put = put_then_cancel
        record, _ = await jobs.submit(submission())
        record_id.append(record.id)
        await until(lambda: _now(stored.is_set()))
        await jobs.cancel(record.id, ALICE)
        await until(lambda: _now(not len(jobs.runs)))
        return await jobs.get(record.id, ALICE)

    final = run(scenario)
    assert final.state == "cancelled"
    folder = tmp_path / "jobs" / final.id
    assert not folder.exists() or not any(folder.iterdir())


def test_a_job_whose_runner_died_is_taken_over_by_one_replica_and_finished(tmp_path):
    async def scenario():
        dead = FakeStylize()
        dead.gate = asyncio.Event()  # never opens: this runner "dies" mid-job
        first = JobService(fast_config(tmp_path), dead)  # no background work: it is dead
        record, _ = await first.submit(submission())
        await until(state_is(first, record.id, "running"))
        for job_run in first.runs:  # dies without a word
            job_run.task.cancel()
        survivors = [JobService(fast_config(tmp_path), FakeStylize()) for _ in range(3)]
        await until(lambda: _stale(survivors[0], record.id))  # its lease ran out
        taken = await asyncio.gather(*(s.runs.take_over_stale() for s in survivors))
        await until(state_is(survivors[0], record.id, "done"))
        done = await survivors[0].get(record.id, ALICE)
        return taken, done, [s._context.stylize.calls for s in survivors]

    taken, done, calls = run(scenario)
    assert sorted(taken) == [0, 0, 1]  # concurrent looks: exactly one takeover
    assert done.state == "done" and done.attempts == 2 and sum(calls) == 1


def test_a_job_whose_runners_keep_dying_fails_with_a_code(tmp_path):
    async def scenario():
        jobs = JobService(fast_config(tmp_path, max_attempts=2), _held())
        record, _ = await jobs.submit(submission())
        await _die(jobs)
        await jobs.records.update(record.id, jobs.runner_id, {"attempts": 2, "lease_until": 0})
        other = JobService(fast_config(tmp_path, max_attempts=2), FakeStylize())
        await other.runs.take_over_stale()
        return await other.get(record.id, ALICE), await other.records.usage()

    failed, usage = run(scenario)
    assert failed.state == "failed" and failed.error.code == "runner_lost" and usage == 0


async def _stale(jobs: JobService, job_id: str) -> bool:
    return job_id in await jobs.records.stale(time.time(), 10)


def _held() -> FakeStylize:
    """A model call that never ends: a run dies at it, not in a record write (the Redis
    client may swallow a cancellation that meets its reply)."""
    stylize = FakeStylize()
    stylize.gate = asyncio.Event()
    return stylize


async def _die(jobs: JobService) -> None:
    """The replica's runs stop without a word (as when its process is killed), once they
    are at the model."""
    await jobs._context.stylize.started.wait()
    runs = list(jobs.runs)
    for job_run in runs:
        job_run.task.cancel()
    await asyncio.gather(*(job_run.task for job_run in runs), return_exceptions=True)


def test_a_takeover_without_the_upload_fails_clearly(tmp_path):
    async def scenario():
        jobs = JobService(fast_config(tmp_path), _held())
        record, _ = await jobs.submit(submission())
        await _die(jobs)
        jobs.blobs.delete(record.id, UPLOAD)
        await jobs.records.update(record.id, jobs.runner_id, {"lease_until": 0})
        other = JobService(fast_config(tmp_path), FakeStylize())
        await other.runs.take_over_stale()
        return await other.get(record.id, ALICE)

    failed = run(scenario)
    assert failed.state == "failed" and failed.error.code == "runner_lost"
    assert "upload" in failed.error.message


def test_jobs_past_max_running_wait_queued_holding_their_lease(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize, max_running=1)
        one, _ = await jobs.submit(submission(b"one"))
        two, _ = await jobs.submit(submission(b"two"))
        await until(state_is(jobs, one.id, "running"))
        leased = (await jobs.get(two.id, ALICE)).lease_until
        # The waiting job's lease is renewed while it waits: wait for a renewal.
        await until(lambda: _renewed(jobs, two.id, leased))
        waiting = await jobs.get(two.id, ALICE)
        stylize.gate.set()
        await until(state_is(jobs, two.id, "done"))
        return waiting, stylize.calls

    waiting, calls = run(scenario)
    assert waiting.state == "queued" and calls == 2


async def _renewed(jobs: JobService, job_id: str, before: float) -> bool:
    return (await jobs.records.get(job_id)).lease_until > before


def test_a_queue_past_its_bound_answers_overloaded_and_waiting_has_a_deadline(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize, max_running=1, max_queued=1, queue_timeout_s=0.5)
        first, _ = await jobs.submit(submission(b"one", idempotency_key="first"))
        second, _ = await jobs.submit(submission(b"two"))
        with pytest.raises(Overloaded):
            await jobs.submit(submission(b"three"))
        # A resubmission (its answer was lost) finds its job, full as the replica is.
        again, made = await jobs.submit(submission(b"one", idempotency_key="first"))
        same_bytes, made_too = await jobs.submit(submission(b"two"))
        with pytest.raises(IdempotencyKeyReused):
            await jobs.submit(submission(b"other", idempotency_key="first"))
        found = (again.id, made, same_bytes.id, made_too) == (first.id, False, second.id, False)
        return found, await jobs.wait(second.id, ALICE, 10)

    found, waited = run(scenario)
    assert found
    assert waited.state == "failed" and waited.error.code == "queue_timeout"


class InTurn:
    """A stylize call that ends when the test lets one through; the uploads in the order
    their calls began."""

    def __init__(self) -> None:
        self.began: list[bytes] = []
        self.go = asyncio.Semaphore(0)

    async def __call__(self, data: bytes, options: StylizeOptions, timeout_s: float):
        self.began.append(data)
        await self.go.acquire()
        return await FakeStylize()(data, options, timeout_s)


def test_api_keys_with_backlogs_take_turns_at_the_places_to_run(tmp_path):
    async def scenario():
        stylize = InTurn()
        jobs = service(tmp_path, stylize, max_running=1)
        for data in (b"a1", b"a2", b"a3"):
            await jobs.submit(submission(data, owner=ALICE))
        await until(lambda: _began(stylize, 1))
        for data in (b"b1", b"b2"):
            await jobs.submit(submission(data, owner=BOB))
        for count in range(2, 6):
            stylize.go.release()
            await until(lambda count=count: _began(stylize, count))
        stylize.go.release()
        return stylize.began

    assert run(scenario) == [b"a1", b"b1", b"a2", b"b2", b"a3"]


async def _began(stylize: InTurn, count: int) -> bool:
    return len(stylize.began) >= count


def test_a_key_past_its_bound_of_active_jobs_answers_too_many_jobs(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize, max_running=1, max_active_per_key=2)
        first, _ = await jobs.submit(submission(b"one"))
        await jobs.submit(submission(b"two"))
        with pytest.raises(TooManyJobs) as refused:
            await jobs.submit(submission(b"three"))
        again, made = await jobs.submit(submission(b"one"))  # a resubmission finds its job
        await jobs.submit(submission(b"three", owner=BOB))  # another key has its own bound
        for n in range(3):  # so has no key (an open service)
            await jobs.submit(submission(b"open-%d" % n, owner=ANONYMOUS))
        stylize.gate.set()
        await until(state_is(jobs, first.id, "done"))
        after, _ = await jobs.submit(submission(b"three"))  # room again
        return refused.value, (again.id == first.id, made), after.state

    refused, (same, made), after = run(scenario)
    assert (refused.status, refused.code, refused.retry_after_s) == (429, "too_many_jobs", 30)
    assert "2 jobs queued or running" in refused.message
    assert same and not made and after in ("queued", "running", "done")


def test_a_burst_of_one_key_s_submissions_at_once_stays_within_its_bound(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize, max_running=1, max_active_per_key=3)
        burst = [jobs.submit(submission(b"burst-%d" % n)) for n in range(8)]
        outcomes = await asyncio.gather(*burst, return_exceptions=True)
        stylize.gate.set()
        return outcomes

    outcomes = run(scenario)
    made = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, TooManyJobs)]
    assert len(made) == 3 and len(refused) == 5


def test_a_full_store_refuses_new_jobs_and_loses_nothing_stored(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(), max_store_bytes=200_000)
        big = OPTIONS.__class__(**{**OPTIONS.to_dict(), "size": 200})
        first, _ = await jobs.submit(submission(b"x" * 300, options=big))
        first = await jobs.wait(first.id, ALICE, 10)
        with pytest.raises(StoreFull):
            await jobs.submit(submission(b"y" * 100_000, options=big))
        return first, await jobs.result(first.id, ALICE)

    first, output = run(scenario)
    assert first.state == "done" and output.data == b"picture:" + b"x" * 300


def test_a_store_that_cannot_be_written_fails_the_job_with_a_code(tmp_path, monkeypatch):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        filesystem = jobs.blobs._fs
        real_open = filesystem.open

        def disk_full(path, mode="rb", **kwargs):
            if "result" in path and "w" in mode:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, mode, **kwargs)

        monkeypatch.setattr(filesystem, "open", disk_full)
        record, _ = await jobs.submit(submission())
        return await jobs.wait(record.id, ALICE, 10), await jobs.records.usage()

    failed, usage = run(scenario)
    assert failed.state == "failed" and failed.error.code == "store_full" and usage == 0
    assert not (tmp_path / "jobs" / failed.id).exists()


def test_expired_jobs_are_swept_in_the_background_and_answer_expired_to_their_owner(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(), ttl_s=0.2, sweep_interval_s=0.05)
        record, _ = await jobs.submit(submission())
        await jobs.wait(record.id, ALICE, 10)
        await until(lambda: _gone(jobs, record.id))
        with pytest.raises(JobExpired):
            await jobs.get(record.id, ALICE)
        with pytest.raises(UnknownJob):  # another key's: as unknown as any
            await jobs.get(record.id, BOB)
        with pytest.raises(UnknownJob):
            await jobs.get("f" * 32, ALICE)
        return record, await jobs.records.usage()

    record, usage = run(scenario)
    assert usage == 0 and not (tmp_path / "jobs" / record.id).exists()


def test_a_job_whose_files_could_not_be_deleted_keeps_its_record_until_they_are(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(), ttl_s=0.05, sweep_interval_s=3600)
        record, _ = await jobs.submit(submission())
        await jobs.wait(record.id, ALICE, 10)
        await asyncio.sleep(0.1)  # past its time to live
        delete = jobs.blobs.delete
        jobs.blobs.delete = lambda job_id, name=None: False  # a writer in its folder
        first = await jobs.sweep()
        kept = await jobs.records.get(record.id)
        jobs.blobs.delete = delete
        second = await jobs.sweep()
        return first, kept, second, await _gone(jobs, record.id), record.id

    first, kept, second, gone, job_id = run(scenario)
    assert (first, second) == (0, 1) and kept is not None and gone
    assert not (tmp_path / "jobs" / job_id).exists()


async def _gone(jobs: JobService, job_id: str) -> bool:
    return await jobs.records.get(job_id) is None


def test_concurrent_submissions_with_expiry_running_all_succeed(tmp_path):
    async def scenario():
        jobs = service(
            tmp_path,
            FakeStylize(),
            ttl_s=0.05,
            sweep_interval_s=0.01,
            max_queued=500,
            max_active_per_key=500,
        )
        submissions = [jobs.submit(submission(f"p{i}".encode())) for i in range(200)]
        results = await asyncio.gather(*submissions, return_exceptions=True)
        return results

    results = run(scenario)
    assert [r for r in results if isinstance(r, BaseException)] == []


def test_listing_is_the_owners_newest_first_paginated_and_filtered(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(), max_queued=200, max_active_per_key=200)
        mine = [(await jobs.submit(submission(f"m{i}".encode())))[0] for i in range(105)]
        await jobs.submit(submission(b"theirs", owner=BOB))
        for record in mine:
            await jobs.wait(record.id, ALICE, 10)
        await jobs.cancel(mine[3].id, ALICE)
        pages, cursor = [], None
        while True:
            page, cursor = await jobs.list(ALICE, cursor=cursor, limit=20)
            pages.append(page)
            if cursor is None:
                break
        cancelled, _ = await jobs.list(ALICE, state="cancelled")
        return mine, pages, cancelled

    mine, pages, cancelled = run(scenario)
    listed = [record.id for page in pages for record in page]
    assert listed == [record.id for record in reversed(mine)]  # all, newest first, once
    assert [len(page) for page in pages] == [20, 20, 20, 20, 20, 5]
    assert [record.id for record in cancelled] == [mine[3].id]


def test_an_idempotency_key_gets_the_same_job_and_refuses_other_content(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        first, created = await jobs.submit(submission(owner="", idempotency_key="k-1"))
        again, created_again = await jobs.submit(submission(owner="", idempotency_key="k-1"))
        with pytest.raises(IdempotencyKeyReused):
            await jobs.submit(submission(b"other", owner="", idempotency_key="k-1"))
        return first, created, again, created_again

    first, created, again, created_again = run(scenario)
    assert created and not created_again and again.id == first.id


def test_every_caller_gets_the_routes_checks_of_keys_and_owners(tmp_path):
    """A Serve handle calls the service directly: an idempotency key the route refuses is
    refused here too (an empty one named every key-less submission of SQLite's one job),
    and an open service's anonymous owner lists nothing (it would list every job)."""

    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        refused = []
        for key in ("", " padded", "x" * 256, "tab\there"):
            with pytest.raises(InvalidParameters) as raised:
                await jobs.submit(submission(idempotency_key=key))
            refused.append(raised.value.code)
        with pytest.raises(OwnerRequired):
            await jobs.list(ANONYMOUS)
        made, _ = await jobs.submit(submission(idempotency_key="x" * 255))
        return refused, made

    refused, made = run(scenario)
    assert refused == ["invalid_parameters"] * 4 and made.idempotency_key == "x" * 255


def test_an_idempotency_key_sent_twice_at_once_with_other_content_is_refused(tmp_path):
    """The second arrives while the first is being made: it waits for that job and, its
    upload being another, is refused as if it came after (it got the other upload's job)."""

    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        mine = submission(owner="", idempotency_key="k-2")
        same = submission(owner="", idempotency_key="k-2")
        other = submission(b"other", owner="", idempotency_key="k-2")
        return await asyncio.gather(
            jobs.submit(mine), jobs.submit(same), jobs.submit(other), return_exceptions=True
        )

    (first, created), (again, created_again), refused = run(scenario)
    assert created and not created_again and again.id == first.id
    assert isinstance(refused, IdempotencyKeyReused)


def test_events_follow_the_job_to_its_end_pushed_not_polled(tmp_path):
    async def scenario():
        stylize = FakeStylize(delay=0.1)
        jobs = service(tmp_path, stylize)
        record, _ = await jobs.submit(submission())
        reads = 0
        original_get = jobs.records.get

        async def counted_get(job_id):
            nonlocal reads
            reads += 1
            return await original_get(job_id)

        jobs.records.get = counted_get
        followers = [_collect(jobs, record.id) for _ in range(100)]
        seen = await asyncio.gather(*followers)
        return seen, reads

    seen, reads = run(scenario)
    for states in seen:
        assert states[-1] == "done" and states == sorted(set(states), key=states.index)
    assert reads == 100  # one read as each follower starts; every change after is pushed


async def _collect(jobs: JobService, job_id: str) -> list[str]:
    return [r.state async for r in jobs.events(job_id, ALICE, idle_s=5) if r is not None]


def test_events_from_another_replica_arrive_through_the_change_feed(tmp_path):
    async def scenario():
        runner = service(tmp_path, FakeStylize(delay=0.2))
        follower_side = service(tmp_path, FakeStylize())
        record, _ = await runner.submit(submission())
        return [
            r.state async for r in follower_side.events(record.id, ALICE, idle_s=5) if r is not None
        ]

    states = run(scenario)
    assert states[-1] == "done" and "running" in states


def test_events_of_an_unknown_job_raise_before_streaming(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        with pytest.raises(UnknownJob):
            await anext(jobs.events("0" * 32, ALICE))

    run(scenario)


def test_an_idle_event_stream_yields_keep_alives(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize)
        record, _ = await jobs.submit(submission())
        items = []
        async for item in jobs.events(record.id, ALICE, idle_s=0.05):
            items.append(item)
            if item is None:
                stylize.gate.set()
        return items

    items = run(scenario)
    assert None in items and items[-1].state == "done"


def test_sse_event_carries_the_state_and_json(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        record, _ = await jobs.submit(submission())
        return jobs.view(await jobs.wait(record.id, ALICE, 10))

    view: JobView = run(scenario)
    text = sse_event(view).decode()
    assert text.startswith("event: done\ndata: {") and text.endswith("}\n\n")


def test_ids_that_are_not_ours_name_no_job(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize())
        for job_id in ("../etc", "A" * 32, "a1" * 20, ""):
            with pytest.raises(UnknownJob):
                await jobs.get(job_id, ALICE)

    run(scenario)


def test_wait_returns_the_finished_job_or_the_job_as_it_is(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = service(tmp_path, stylize)
        record, _ = await jobs.submit(submission())
        still_running = await jobs.wait(record.id, ALICE, 0.2)
        stylize.gate.set()
        return still_running, await jobs.wait(record.id, ALICE, 10)

    still_running, done = run(scenario)
    assert still_running.state in ("queued", "running") and done.state == "done"


def test_progress_reported_by_the_model_reaches_the_record_and_the_eta(tmp_path):
    async def scenario():
        progress = {"value": None}
        stylize = FakeStylize()
        stylize.gate = asyncio.Event()
        jobs = JobService(fast_config(tmp_path), stylize, progress_of=lambda key: progress["value"])
        jobs.start()
        record, _ = await jobs.submit(submission())
        await until(state_is(jobs, record.id, "running"))
        progress["value"] = 0.5
        await until(lambda: _progress_at_least(jobs, record.id, 0.5))
        view = jobs.view(await jobs.get(record.id, ALICE))
        stylize.gate.set()
        return view, await jobs.wait(record.id, ALICE, 10)

    view, done = run(scenario)
    assert view.progress == 0.5 and view.eta_s is not None and view.eta_s >= 0
    assert done.progress == 1.0


async def _progress_at_least(jobs: JobService, job_id: str, value: float) -> bool:
    return (await jobs.get(job_id, ALICE)).progress >= value


class FakeMedia:
    """A media job: reports frames as it goes, then writes a 'video' file."""

    def __init__(
        self,
        tmp_path,
        frames: int = 6,
        delay: float = 0.02,
        hang: bool = False,
        cleanup_s: float = 0.0,
        similar: int = 0,
    ):
        self.tmp_path, self.frames, self.delay, self.hang = tmp_path, frames, delay, hang
        self.similar = similar  # the last frames reuse the picture of the one before them
        self.cleanup_s = cleanup_s  # a cancelled job's wait for the model pass it sent
        self.cleaned = False
        self.sources: list = []

    async def __call__(self, options: StylizeOptions, source, on_progress):
        from serve_app.media.frames import FrameCounts, MediaOutput

        self.sources.append(source.read_bytes())
        counts = FrameCounts(total=self.frames)
        for index in range(self.frames):
            await asyncio.sleep(self.delay)
            counts.done += 1
            if index >= self.frames - self.similar:
                counts.similar += 1
            else:
                counts.model += 1
            on_progress(counts)
        if self.hang:
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(self.cleanup_s)
                self.cleaned = True
        path = self.tmp_path / "made.mp4"
        path.write_bytes(b"video:" + source.read_bytes())
        return MediaOutput("video/mp4", 64, 36, self.frames, 0.6, path=path)


class FakeInfo:
    kind = "video"
    frames = 6
    fps = 10.0
    duration_s = 0.6
    width, height = 64, 36

    def to_dict(self):
        return {"kind": self.kind, "frames": self.frames}


def test_a_video_job_reports_frames_and_stores_its_file(tmp_path):
    async def scenario():
        media = FakeMedia(tmp_path)
        jobs = JobService(fast_config(tmp_path), FakeStylize(), run_media=media)
        jobs.start()
        record, created = await jobs.submit(submission(b"movie", media=FakeInfo()))
        assert created and record.kind == "video" and record.frames_total == 6
        done = await jobs.wait(record.id, ALICE, 10)
        return done, await jobs.result(record.id, ALICE), media

    done, output, media = run(scenario)
    assert done.state == "done" and done.frames_done == 6 and done.frames_model == 6
    assert output.data == b"video:movie" and media.sources == [b"movie"]
    assert not (tmp_path / "made.mp4").exists()  # the temporary output went to the store


def test_a_video_job_tells_the_frames_that_reused_a_picture_alike(tmp_path):
    async def scenario():
        jobs = JobService(
            fast_config(tmp_path), FakeStylize(), run_media=FakeMedia(tmp_path, similar=4)
        )
        jobs.start()
        record, _ = await jobs.submit(submission(b"movie", media=FakeInfo()))
        return await jobs.wait(record.id, ALICE, 10)

    done = run(scenario)
    assert done.state == "done" and done.frames_done == 6
    assert (done.frames_model, done.frames_similar) == (2, 4)


def test_a_run_ends_though_its_progress_write_swallowed_the_stop(tmp_path):
    """The redis client can swallow a cancellation that races its own timeout: a run's
    progress task stopped inside such a write still ends, and so does the job (before, the
    task ran on and the job read "running" for good, its lease renewed)."""

    async def scenario():
        jobs = JobService(fast_config(tmp_path), FakeStylize(), run_media=FakeMedia(tmp_path))
        write = jobs.records.update

        async def update(job_id, runner, changes):
            if "frames_done" in changes and "state" not in changes:  # the progress task's
                with contextlib.suppress(asyncio.CancelledError):  # swallowed, as there
                    await asyncio.Event().wait()
            return await write(job_id, runner, changes)

        jobs.records.update = update
        jobs.start()
        record, _ = await jobs.submit(submission(b"movie", media=FakeInfo()))
        return await jobs.wait(record.id, ALICE, 10)

    assert run(scenario).state == "done"


def test_a_cancelled_video_job_is_running_until_its_cleanup_has_ended(tmp_path):
    async def scenario():
        media = FakeMedia(tmp_path, hang=True, cleanup_s=0.5)
        jobs = JobService(fast_config(tmp_path), FakeStylize(), run_media=media)
        jobs.start()
        record, _ = await jobs.submit(submission(b"movie", media=FakeInfo()))
        await until(lambda: _frames_done(jobs, record.id, 6))
        await jobs.cancel(record.id, ALICE)
        # The cancel, and the store's news of it, both stop the run: only once.
        await until(lambda: _nothing_running(jobs))
        return media.cleaned

    assert run(scenario)


async def _frames_done(jobs: JobService, job_id: str, frames: int) -> bool:
    return (await jobs.get(job_id, ALICE)).frames_done >= frames


async def _nothing_running(jobs: JobService) -> bool:
    return jobs.figures()["running"] == 0


def test_a_video_job_past_its_deadline_fails_with_timeout(tmp_path):
    async def scenario():
        jobs = JobService(
            fast_config(tmp_path, timeout_s=0.3),
            FakeStylize(),
            run_media=FakeMedia(tmp_path, hang=True),
        )
        jobs.start()
        record, _ = await jobs.submit(submission(b"movie", media=FakeInfo()))
        return await jobs.wait(record.id, ALICE, 10)

    failed = run(scenario)
    assert failed.state == "failed" and failed.error.code == "timeout"


def test_a_submitter_that_goes_away_mid_way_still_leaves_a_running_job(tmp_path):
    async def scenario():
        jobs = service(tmp_path, FakeStylize(delay=0.1))
        put = jobs.blobs.put
        held = asyncio.Event()

        def slow_put(job_id, name, data):
            time.sleep(0.2)  # the upload is being stored when the client hangs up
            put(job_id, name, data)

        jobs.blobs.put = slow_put
        client = asyncio.ensure_future(jobs.submit(submission()))
        await asyncio.sleep(0.05)
        client.cancel()
        held.set()
        await until(lambda: _count_done(jobs))
        page, _ = await jobs.list(ALICE)
        return page

    page = run(scenario)
    assert [record.state for record in page] == ["done"]


async def _count_done(jobs: JobService) -> bool:
    page, _ = await jobs.list(ALICE)
    return bool(page) and page[0].state == "done"


def test_the_same_upload_submitted_twice_at_once_is_one_job(tmp_path):
    async def scenario():
        stylize = FakeStylize()
        jobs = service(tmp_path, stylize)
        (one, created_one), (two, created_two) = await asyncio.gather(
            jobs.submit(submission()), jobs.submit(submission())
        )
        await jobs.wait(one.id, ALICE, 10)
        return one, two, sorted([created_one, created_two]), stylize.calls

    one, two, created, calls = run(scenario)
    assert one.id == two.id and created == [False, True] and calls == 1


def test_the_store_takes_fsspec_urls_with_a_shared_record_store(tmp_path):
    async def scenario():
        config = fast_config(
            tmp_path,
            store_url=f"memory://jobs-{time.time_ns()}",
            records_url=f"sqlite:///{tmp_path}/records.sqlite3",
        )
        jobs = JobService(config, FakeStylize(), run_media=FakeMedia(tmp_path))
        jobs.start()
        still, _ = await jobs.submit(submission())
        video, _ = await jobs.submit(submission(b"movie", media=FakeInfo()))
        return (
            await jobs.result((await jobs.wait(still.id, ALICE, 10)).id, ALICE),
            await jobs.result((await jobs.wait(video.id, ALICE, 10)).id, ALICE),
        )

    still, video = run(scenario)
    assert still.data == b"picture:photo" and video.data == b"video:movie"


def test_an_object_store_without_a_shared_record_store_is_refused(tmp_path):
    config = fast_config(tmp_path, store_url="memory://somewhere", records_url=None)
    with pytest.raises(ValueError, match="records_url"):
        JobService(config, FakeStylize())
