"""What a job record says of its own writes: when it was last changed (``updated_at``, what
an event reports), and the calls a replica made to its record store. Both record stores:
SQLite in a folder, and a real Redis server on loopback."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from types import SimpleNamespace

import pytest

from serve_app.config import JobsConfig
from serve_app.errors import StoreError, TooManyJobs
from serve_app.jobs import record_store, redis_store
from serve_app.jobs.events import JobEvents, PolledChanges
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


def _owned_job(owner: str, content_key: str = "") -> JobRecord:
    record = queued_job()
    record.owner, record.content_key = owner, content_key or record.id
    return record


def test_an_owner_s_bound_of_active_jobs_holds_across_every_replica_of_the_store(config, tmp_path):
    """Two replicas (two openings of one store) and a burst at once: never more than the
    bound active; a resubmission still finds its job; a finished job frees its place."""

    async def scenario():
        replicas = [open_record_store(config, tmp_path / "jobs")[0] for _ in range(2)]
        try:
            create = [store.create for store in replicas]
            burst = [create[n % 2](_owned_job("alice"), True, ROOMY, 3) for n in range(10)]
            outcomes = await asyncio.gather(*burst, return_exceptions=True)
            made = [o[0] for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, TooManyJobs)]
            again = _owned_job("alice", content_key=made[0].content_key)
            found, found_made = await create[1](again, True, ROOMY, 3)
            _, other_made = await create[1](_owned_job("bob"), True, ROOMY, 3)
            await replicas[0].finish(made[0].id, RUNNER, {"state": "done"})
            _, after_made = await create[1](_owned_job("alice"), True, ROOMY, 3)
            same = found.id == made[0].id
            return len(made), len(refused), same, found_made, other_made, after_made
        finally:
            for store in replicas:
                await store.close()

    made, refused, same, found_made, other_made, after_made = asyncio.run(scenario())
    assert (made, refused) == (3, 7)
    assert same and not found_made  # the owner's own job, found at the bound
    assert other_made and after_made  # another owner's bound; room again after a finish


def test_a_place_held_by_a_maker_that_died_lapses(redis_server, tmp_path, monkeypatch):
    """Redis holds a place for each job being made (SQLite makes a job in one transaction):
    one never given back, its maker gone, lapses after its deadline."""
    monkeypatch.setattr(redis_store, "MAKING_DEADLINE_S", 0.2)
    redis_server.flush()
    config = JobsConfig(store_url=str(tmp_path / "jobs"), records_url=redis_server.url)

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            held = await store._hold_active_place(_owned_job("alice"), 1)  # then "dies"
            with pytest.raises(TooManyJobs):
                await store.create(_owned_job("alice"), True, ROOMY, max_active=1)
            await asyncio.sleep(0.3)
            _, made = await store.create(_owned_job("alice"), True, ROOMY, max_active=1)
            return held, made
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (True, True)


@pytest.fixture
def redis_only(redis_server, tmp_path):
    """(the config of a store on the Redis server, emptied; a client of that server that
    looks at its keys directly)."""
    import redis as redis_client

    redis_server.flush()
    config = JobsConfig(store_url=str(tmp_path / "jobs"), records_url=redis_server.url)
    probe = redis_client.Redis.from_url(redis_server.url)
    yield config, probe
    probe.close()


def test_a_redis_group_of_places_expires_with_its_last_place(redis_only, tmp_path):
    """A group whose holders all died (no release) leaves no key behind once their places
    lapse; a renewal carries the group's life forward."""
    config, probe = redis_only

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            await store.hold_place("live:gone", "s1", 2, time.time() + 0.2)  # then "dies"
            await store.hold_place("live:kept", "s1", 2, time.time() + 0.2)
            await store.renew_place("live:kept", "s1", time.time() + 60)
            ttls = [probe.pttl(redis_store._key("places", f"live:{g}")) for g in ("gone", "kept")]
            deadline = time.time() + 10
            while probe.exists(redis_store._key("places", "live:gone")) and time.time() < deadline:
                await asyncio.sleep(0.1)
            gone = not probe.exists(redis_store._key("places", "live:gone"))
            kept = probe.zcard(redis_store._key("places", "live:kept"))
            return ttls, gone, kept
        finally:
            await store.close()

    (gone_ttl, kept_ttl), gone, kept = asyncio.run(scenario())
    assert 0 < gone_ttl <= 1200 and kept_ttl > 59_000
    assert gone and kept == 1


