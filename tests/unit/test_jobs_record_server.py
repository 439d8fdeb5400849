"""Jobs while their record server (a real Debian redis-server on loopback, AOF on) is away:
down when the service starts, stopped and started again mid-job; the change feed across
both; the stores' URLs from a node's environment. No Ray: a fake stylize call."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from serve_app.config import JobsConfig
from serve_app.errors import StoreError
from serve_app.jobs.records import JobRecord
from serve_app.jobs.redis_store import RedisChanges, RedisRecords
from serve_app.jobs.service import JobService
from serve_app.jobs.stores import shown_url, with_environment
from tests.support.job_service import ALICE, FakeStylize, submission, until
from tests.support.redis_server import RedisServer, redis_available

pytestmark = pytest.mark.skipif(
    not redis_available() and not os.environ.get("CI"), reason="redis-server is not installed"
)


@pytest.fixture
def redis_server():
    """A server of the test's own (each test stops and starts it at will)."""
    server = RedisServer()
    yield server
    server.close()


def config(tmp_path, url: str, **overrides) -> JobsConfig:
    fields = {
        "store_url": str(tmp_path / "jobs"),
        "records_url": url,
        "heartbeat_s": 0.05,
        "stale_after_s": 0.3,
        "progress_every_s": 0.02,
        **overrides,
    }
    return JobsConfig(**fields)


async def closing(*services: JobService) -> None:
    for jobs in services:
        await jobs.close()


def errors_naming(caplog, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and text in r.getMessage()
    ]


def test_a_record_server_down_at_start_is_said_at_once_and_jobs_answer_503(
    tmp_path, redis_server, caplog
):
    caplog.set_level(logging.INFO, logger="serve_app.jobs")

    async def scenario():
        jobs = JobService(config(tmp_path, redis_server.url), FakeStylize())
        jobs.start()
        try:
            await until(lambda: _true(jobs.records_health.away), 5)
            refusals = []
            for call in (jobs.submit(submission()), jobs.get("0" * 32, ALICE)):
                with pytest.raises(StoreError) as refused:
                    await call
                refusals.append(refused.value)
            redis_server.start()  # it comes up: no restart of the service needed
            await until(lambda: _true(not jobs.records_health.away), 5)
            record, _ = await jobs.submit(submission())
            done = await jobs.wait(record.id, ALICE, 10)
            return refusals, done
        finally:
            await closing(jobs)

    refusals, done = asyncio.run(scenario())
    said = errors_naming(caplog, redis_server.url)
    assert len(said) == 1, said  # once, however many looks failed
    assert "503 store_error" in said[0] and "/v1/stylize is served" in said[0]
    for refusal in refusals:
        assert (refusal.status, refusal.code) == (503, "store_error")
        assert f"the job record server ({redis_server.url})" in refusal.message
    assert any("reached again" in r.getMessage() for r in caplog.records)
    assert done.state == "done"


async def _true(value: bool) -> bool:
    return value


