"""Job records in Redis (or Valkey): one store shared by every node of a cluster.

Each record is a JSON string; sorted sets index it by owner (listing), lease (takeovers)
and expiry (sweeps), plain keys by the owner's content and idempotency keys and by a
finished output's content key. Every write is an optimistic transaction (WATCH the
record, check the condition, MULTI/EXEC the record, its indexes and the space counter
together), so each operation of the ``RecordStore`` contract is atomic across nodes;
after each write the record is published on its job's channel, and the change feed
subscribes to the channels of the jobs someone on this replica follows or runs.

Run Redis with persistence (``appendonly yes``): finished jobs then survive its restart.
While it cannot be reached, calls raise StoreError (503, naming the server); runners keep
their work and write it once it is back, or another replica takes it over; followers get
each job's record again once their subscription is back.

Longer than most modules, on purpose: each operation of the record-store protocol is one
Redis transaction or script over the same keys, and they are only right read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from serve_app.concurrency import raise_if_cancelling
from serve_app.errors import StoreError, StoreFull
from serve_app.jobs.events import Deliver
from serve_app.jobs.record_store import EXPIRED_MEMORY_S, too_many_jobs
from serve_app.jobs.records import ACTIVE_STATES, JobRecord
from serve_app.jobs.stores import shown_url

logger = logging.getLogger(__name__)

T = TypeVar("T")
PREFIX = "animegan:jobs"
# Optimistic transactions that lost to a concurrent write are tried again this often.
TRANSACTION_TRIES = 50
FEED_RESYNC_S = 0.05
MAX_CONNECTIONS = 32  # per replica


# Extends a runner's leases in one round trip: the record is only read (its JSON is never
# re-encoded in Lua), the lease set written. Returns the ids the runner no longer holds.
_RENEW = """
local prefix, runner, lease = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local data = redis.call('GET', prefix .. ':job:' .. id)
  local held = false
  if data then
    local record = cjson.decode(data)
    held = record.runner == runner and (record.state == 'queued' or record.state == 'running')
  end
  if held then
    redis.call('ZADD', prefix .. ':leases', 'XX', lease, id)
  else
    table.insert(lost, id)
  end
end
return lost
"""


# A group of places expires with its last place: the set's time to live is measured
# from the caller's clock to its latest deadline, so that a group whose holders all died
# leaves nothing behind (relative, so a Redis server whose clock differs cannot expire it
# early). A second of margin over the deadline.
_EXTEND_GROUP = """
local function extend_group(places, now)
  local latest = redis.call('ZRANGE', places, -1, -1, 'WITHSCORES')[2]
  if latest then
    local ttl = math.ceil((tonumber(latest) - tonumber(now)) * 1000) + 1000
    redis.call('PEXPIRE', places, math.max(ttl, 1000))
  end
end
"""
# Holds one of ``bound`` places for a holder, atomically: counts the members of the
# sorted sets KEYS[1..n-1] (an owner's queued and running jobs) and the places of KEYS[n]
# still held (a place is a member scored by its time; one not renewed by then, its
# holder's process dead, lapses). Returns 1 when the place is held, 0 at the bound.
_HOLD_PLACE = (
    _EXTEND_GROUP
    + """
