"""What a job record says of its own writes: when it was last changed (``updated_at``, what
an event reports), and the calls a replica made to its record store. Both record stores:
SQLite in a folder, and a real Redis server on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.config import JobsConfig
from serve_app.jobs.events import JobEvents
from serve_app.jobs.records import JobRecord, new_job_id
from serve_app.jobs.stores import open_record_store
from tests.support.redis_server import started_server

RUNNER = "runner-1"
ROOMY = 1 << 30


@pytest.fixture(scope="module")
def redis_server():
    yield from started_server()


@pytest.fixture(params=["sqlite", "redis"])
def config(request, tmp_path) -> JobsConfig:
    records_url = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        records_url = server.url
    return JobsConfig(store_url=str(tmp_path / "jobs"), records_url=records_url)


def queued_job() -> JobRecord:
    now = time.time()
    return JobRecord(
        id=new_job_id(),
        state="queued",
        options={},
        created_at=now,
        expires_at=now + 3600,
        runner=RUNNER,
        lease_until=now + 30,
        reserved_bytes=10,
    )


def test_every_write_stamps_its_time_and_a_lease_renewal_does_not(config, tmp_path):
    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            before = time.time()
            created, made = await store.create(queued_job(), False, ROOMY)
            after_create = time.time()
            await store.renew([created.id], RUNNER, time.time() + 60)
            renewed = await store.get(created.id)
            running = await store.update(created.id, RUNNER, {"state": "running"})
            read_back = await store.get(created.id)
            return before, after_create, made, created, renewed, running, read_back
        finally:
            await store.close()

    before, after_create, made, created, renewed, running, read_back = asyncio.run(scenario())
    assert made and before <= created.updated_at <= after_create
    assert renewed.updated_at == created.updated_at  # the lease alone changed
    assert running.updated_at > created.updated_at
    assert read_back.updated_at == running.updated_at  # stored, not only returned


def test_the_record_store_counts_the_calls_made_to_it(config, tmp_path):
    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            created, _ = await store.create(queued_job(), False, ROOMY)
            for _ in range(3):
                await store.get(created.id)
            await store.usage()
            return dict(store.calls)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == {"create": 1, "get": 3, "usage": 1}


def test_a_write_that_changes_nothing_public_is_no_event():
    """``updated_at`` moves with every write, a lease's too: followers compare what the
    job shows without it."""

    async def scenario():
        events = JobEvents(None)
        record = queued_job().model_copy(update={"version": 1, "updated_at": 1.0})

        async def read() -> JobRecord:
            return record

        follow = events.follow(record.id, read, idle_s=5)
        first = await anext(follow)
        events.publish(record.model_copy(update={"version": 2, "updated_at": 2.0}))
        events.publish(
            record.model_copy(update={"version": 3, "updated_at": 3.0, "state": "running"})
        )
        second = await anext(follow)
        await follow.aclose()
        return first, second

    first, second = asyncio.run(scenario())
    assert first.updated_at == 1.0
    assert (second.state, second.updated_at) == ("running", 3.0)