def test_places_are_bounded_per_group_and_come_back_released_or_lapsed(config, tmp_path):
    async def scenario():
        replicas = [open_record_store(config, tmp_path / "jobs")[0] for _ in range(2)]
        a, b = replicas
        later, past = time.time() + 60, time.time() - 1
        try:
            outcomes = [
                await a.hold_place("live:k", "s1", 2, later),
                await b.hold_place("live:k", "s2", 2, later),
                await a.hold_place("live:k", "s3", 2, later),  # the bound
                await b.hold_place("live:k", "s1", 2, later),  # s1 holds already
                await b.hold_place("live:other", "s3", 2, later),  # another group
            ]
            await a.release_place("live:k", "s1")
            outcomes.append(await b.hold_place("live:k", "s3", 2, later))  # s1's place
            await b.renew_place("live:k", "s2", past)  # s2's holder stopped renewing
            outcomes.append(await a.hold_place("live:k", "s4", 2, later))  # s2's lapsed
            # A renewal that lands after its place was given back does not bring it back.
            await a.release_place("live:k", "s4")
            await a.renew_place("live:k", "s4", later)
            outcomes.append(await b.hold_place("live:k", "s5", 2, later))  # s4's place
            return outcomes
        finally:
            for store in replicas:
                await store.close()

    assert asyncio.run(scenario()) == [True, True, False, True, True, True, True, True]


def test_a_locked_sqlite_database_is_the_store_s_error(tmp_path, monkeypatch):
    """As the shared store's, SQLite's own failures are ``StoreError`` (503, waited out by
    runs, a live stream admitted by its replica's count), never a raw sqlite3 error."""
    monkeypatch.setattr(record_store, "BUSY_TIMEOUT_S", 0.05)
    store = record_store.SqliteRecords(tmp_path / "jobs.db")
    blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process mid-write, past the busy timeout
    try:
        with pytest.raises(StoreError):
            asyncio.run(store.hold_place("live:key", "holder", 1, time.time() + 30))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert asyncio.run(store.hold_place("live:key", "holder", 1, time.time() + 30))


def test_the_local_change_feed_outlives_a_failed_read():
    """The first look at the store failed: the feed goes on (it ended, silently, and the
    replica heard no other replica's writes again)."""

    async def scenario():
        looks, delivered = [], asyncio.Queue()

        async def newest() -> int:
            looks.append("newest")
            if len(looks) == 1:
                raise StoreError("the job record database failed: database is locked")
            return 0

        async def read(after: int, most: int):
            return [SimpleNamespace(id="job-a")], after + 1

        feed = PolledChanges(read, newest, 0.01)
        running = asyncio.ensure_future(feed.run(delivered.put_nowait, lambda: {"job-a"}))
        try:
            return await asyncio.wait_for(delivered.get(), 10), looks
        finally:
            running.cancel()

    record, looks = asyncio.run(scenario())
    assert record.id == "job-a" and looks == ["newest", "newest"]


def test_a_full_store_still_finds_a_resubmitted_job(config, tmp_path):
    """The same idempotency key sent again (as a client does after a lost answer) finds
    its job, though the store has no room for another (Redis answered 507)."""

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            first = _owned_job("alice").model_copy(update={"idempotency_key": "k1"})
            room = first.reserved_bytes  # exactly the first job's
            made, created = await store.create(first, True, room)
            again = _owned_job("alice").model_copy(update={"idempotency_key": "k1"})
            found, created_again = await store.create(again, True, room)
            return made.id, found.id, created, created_again, await store.usage()
        finally:
            await store.close()

    made_id, found_id, created, created_again, usage = asyncio.run(scenario())
    assert created and not created_again and found_id == made_id
    assert usage == _owned_job("alice").reserved_bytes  # nothing held for the second ask