def test_a_record_server_restart_mid_job_loses_nothing_and_the_jobs_finish(tmp_path, redis_server):
    """Two replicas on one store. A finished job survives the restart (AOF); a job making
    its output and one waiting for a slot when the server went away both finish once it
    is back (their writes wait for it; or the other replica takes them over after their
    lease: either way exactly once); a follower on the other replica hears each end."""
    redis_server.start()

    async def scenario():
        stylize = FakeStylize()
        runner = JobService(config(tmp_path, redis_server.url, max_running=1), stylize)
        other = JobService(config(tmp_path, redis_server.url), FakeStylize())
        runner.start()
        other.start()
        try:
            finished, _ = await runner.submit(submission(b"before"))
            finished = await runner.wait(finished.id, ALICE, 10)
            stylize.gate = asyncio.Event()
            making, _ = await runner.submit(submission(b"making"))
            waiting, _ = await runner.submit(submission(b"waiting"))
            await until(lambda: _true(stylize.calls == 2))  # "making" is at the model
            followers = [asyncio.ensure_future(_states(other, job.id)) for job in (making, waiting)]
            await asyncio.sleep(0.1)  # the followers are subscribed

            redis_server.stop()
            stylize.gate.set()  # "making" ends, "waiting" takes the slot: no store to write
            with pytest.raises(StoreError):
                await other.get(finished.id, ALICE)
            await asyncio.sleep(0.5)  # past the lease: a takeover may come first once back
            redis_server.start()

            ends = [await other.wait(job.id, ALICE, 20) for job in (making, waiting)]
            heard = await asyncio.wait_for(asyncio.gather(*followers), 20)
            kept = await other.get(finished.id, ALICE)
            outputs = [(await other.result(j.id, ALICE)).data for j in (finished, *ends)]
            return finished, kept, ends, heard, outputs
        finally:
            await closing(runner, other)

    finished, kept, ends, heard, outputs = asyncio.run(scenario())
    assert kept.state == "done" and kept.result == finished.result
    assert [end.state for end in ends] == ["done", "done"]
    assert [states[-1] for states in heard] == ["done", "done"]
    assert outputs == [b"picture:before", b"picture:making", b"picture:waiting"]


async def _states(jobs: JobService, job_id: str) -> list[str]:
    return [r.state async for r in jobs.events(job_id, ALICE, idle_s=30) if r is not None]


class Blip:
    """The record store, but the first call of ``operation`` that sets ``state`` fails as
    a vanished server's does: before writing, or after (the write landed, the answer was
    lost)."""

    def __init__(self, store: RedisRecords, operation: str, state: str, landed: bool):
        self.store, self.operation, self.state, self.landed = store, operation, state, landed
        self.blipped = False

    def __getattr__(self, name: str):
        real = getattr(self.store, name)
        if name != self.operation:
            return real

        async def call(job_id: str, runner: str, changes: dict):
            if self.blipped or changes.get("state") != self.state:
                return await real(job_id, runner, changes)
            self.blipped = True
            if self.landed:
                await real(job_id, runner, changes)
            raise StoreError("the job record server (test) failed: Connection reset by peer")

        return call


@pytest.mark.parametrize(
    "operation, state, landed",
    [("update", "running", False), ("finish", "done", False), ("finish", "done", True)],
    ids=["starting", "ending", "ending-answer-lost"],
)
def test_a_record_server_blip_is_not_the_jobs_failure(
    tmp_path, redis_server, operation, state, landed
):
    """A state change the record server failed to take (or took without answering) is
    written again once it answers: the job neither fails for it nor loses its output."""
    redis_server.start()

    async def scenario():
        store = RedisRecords(redis_server.url)
        blip = Blip(store, operation, state, landed)
        jobs = JobService(
            config(tmp_path, redis_server.url), FakeStylize(), records=(blip, store.feed())
        )
        jobs.start()
        try:
            record, _ = await jobs.submit(submission())
            done = await jobs.wait(record.id, ALICE, 10)
            return blip.blipped, done, (await jobs.result(record.id, ALICE)).data
        finally:
            await jobs.close()

    blipped, done, output = asyncio.run(scenario())
    assert blipped
    assert done.state == "done" and done.attempts == 1, done.error
    assert output == b"picture:photo"


def test_the_change_feed_delivers_what_was_written_before_it_subscribed(redis_server):
    """A change written between a follower's first read and its subscription, or while
    the server was away, is not published to it: the feed reads the record once each
    subscription is confirmed."""
    redis_server.start()

    async def scenario():
        store = RedisRecords(redis_server.url)
        record = JobRecord(
            id="1" * 32, state="queued", options={}, created_at=time.time(), runner="r"
        )
        await store.create(record, find_same_content=False, max_bytes=1 << 30)
        heard: list[JobRecord] = []
        feed = asyncio.ensure_future(store.feed().run(heard.append, lambda: {record.id}))
        try:
            await until(lambda: _true(len(heard) == 1), 5)  # written before: read at subscribe
            redis_server.restart()
            await store.update(record.id, "r", {"progress": 0.5})  # before it resubscribed
            await until(lambda: _true(any(r.progress == 0.5 for r in heard)), 10)
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            await store.close()
        return heard

    heard = asyncio.run(scenario())
    assert heard[0].state == "queued" and heard[-1].progress == 0.5