local places, now, bound = KEYS[#KEYS], ARGV[1], tonumber(ARGV[2])
local holder, expires = ARGV[3], ARGV[4]
redis.call('ZREMRANGEBYSCORE', places, '-inf', '(' .. now)
local held = redis.call('ZCARD', places)
if redis.call('ZSCORE', places, holder) then
  held = held - 1
end
for i = 1, #KEYS - 1 do
  held = held + redis.call('ZCARD', KEYS[i])
end
if held >= bound then
  return 0
end
redis.call('ZADD', places, expires, holder)
extend_group(places, now)
return 1
"""
)
# Renews a holder's place if it still holds it (ARGV: now, the new deadline, the holder).
_RENEW_PLACE = (
    _EXTEND_GROUP
    + """
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3])
extend_group(KEYS[1], ARGV[1])
"""
)
# How long a held place outlives a maker that never gave it back (its process died).
MAKING_DEADLINE_S = 60.0


def _key(*parts: str) -> str:
    return ":".join((PREFIX, *parts))


def _job(job_id: str) -> str:
    return _key("job", job_id)


def _channel(job_id: str) -> str:
    return _key("events", job_id)


def _job_of_channel(channel: bytes | str) -> str:
    name = channel.decode() if isinstance(channel, bytes) else channel
    return name.rsplit(":", 1)[-1]


class RedisRecords:
    def __init__(self, url: str) -> None:
        self.url = url
        # A bounded pool that waits for a free connection: a burst of jobs queues here
        # instead of opening a connection each. A call on a connection the server closed
        # (it restarted) reconnects and is sent once more, so a restart fails no call
        # made after it; timeouts are not retried (the command may have run).
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=30,
            socket_connect_timeout=5,
            socket_timeout=10,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = redis.Redis(connection_pool=pool)

    # --- plumbing ------------------------------------------------------------------------

    async def check(self) -> None:
        """Raise StoreError, naming the server, when it cannot be reached."""
        await self._call(self._redis.ping)

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await function(*args)
        except RedisError as error:
            raise StoreError(f"the job record server ({self._where()}) failed: {error}") from error

    def _where(self) -> str:
        return shown_url(self.url)

    async def _transaction(self, watched: list[str], body: Callable[[Any], Awaitable[T]]) -> T:
        """``body(pipe)`` under WATCH of ``watched``: it reads, decides, then calls
        ``pipe.multi()`` and queues its writes; retried when a watched key changed."""
        for _ in range(TRANSACTION_TRIES):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*watched)
                    outcome = await body(pipe)
                    if pipe.explicit_transaction:
                        await pipe.execute()
                    return outcome
            except WatchError:
                continue
            except RedisError as error:
                raise StoreError(
                    f"the job record server ({self._where()}) failed: {error}"
                ) from error
        raise StoreError("the job record server is too busy; retry shortly")

    @staticmethod
    async def _read(pipe: Any, job_id: str) -> JobRecord | None:
        data = await pipe.get(_job(job_id))
        if data is None:
            return None
        record = JobRecord.from_json(data)
        # The lease lives in its sorted set (renewals write nothing else).
        record.lease_until = await pipe.zscore(_key("leases"), job_id)
        return record

    @staticmethod
    def _queue_write(pipe: Any, record: JobRecord, before: JobRecord | None) -> None:
        """The record and every index that follows from it, queued in a MULTI."""
        record.version = (before.version if before is not None else 0) + 1
        record.updated_at = time.time()
        data = record.to_json()
        pipe.set(_job(record.id), data)
        pipe.zadd(_key("owner", record.owner), {record.id: record.created_at})
        if before is not None and before.state != record.state:
            pipe.zrem(_key("owner-state", record.owner, before.state), record.id)
        pipe.zadd(_key("owner-state", record.owner, record.state), {record.id: record.created_at})
        if record.state in ACTIVE_STATES:
            pipe.zadd(_key("leases"), {record.id: record.lease_until or 0.0})
        else:
            pipe.zrem(_key("leases"), record.id)
        pipe.zadd(_key("expiry"), {record.id: record.expires_at or 0.0})
        if record.state == "done" and record.content_key and record.shareable:
            pipe.set(_key("done", record.content_key), record.id)
        pipe.publish(_channel(record.id), data)

    # --- the operations ------------------------------------------------------------------

    async def create(
        self,
        record: JobRecord,
        find_same_content: bool,
        max_bytes: int,
        max_active: int | None = None,
    ) -> tuple[JobRecord, bool]:
        idem = _key("idem", record.owner, record.idempotency_key or "")
        content = _key("content", record.owner, record.content_key)
        usage = _key("usage")
        making = _key("making", record.owner)
        # The owner's place and the space first, each atomic (a script, INCRBY), so that
        # concurrent submissions never queue behind one watched key; given back unless
        # the job is made.
        if max_active is not None and not await self._hold_active_place(record, max_active):
            existing = await self._call(self._existing, record, idem, content, find_same_content)
            if existing is None:
                raise too_many_jobs(max_active)
            return existing, False
        used = await self._call(self._redis.incrby, usage, record.reserved_bytes)
        made = False
        try:
            if used > max_bytes:
                # A resubmission finds its job whatever the space (as SQLite's does).
                existing = await self._call(
                    self._existing, record, idem, content, find_same_content
                )
                if existing is not None:
                    return existing, False
                raise StoreFull(
                    f"the job store is full ({used - record.reserved_bytes} of {max_bytes} "
                    "bytes held); retry later, or fetch and delete finished jobs"
                )

            async def body(pipe: Any) -> tuple[JobRecord, bool]:
                existing = await self._existing(record, idem, content, find_same_content, pipe)
                if existing is not None:
                    return existing, False
                pipe.multi()
                stored = record.model_copy()
                self._queue_write(pipe, stored, None)
                pipe.set(content, record.id)
                if record.idempotency_key:
                    pipe.set(idem, record.id)
                pipe.zrem(making, record.id)
                return stored, True

            stored, made = await self._transaction([idem, content], body)
            return stored, made
        finally:
            if not made:
                await self._call(self._redis.decrby, usage, record.reserved_bytes)
                if max_active is not None:
                    await self._call(self._redis.zrem, making, record.id)

    async def find(self, record: JobRecord, find_same_content: bool) -> JobRecord | None:
        idem = _key("idem", record.owner, record.idempotency_key or "")
        content = _key("content", record.owner, record.content_key)
        return await self._call(self._existing, record, idem, content, find_same_content)

    async def _hold_active_place(self, record: JobRecord, bound: int) -> bool:
        active = [_key("owner-state", record.owner, state) for state in sorted(ACTIVE_STATES)]
        until = time.time() + MAKING_DEADLINE_S
        return await self._hold(active, _key("making", record.owner), record.id, bound, until)

    async def _hold(
        self, counted: list[str], places: str, holder: str, bound: int, until: float
    ) -> bool:
        keys = [*counted, places]
        held = await self._call(
            self._redis.eval, _HOLD_PLACE, len(keys), *keys, time.time(), bound, holder, until
        )
        return bool(held)

    async def _existing(
        self,
        record: JobRecord,
        idem: str,
        content: str,
        find_same_content: bool,
        pipe: Any = None,
    ) -> JobRecord | None:
        """The owner's job a submission finds again: by its idempotency key, or (with
        ``find_same_content``) a live or finished job for its content."""
        reader = self._redis if pipe is None else pipe
        if record.idempotency_key:
            existing = await self._pointed(reader, idem)
            if existing is not None:
                return existing
        if find_same_content:
            existing = await self._pointed(reader, content)
            if existing is not None and existing.state in ("queued", "running", "done"):
                return existing
        return None

    async def _pointed(self, pipe: Any, key: str) -> JobRecord | None:
        job_id = await pipe.get(key)
        return None if job_id is None else await self._read(pipe, job_id.decode())

    async def get(self, job_id: str) -> JobRecord | None:
        async def read() -> JobRecord | None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(_job(job_id))
                pipe.zscore(_key("leases"), job_id)
                data, lease = await pipe.execute()
            if data is None:
                return None
            record = JobRecord.from_json(data)
            record.lease_until = lease
            return record

        return await self._call(read)

    async def expired_at(self, job_id: str, owner: str) -> float | None:
        keys = (_key("expired", job_id), _key("expired-owner", job_id))
        at, expired_owner = await self._call(self._redis.mget, *keys)
        # The owner apart from the time, which the release before reads as it was: an id
        # without one (expired by that release) answers anyone, as it did.
        if at is None or (expired_owner is not None and expired_owner.decode() != owner):
            return None
        return float(at)

    async def list(
        self, owner: str, state: str | None, before: tuple[float, str] | None, limit: int
    ) -> list[JobRecord]:
        """The index and the records are two reads: a job that went (expired, deleted) or
        changed state between them is passed over and the page filled from further on, so
        that a page is short only at the end of the list, as SQLite's one read gives it."""
        index = _key("owner-state", owner, state) if state else _key("owner", owner)
        found: list[JobRecord] = []
        while len(found) < limit:
            wanted = limit - len(found)
            positions = await self._positions(index, before, wanted)
            records = await self._records([job_id for job_id, _ in positions])
            found += [record for record in records if state in (None, record.state)]
            if len(positions) < wanted:
                return found
            last_id, created_at = positions[-1]
            before = (created_at, last_id)
        return found

    async def _positions(
        self, index: str, before: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` (id, created_at) of ``index`` past ``before``, newest first
        (created_at, then id, both descending): the jobs made in the cursor's very second
        first, then the older ones."""
        positions: list[tuple[str, float]] = []
        top = "+inf"
        if before is not None:
            created_at, last_id = before
            ties = await self._call(self._redis.zrangebyscore, index, created_at, created_at)
            same = sorted((i.decode() for i in ties if i.decode() < last_id), reverse=True)
            positions = [(job_id, created_at) for job_id in same[:count]]
            top = f"({created_at}"
        if len(positions) < count:
            older = await self._call(
                self._redis.zrevrangebyscore, index, top, "-inf", 0, count - len(positions), True
            )
            positions += [(job_id.decode(), score) for job_id, score in older]
        return positions

    async def _records(self, ids: list[str]) -> list[JobRecord]:
        if not ids:
            return []
        values = await self._call(self._redis.mget, [_job(i) for i in ids])
        return [JobRecord.from_json(v) for v in values if v is not None]

    async def claim(self, job_id: str, runner: str, lease_until: float) -> JobRecord | None:
        async def body(pipe: Any) -> JobRecord | None:
            record = await self._read(pipe, job_id)
            if record is None or record.state not in ACTIVE_STATES:
                return None
            free = record.runner in (None, runner) or (record.lease_until or 0) < time.time()
            if not free:
                return None
            before = record.model_copy()
            record.runner, record.lease_until = runner, lease_until
            record.attempts += 1
            pipe.multi()
            self._queue_write(pipe, record, before)
            return record

        return await self._transaction([_job(job_id)], body)

    async def renew(self, job_ids: list[str], runner: str, lease_until: float) -> list[str]:
        if not job_ids:
            return []
        lost = await self._call(
            self._redis.eval, _RENEW, 0, PREFIX, runner, repr(lease_until), *job_ids
        )
        return [job_id.decode() for job_id in lost]

    async def update(self, job_id: str, runner: str, changes: dict[str, Any]) -> JobRecord | None:
        return await self._runner_write(job_id, runner, changes, ending=False)

    async def finish(self, job_id: str, runner: str, changes: dict[str, Any]) -> JobRecord | None:
        return await self._runner_write(job_id, runner, changes, ending=True)

    async def _runner_write(
        self, job_id: str, runner: str, changes: dict[str, Any], ending: bool
    ) -> JobRecord | None:
        async def body(pipe: Any) -> JobRecord | None:
            before = await self._read(pipe, job_id)
            if before is None or before.terminal or before.runner != runner:
                return None
            record = before.model_copy(update=changes)
            if ending:
                record.runner, record.lease_until = None, None
            pipe.multi()
            self._queue_write(pipe, record, before)
            if record.reserved_bytes != before.reserved_bytes:
                pipe.incrby(_key("usage"), record.reserved_bytes - before.reserved_bytes)
            return record

        return await self._transaction([_job(job_id)], body)

    async def cancel(self, job_id: str, changes: dict[str, Any]) -> JobRecord | None:
        async def body(pipe: Any) -> JobRecord | None:
            before = await self._read(pipe, job_id)
            if before is None or before.state == "cancelled":
                return None
            record = before.model_copy(update=changes)
            record.runner, record.lease_until = None, None
            pipe.multi()
            self._queue_write(pipe, record, before)
            pipe.incrby(_key("usage"), record.reserved_bytes - before.reserved_bytes)
            return record

        return await self._transaction([_job(job_id)], body)

    async def set_fields(self, job_id: str, changes: dict[str, Any]) -> JobRecord | None:
        async def body(pipe: Any) -> JobRecord | None:
            before = await self._read(pipe, job_id)
            if before is None:
                return None
            record = before.model_copy(update=changes)
            pipe.multi()
            self._queue_write(pipe, record, before)
            return record

        return await self._transaction([_job(job_id)], body)

    async def stale(self, now: float, limit: int) -> list[str]:
        ids = await self._call(
            self._redis.zrangebyscore, _key("leases"), "-inf", f"({now}", 0, limit
        )
        return [i.decode() for i in ids]

    async def due(self, now: float, limit: int) -> list[str]:
        ids = await self._call(
            self._redis.zrangebyscore, _key("expiry"), "-inf", f"({now}", 0, limit
        )
        return [i.decode() for i in ids]

    async def remove(self, job_id: str, now: float) -> bool:
        async def body(pipe: Any) -> bool:
            record = await self._read(pipe, job_id)
            if record is None:
                pipe.multi()
                pipe.zrem(_key("expiry"), job_id)
                pipe.zrem(_key("leases"), job_id)
                return False
            if (record.expires_at or 0) >= now:
                return False
            content = _key("content", record.owner, record.content_key)
            idem = _key("idem", record.owner, record.idempotency_key or "")
            done = _key("done", record.content_key)
            pointers = await pipe.mget(content, idem, done)
            pipe.multi()
            pipe.delete(_job(job_id))
            pipe.zrem(_key("owner", record.owner), job_id)
            pipe.zrem(_key("owner-state", record.owner, record.state), job_id)
            pipe.zrem(_key("leases"), job_id)
            pipe.zrem(_key("expiry"), job_id)
            for key, pointer in zip((content, idem, done), pointers, strict=True):
                if pointer is not None and pointer.decode() == job_id:
                    pipe.delete(key)
            pipe.incrby(_key("usage"), -record.reserved_bytes)
            pipe.set(_key("expired", job_id), str(now), ex=int(EXPIRED_MEMORY_S))
            pipe.set(_key("expired-owner", job_id), record.owner, ex=int(EXPIRED_MEMORY_S))
            return True

        return await self._transaction([_job(job_id)], body)

    async def find_done(self, content_key: str) -> JobRecord | None:
        job_id = await self._call(self._redis.get, _key("done", content_key))
        if job_id is None:
            return None
        record = await self.get(job_id.decode())
        return record if record is not None and record.state == "done" else None

    async def usage(self) -> int:
        return int(await self._call(self._redis.get, _key("usage")) or 0)

    # A group's places are one sorted set, which expires with its latest place.
    async def hold_place(self, group: str, holder: str, bound: int, until: float) -> bool:
        return await self._hold([], _key("places", group), holder, bound, until)

    async def renew_place(self, group: str, holder: str, until: float) -> None:
        places = _key("places", group)
        await self._call(self._redis.eval, _RENEW_PLACE, 1, places, time.time(), until, holder)

    async def release_place(self, group: str, holder: str) -> None:
        await self._call(self._redis.zrem, _key("places", group), holder)

    async def changes(self, after: int, limit: int) -> tuple[list[JobRecord], int]:
        raise NotImplementedError("a Redis store pushes its changes (see feed())")

    def feed(self) -> RedisChanges:
        return RedisChanges(self._redis)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()


class RedisChanges:
    """Records published on the channels of the jobs this replica follows or runs.

    Once the server confirms a job's subscription (the first one, and again after every
    reconnection), the job's record is read and delivered too: a change written before
    the subscription took effect, or while the server was away, still reaches the
    followers (they skip what they have seen, by version)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    async def run(self, deliver: Deliver, wanted: Callable[[], set[str]]) -> None:
        pubsub = self._client.pubsub()
        subscribed: set[str] = set()
        away = False
        try:
            while True:
                raise_if_cancelling()
                try:
                    subscribed = await self._resync(pubsub, subscribed, wanted())
                    if not subscribed:
                        await asyncio.sleep(FEED_RESYNC_S)
                        continue
                    message = await pubsub.get_message(timeout=FEED_RESYNC_S)
                    if message is not None:
                        await self._handle(message, deliver)
                except RedisError as error:  # the server is away: look again shortly
                    if not away:
                        logger.warning("job change feed: %s", error)
                    away, subscribed = True, set()
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = self._client.pubsub()
                    continue
                if away and subscribed:
                    away = False
                    logger.info("job change feed: the record server answers again")
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _handle(self, message: dict, deliver: Deliver) -> None:
        kind = message.get("type")
        if kind == "message":
            with contextlib.suppress(ValueError):
                deliver(JobRecord.from_json(message["data"]))
        elif kind == "subscribe":  # confirmed: every later write will be published to us
            data = await self._client.get(_job(_job_of_channel(message["channel"])))
            if data is not None:
                with contextlib.suppress(ValueError):
                    deliver(JobRecord.from_json(data))

    @staticmethod
    async def _resync(pubsub: Any, subscribed: set[str], wanted: set[str]) -> set[str]:
        added, removed = wanted - subscribed, subscribed - wanted
        if added:
            await pubsub.subscribe(*(_channel(i) for i in added))
        if removed:
            await pubsub.unsubscribe(*(_channel(i) for i in removed))
        return set(wanted)