def test_a_redis_page_passes_over_a_job_gone_between_its_two_reads(redis_only, tmp_path):
    """The owner's index still names a job whose record went (the sweep between the two
    reads): the page is filled from further on, not cut short (a short page said it was
    the last: listing stopped there)."""
    config, probe = redis_only

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            made = []
            for n in range(5):
                record = _owned_job("alice").model_copy(update={"created_at": 1000.0 + n})
                made.append((await store.create(record, True, ROOMY))[0].id)
            probe.delete(redis_store._job(made[3]))  # the index still names it
            first = await store.list("alice", None, None, 3)
            cursor = (first[-1].created_at, first[-1].id)
            rest = await store.list("alice", None, cursor, 3)
            return made, [r.id for r in first], [r.id for r in rest]
        finally:
            await store.close()

    made, first, rest = asyncio.run(scenario())
    assert first == [made[4], made[2], made[1]] and rest == [made[0]]


def test_a_finished_output_an_earlier_deploy_made_is_passed_over(config, tmp_path):
    """A newer done job whose output is not shareable (a replica of the deploy before made
    it) leaves the older shareable one to copy, on either store."""

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            jobs = [_owned_job(owner, content_key="same") for owner in ("alice", "bob")]
            jobs[1].created_at = jobs[0].created_at + 1
            for job, shareable in zip(jobs, (True, False), strict=True):
                await store.create(job, True, ROOMY)
                await store.finish(job.id, RUNNER, {"state": "done", "shareable": shareable})
            found = await store.find_done("same")
            return found.id, jobs[0].id
        finally:
            await store.close()

    found, shareable = asyncio.run(scenario())
    assert found == shareable


def test_an_expired_id_answers_expired_to_its_owner_only(config, tmp_path):
    """To another key an expired job is as unknown as any job of another key: the
    answer says nothing of whether the id ever existed."""

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            job = _owned_job("alice")
            await store.create(job, True, ROOMY)
            ended = time.time() - 1
            await store.finish(job.id, RUNNER, {"state": "done", "expires_at": ended})
            removed = await store.remove(job.id, time.time())
            owner_s = await store.expired_at(job.id, "alice")
            others = [await store.expired_at(job.id, owner) for owner in ("bob", "")]
            return removed, owner_s, others
        finally:
            await store.close()

    removed, owner_s, others = asyncio.run(scenario())
    assert removed and owner_s is not None and others == [None, None]


def test_the_release_before_reads_and_writes_expired_ids_as_it_did(config, tmp_path):
    """During a rolling update or after a rollback, the release before shares the store:
    an id it expired (the time alone) answers anyone, as it did, and an id this release
    expired reads, for it, as it always has (the time alone)."""

    async def scenario():
        store, _ = open_record_store(config, tmp_path / "jobs")
        try:
            job = _owned_job("alice")
            await store.create(job, True, ROOMY)
            await store.finish(job.id, RUNNER, {"state": "done", "expires_at": time.time() - 1})
            await store.remove(job.id, time.time())
            inner = store.store  # the store itself, under its call counter
            if isinstance(inner, redis_store.RedisRecords):
                get, put = inner._redis.get, inner._redis.set
                read_before = float(await inner._call(get, redis_store._key("expired", job.id)))
                await inner._call(put, redis_store._key("expired", "old"), "5.0")
            else:
                with sqlite3.connect(inner.path) as db:
                    query = "SELECT at FROM expired WHERE id = ?"  # the release before's
                    read_before = db.execute(query, (job.id,)).fetchone()[0]
                    db.execute("INSERT OR REPLACE INTO expired VALUES (?, ?)", ("old", 5.0))
            return read_before, await store.expired_at("old", "bob")
        finally:
            await store.close()

    read_before, old = asyncio.run(scenario())
    assert read_before > 0 and old == 5.0