def test_the_change_feed_stops_when_the_redis_client_swallows_its_cancellation(
    redis_server, monkeypatch
):
    """The client's read converts a cancellation that races its own timeout into "no
    message" (seen as a hang of close() about once in tens of runs); the feed ends anyway."""
    redis_server.start()

    async def scenario():
        store = RedisRecords(redis_server.url)
        client = store._redis
        in_read = asyncio.Event()
        real_pubsub = client.pubsub

        def pubsub(**kwargs):
            made = real_pubsub(**kwargs)

            async def get_message(*args, **kwargs):
                in_read.set()
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    return None  # what the client does when the cancel meets its timeout
                return None

            made.get_message = get_message
            return made

        monkeypatch.setattr(client, "pubsub", pubsub)
        feed = asyncio.ensure_future(RedisChanges(client).run(lambda r: None, lambda: {"2" * 32}))
        await asyncio.wait_for(in_read.wait(), 5)
        feed.cancel()
        done, _ = await asyncio.wait({feed}, timeout=5)
        await store.close()
        return bool(done) and feed.cancelled()

    assert asyncio.run(scenario()), "the feed went on after it was cancelled"


def test_the_stores_urls_come_from_the_nodes_environment_when_set(tmp_path, monkeypatch):
    written = JobsConfig(store_url=str(tmp_path / "a"), records_url=None)
    monkeypatch.delenv("ANIMEGAN_JOBS_STORE_URL", raising=False)
    monkeypatch.delenv("ANIMEGAN_JOBS_RECORDS_URL", raising=False)
    assert with_environment(written) == written
    monkeypatch.setenv("ANIMEGAN_JOBS_RECORDS_URL", "  ")  # empty: as written
    assert with_environment(written).records_url is None
    monkeypatch.setenv("ANIMEGAN_JOBS_STORE_URL", str(tmp_path / "b"))
    monkeypatch.setenv("ANIMEGAN_JOBS_RECORDS_URL", "redis://records.internal:6380/2")
    told = with_environment(written)
    assert (told.store_url, told.records_url) == (
        str(tmp_path / "b"),
        "redis://records.internal:6380/2",
    )
    # Which variables are read is the config's own: none, when it says so.
    assert (
        with_environment(written.model_copy(update={"records_url_env": None})).records_url is None
    )


def test_the_service_uses_the_environments_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEGAN_JOBS_STORE_URL", str(tmp_path / "from-env"))
    monkeypatch.delenv("ANIMEGAN_JOBS_RECORDS_URL", raising=False)

    async def scenario():
        jobs = JobService(JobsConfig(store_url=str(tmp_path / "written")), FakeStylize())
        try:
            record, _ = await jobs.submit(submission())
            return await jobs.wait(record.id, ALICE, 10)
        finally:
            await jobs.close()

    done = asyncio.run(scenario())
    assert (tmp_path / "from-env" / done.id / done.result_name).is_file()
    assert not (tmp_path / "written").exists()


def test_a_password_in_a_store_url_is_never_shown():
    assert shown_url("redis://:s3cret@records:6379/0") == "redis://:***@records:6379/0"
    assert shown_url("rediss://app:s3cret@records/1") == "rediss://app:***@records/1"
    assert shown_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    store = RedisRecords("redis://:s3cret@127.0.0.1:1/0")  # nothing listens on port 1

    async def refused() -> str:
        try:
            with pytest.raises(StoreError) as error:
                await store.check()
            return error.value.message
        finally:
            await store.close()

    message = asyncio.run(refused())
    assert "s3cret" not in message and "redis://:***@127.0.0.1:1/0" in message
