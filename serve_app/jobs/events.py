"""Job changes pushed to whoever follows a job, the moment they are written.

A write on this replica is delivered to this replica's followers at once; writes on
other replicas or nodes arrive through the record store's change feed (the local store's
feed reads the changes once per interval for all followers of the replica together; a
shared store pushes them). No follower ever reads the store itself, so a thousand
followers of one job cost what one does.

A follower that falls behind keeps only the latest record of each state: every state a
job passes through reaches it, in order; progress within a state may be skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from serve_app.concurrency import cancel_and_wait, run_detached, within
from serve_app.jobs.records import JobFields, JobRecord

logger = logging.getLogger(__name__)

Deliver = Callable[[JobRecord], None]


class ChangeFeed(Protocol):
    async def run(self, deliver: Deliver, wanted: Callable[[], set[str]]) -> None:
        """Call ``deliver`` with each record written elsewhere whose id is ``wanted()``;
        runs until cancelled."""


class PolledChanges:
    """The local store's change feed: the records written since the last look, read once
    per ``interval_s`` while anything on this replica wants them."""

    def __init__(
        self,
        read: Callable[[int, int], Awaitable[tuple[list[JobRecord], int]]],
        newest: Callable[[], Awaitable[int]],
        interval_s: float,
    ) -> None:
        self._read, self._newest, self._interval_s = read, newest, interval_s

    async def run(self, deliver: Deliver, wanted: Callable[[], set[str]]) -> None:
        after: int | None = None  # the newest write seen (None: to be read)
        while True:
            try:
                if after is None or not wanted():
                    after = await self._newest()
                else:
                    records, after = await self._read(after, 1000)
                    ids = wanted()
                    for record in records:
                        if record.id in ids:
                            deliver(record)
            except Exception as error:  # the next look tries again: the feed never ends
                logger.warning("job change feed: %s", error)
            await asyncio.sleep(self._interval_s)


# What followers see of a job: a write that changes none of it (a lease renewal) is no event
# (its time of writing, ``updated_at``, aside).
_PUBLIC = frozenset(JobFields.model_fields) - {"updated_at"}


def _public_form(record: JobRecord) -> str:
    return record.model_dump_json(include=_PUBLIC)


class _Follower:
    def __init__(self) -> None:
        self.pending: list[JobRecord] = []
        self.arrived = asyncio.Event()
        self.version = -1
        self.seen = ""

    def offer(self, record: JobRecord, public: str) -> None:
        if record.version <= self.version:
            return  # seen already (written here, then read back through the feed)
        self.version = record.version
        if public == self.seen:
            return
        self.seen = public
        if self.pending and self.pending[-1].state == record.state:
            self.pending[-1] = record  # the same state again: only its latest matters
        else:
            self.pending.append(record)
        self.arrived.set()


class JobEvents:
    """Followers of jobs on this replica, and the feed that brings other replicas' writes."""

    def __init__(self, feed: ChangeFeed | None) -> None:
        self._feed = feed
        self._followers: dict[str, set[_Follower]] = defaultdict(set)
        self._watchers: list[Callable[[JobRecord], None]] = []
        self._watched: Callable[[], set[str]] = set
        self._task: asyncio.Task | None = None

    def watch(self, on_change: Callable[[JobRecord], None], ids: Callable[[], set[str]]) -> None:
        """Also tell ``on_change`` of every change to the jobs ``ids()`` names (the job
        service hears this way that a job it runs was cancelled elsewhere)."""
        self._watchers.append(on_change)
        self._watched = ids

    def start(self) -> None:
        if self._feed is not None and self._task is None:
            # Every follower's, so none's request context.
            self._task = run_detached(self._feed.run(self.publish, self._wanted))

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)  # whatever it raised: the service still closes
            self._task = None

    def _wanted(self) -> set[str]:
        return set(self._followers) | self._watched()

    def publish(self, record: JobRecord) -> None:
        """A record as just written (here or, through the feed, elsewhere)."""
        followers = self._followers.get(record.id)
        if followers:
            public = _public_form(record)
            for follower in followers:
                follower.offer(record, public)
        for on_change in self._watchers:
            on_change(record)

    async def follow(
        self, job_id: str, read: Callable[[], Awaitable[JobRecord]], idle_s: float
    ) -> AsyncIterator[JobRecord | None]:
        """The job as ``read`` finds it, then each later change, until a terminal state;
        None after ``idle_s`` without a change (a stream sends a keep-alive then).

        The follower is registered before the job is read, so no change falls between."""
        follower = _Follower()
        self._followers[job_id].add(follower)
        try:
            first = await read()
            follower.offer(first, _public_form(first))
            while True:
                if not follower.pending:
                    follower.arrived.clear()
                    try:
                        await within(follower.arrived.wait(), idle_s)
                    except asyncio.TimeoutError:
                        yield None
                        continue
                record = follower.pending.pop(0)
                yield record
                if record.terminal:
                    return
        finally:
            followers = self._followers.get(job_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[job_id]

    @property
    def follower_count(self) -> int:
        return sum(len(followers) for followers in self._followers.values())
