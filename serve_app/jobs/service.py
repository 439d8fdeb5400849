"""Jobs: a picture, animation or video submitted now, followed while it is made, fetched
when done — by its submitter only.

    submit -> record (queued, this replica's lease, space reserved) + upload stored
           -> a run on this replica (``runner.py``) -> ... -> done | failed
    follow -> the record, then each change pushed (``events.py``)
    cancel -> the record cancelled (compare-and-set: wins over any runner), files deleted

Records live in a record store (``record_store.py``: SQLite on one node, Redis on a
cluster); uploads and results in a blob store (``blobs.py``: a folder, or object storage).
Background work on each replica keeps the cost of every request independent of how many
jobs are stored: takeovers of jobs whose runner died (their lease ran out) and deletion
of expired ones take the due records a page at a time.

Plain asyncio over a "stylize" callable and a "make this video" callable: the whole path
runs in unit tests without Ray.

Longer than most modules, on purpose: it is the one facade of every job operation
(submit, read, list, follow, wait, fetch, cancel, expire); this replica's runs are in
``replica_runs.py``, one run in ``runner.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serve_app.concurrency import raise_if_cancelling, run_detached, within
from serve_app.config import JobsConfig
from serve_app.errors import (
    IdempotencyKeyReused,
    InvalidParameters,
    JobExpired,
    JobNotDone,
    Overloaded,
    OwnerRequired,
    ServiceError,
    StoreError,
    UnknownJob,
)
from serve_app.jobs.blobs import UPLOAD, BlobStore
from serve_app.jobs.events import ChangeFeed, JobEvents
from serve_app.jobs.fair_slots import FairSlots
from serve_app.jobs.record_store import RecordStore
from serve_app.jobs.records import (
    ANONYMOUS,
    IDEMPOTENCY_KEY_PATTERN,
    JOB_ID,
    MAX_IDEMPOTENCY_KEY_CHARS,
    JobRecord,
    JobView,
    WebhookDelivery,
    WebhookInfo,
    decode_cursor,
    encode_cursor,
    failed_changes,
    new_job_id,
)
from serve_app.jobs.replica_runs import PAGE, ReplicaRuns
from serve_app.jobs.runner import ProgressOf, RunContext, RunMedia, Stylize
from serve_app.jobs.stores import RecordsHealth, open_record_store, with_environment
from serve_app.jobs.webhooks import Webhooks
from serve_app.media.frames import expected_frames
from serve_app.media.probe import MediaInfo
from serve_app.options import StylizeOptions

if TYPE_CHECKING:
    from serve_app.metrics import JobMetrics

logger = logging.getLogger(__name__)

IDLE_KEEP_ALIVE_S = 15.0


@dataclass(frozen=True)
class JobOutput:
    """A finished job's output, as the handle API returns it."""

    data: bytes
    media_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Submission:
    """What a caller submits: the upload, its options and what it was found to be."""

    data: bytes
    options: StylizeOptions
    content_key: str
    media: MediaInfo | None = None
    owner: str = ANONYMOUS
    idempotency_key: str | None = None
    webhook: WebhookInfo | None = None


class JobService:
    """Submit, follow, list, fetch and cancel jobs; routes and handles are thin over it."""

    def __init__(
        self,
        config: JobsConfig,
        stylize: Stylize,
        progress_of: ProgressOf | None = None,
        run_media: RunMedia | None = None,
        metrics: JobMetrics | None = None,
        records: tuple[RecordStore, ChangeFeed | None] | None = None,
    ) -> None:
        """``records``: a record store and its change feed (default: the config's)."""
        config = with_environment(config)
        self._config = config
        self.blobs = BlobStore(config.store_url)
        self.records, feed = records or open_record_store(config, self.blobs.local_root())
        self._events = JobEvents(feed)
        self._io = ThreadPoolExecutor(config.io_threads, thread_name_prefix="job-store")
        self.runner_id = uuid.uuid4().hex[:12]
        self._metrics = metrics
        self.webhooks = Webhooks(config.webhooks, self._save_delivery)
        self._context = RunContext(
            config=config,
            records=self.records,
            blobs=self.blobs,
            io=self._io,
            runner_id=self.runner_id,
            slots=FairSlots(config.max_running),
            publish=self._events.publish,
            stylize=stylize,
            progress_of=progress_of,
            run_media=run_media,
            metrics=metrics,
            on_state=self._on_state,
        )
        self.runs = ReplicaRuns(self._context, metrics)
        self._events.watch(self._heard, self.runs.job_ids)
        self._creating: dict[tuple[str, str], asyncio.Task] = {}
        self._background: list[asyncio.Task] = []
        self.records_health = RecordsHealth(config)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """The background work: the change feed, takeovers, expiry."""
        if self._background:
            return
        self._events.start()
        self._background = [
            asyncio.ensure_future(self.records_health.check(self.records)),
            asyncio.ensure_future(self._every(self._config.heartbeat_s, self.runs.renew_leases)),
            asyncio.ensure_future(
                self._every(self._config.heartbeat_s, self.runs.take_over_stale, probes=True)
            ),
            asyncio.ensure_future(self._every(self._config.sweep_interval_s, self.sweep)),
        ]

    async def close(self) -> None:
        """Stop background work and this replica's runs; their leases are released so
        another replica takes them over at once."""
        for task in self._background:
            task.cancel()
        await self.webhooks.close()
        await self.runs.close()
        await self._events.stop()
        await self.records.close()
        self._io.shutdown(wait=False)

    async def _every(self, interval_s: float, work: Callable, probes: bool = False) -> None:
        """``work`` every ``interval_s``; ``probes``: it reads the record store each time,
        so its success says the store is reachable (again)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except StoreError as error:  # said once per outage; tried again next time
                self.records_health.failed(error)
            except Exception:  # background work goes on at the next interval
                logger.exception("job background work failed")
            else:
                if probes:
                    self.records_health.answered()
            raise_if_cancelling()  # rather than run on after close()

    async def _call(self, function: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    # --- submit ----------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> tuple[JobRecord, bool]:
        """A new job, or the submitter's own job for the same idempotency key or (with an
        owner) the same content and options; the flag says whether this call made it."""
        _check_idempotency_key(submission.idempotency_key)
        twin = (submission.owner, submission.idempotency_key or submission.content_key)
        if (submission.owner or submission.idempotency_key) and twin in self._creating:
            record, _ = await asyncio.shield(self._creating[twin])  # the same, twice at once
            _check_same_content(record, submission)
            return record, False
        if self.runs.full:  # no room for another, but a resubmission finds its job
            found = await self.records.find(self._new_record(submission), bool(submission.owner))
            if found is None:
                raise Overloaded("too many jobs waiting on this replica; retry shortly")
            _check_same_content(found, submission)
            return found, False
        # Detached and shielded: a client that hangs up mid-way must not leave a record
        # whose upload was never stored or whose run never started.
        task = run_detached(self._create(submission))
        self._creating[twin] = task
        task.add_done_callback(lambda _: self._creating.pop(twin, None))
        return await asyncio.shield(task)

    def _new_record(self, submission: Submission) -> JobRecord:
        """The record of a job for ``submission``, queued on this replica."""
        now, media, options = time.time(), submission.media, submission.options
        return JobRecord(
            id=new_job_id(),
            state="queued",
            kind="still" if media is None else media.kind,
            media=None if media is None else media.to_dict(),
            options=options.to_dict(),
            created_at=round(now, 6),  # to the µs, as listing cursors name it
            expires_at=now + self._active_lifetime_s(),
            upload_bytes=len(submission.data),
            frames_total=1 if media is None else expected_frames(media, options.max_fps),
            owner=submission.owner,
            content_key=submission.content_key,
            idempotency_key=submission.idempotency_key,
            runner=self.runner_id,
            lease_until=self._context.lease_until(),
            attempts=1,
            reserved_bytes=len(submission.data) + _expected_output_bytes(submission),
            webhook=submission.webhook,
        )

    async def _create(self, submission: Submission) -> tuple[JobRecord, bool]:
        config, record = self._config, self._new_record(submission)
        stored, created = await self.records.create(
            record,
            find_same_content=bool(submission.owner),
            max_bytes=config.max_store_bytes,
            # An open service has one owner: no per-key bound.
            max_active=None if submission.owner == ANONYMOUS else config.max_active_per_key,
        )
        if not created:
            _check_same_content(stored, submission)
            return stored, False
        try:
            await self._call(self.blobs.put, stored.id, UPLOAD, submission.data)
        except BaseException as error:
            await self._end_unstarted(stored, error)
            raise
        self._events.publish(stored)
        self._count(stored, "queued")
        self.runs.start(stored)
        return stored, True

    async def _end_unstarted(self, record: JobRecord, error: BaseException) -> None:
        """A job whose upload could not be stored: failed, its space freed."""
        changes = failed_changes(_service_error(error), time.time(), self._config.ttl_s)
        with contextlib.suppress(Exception):
            await self.records.finish(record.id, self.runner_id, changes)
            await self._call(self.blobs.delete, record.id)

    def _active_lifetime_s(self) -> float:
        """How long a record that never ends is kept (its runners all died silently)."""
        config = self._config
        return config.queue_timeout_s + config.max_attempts * config.timeout_s + config.ttl_s

    # --- read ------------------------------------------------------------------------------

    async def get(self, job_id: str, owner: str = ANONYMOUS) -> JobRecord:
        """The caller's job; UnknownJob (404) for anyone else's, as for no job at all."""
        if not JOB_ID.match(job_id):
            raise UnknownJob(f"no job {job_id[:140]!r}: job ids are 32 hex digits")
        record = await self.records.get(job_id)
        if record is not None and record.owner == owner:
            return record
        if record is None and await self.records.expired_at(job_id, owner) is not None:
            raise JobExpired(
                f"job {job_id} ended more than {self._config.ttl_s:g} s ago; its record and "
                "output were deleted"
            )
        raise UnknownJob(f"no job {job_id!r} (finished jobs are kept {self._config.ttl_s:g} s)")

    async def list(
        self, owner: str, state: str | None = None, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs, newest first, a page at a time; none without an owner (on
        an open service every job is the anonymous owner's: a job is reached by its id)."""
        if owner == ANONYMOUS:
            raise OwnerRequired(
                "listing jobs needs an API key; on an open service a job is reached by its id"
            )
        before = decode_cursor(cursor) if cursor else None
        records = await self.records.list(owner, state, before, limit + 1)
        page = records[:limit]
        more = len(records) > limit
        return page, encode_cursor(page[-1]) if more and page else None

    async def events(
        self, job_id: str, owner: str = ANONYMOUS, idle_s: float = IDLE_KEEP_ALIVE_S
    ) -> AsyncIterator[JobRecord | None]:
        """The job, then each change, ending with its final state; ``None`` after
        ``idle_s`` without a change. The first item raises for an unknown job."""
        async for record in self._events.follow(job_id, lambda: self.get(job_id, owner), idle_s):
            yield record

    async def wait(self, job_id: str, owner: str, timeout_s: float) -> JobRecord:
        """The job once it ended, or as it is after ``timeout_s``."""
        latest = await self.get(job_id, owner)
        if latest.terminal or timeout_s <= 0:
            return latest
        follow = self.events(job_id, owner, idle_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return latest
                try:
                    record = await within(anext(follow), left)
                except (asyncio.TimeoutError, StopAsyncIteration):
                    return latest
                if record is not None:
                    latest = record
                    if record.terminal:
                        return record
        finally:
            await follow.aclose()

    async def finished(self, job_id: str, owner: str = ANONYMOUS) -> JobRecord:
        """The job's record, when it is done (its ``result`` set); raises JobNotDone."""
        record = await self.get(job_id, owner)
        if record.state != "done" or record.result is None or not record.result_name:
            raise JobNotDone(f"job {job_id} is {record.state}; its result is not ready")
        return record

    async def result(self, job_id: str, owner: str = ANONYMOUS) -> JobOutput:
        record = await self.finished(job_id, owner)
        try:
            data = await self._call(self.blobs.read, job_id, record.result_name)
        except FileNotFoundError:
            raise JobExpired(f"job {job_id}'s result is gone (expired)") from None
        info = record.result
        return JobOutput(data, info.media_type, info.width, info.height)

    async def result_chunks(
        self, record: JobRecord, first: int, last: int, chunk: int
    ) -> AsyncIterator[bytes]:
        """Bytes ``first``..``last`` (inclusive) of a finished job's result, piece by piece:
        a result is never whole in memory, whatever range was asked for."""
        for start in range(first, last + 1, chunk):
            length = min(chunk, last + 1 - start)
            try:
                yield await self._call(
                    self.blobs.read_range, record.id, record.result_name, start, length
                )
            except FileNotFoundError:  # deleted while streaming: the body just ends short
                logger.info("job %s: result gone while it was being sent", record.id)
                return

    # --- cancel ----------------------------------------------------------------------------

    async def cancel(self, job_id: str, owner: str = ANONYMOUS) -> JobRecord:
        """Stop the job wherever it runs and delete its files; its record stays, as
        ``cancelled``, until it expires."""
        await self.get(job_id, owner)  # only the owner may
        now = time.time()
        cancelled = await self.records.cancel(
            job_id,
            {
                "state": "cancelled",
                "finished_at": now,
                "expires_at": now + self._config.ttl_s,
                "reserved_bytes": 0,
                "result_name": None,
                "result": None,
            },
        )
        if cancelled is None:  # cancelled already
            return await self.get(job_id, owner)
        self.runs.stop(job_id)
        await self._call(self.blobs.delete, job_id)
        self._events.publish(cancelled)
        self._on_state(cancelled)
        return cancelled

    def _heard(self, record: JobRecord) -> None:
        """A change to a job running here: cancelled, or taken over by another runner
        (its own writes name this runner, or none once it ended the job), stops the run."""
        taken = record.runner is not None and record.runner != self.runner_id
        if record.id in self.runs and (record.state == "cancelled" or taken):
            self.runs.stop(record.id)

    # --- upkeep ----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete expired jobs: their files first, then their records. A job whose files
        could not all be deleted keeps its record, so the next sweep tries again (without
        it nothing would name them: they would hold their space for good)."""
        removed = 0
        while True:
            now, removed_before = time.time(), removed
            due = await self.records.due(now, PAGE)
            for job_id in due:
                if await self._call(self.blobs.delete, job_id):
                    removed += await self.records.remove(job_id, now)
            if len(due) < PAGE or removed == removed_before:  # the rest: next time
                return removed

    def _on_state(self, record: JobRecord) -> None:
        """The job entered ``record.state`` here (written by this replica)."""
        self._count(record, record.state)
        if record.state == "failed" and record.error is not None and self._metrics is not None:
            self._metrics.job_failures.inc(tags={"code": record.error.code})
        self.webhooks.notify(record, self.view(record).model_dump(mode="json"))

    async def _save_delivery(self, job_id: str, delivery: WebhookDelivery) -> None:
        record = await self.records.get(job_id)
        if record is None or record.webhook is None:
            return
        deliveries = [d for d in record.webhook.deliveries if d.event != delivery.event]
        webhook = record.webhook.model_copy(update={"deliveries": [*deliveries, delivery]})
        updated = await self.records.set_fields(job_id, {"webhook": webhook})
        if updated is not None:
            self._events.publish(updated)

    # --- views and figures -----------------------------------------------------------------

    def view(self, record: JobRecord, base_url: str = "") -> JobView:
        now = time.time()
        end = record.finished_at or now
        eta = 0.0 if record.terminal else None
        if record.state == "running" and record.started_at and 0 < record.progress < 1:
            eta = (now - record.started_at) * (1 - record.progress) / record.progress
        prefix = f"{base_url.rstrip('/')}/v1/jobs/{record.id}"
        links = {"self": prefix, "events": f"{prefix}/events", "result": f"{prefix}/result"}
        public = record.model_dump(include=set(JobView.model_fields) - {"elapsed_s", "eta_s"})
        return JobView(**public, elapsed_s=end - record.created_at, eta_s=eta, links=links)

    def _count(self, record: JobRecord, state: str) -> None:
        if self._metrics is not None:
            self._metrics.jobs.inc(tags={"state": state, "kind": record.kind})

    def figures(self) -> dict[str, int]:
        """This replica's jobs now: running, waiting for a place, and followers."""
        return {**self.runs.figures(), "followers": self._events.follower_count}

    @property
    def record_calls(self) -> dict[str, int]:
        """This replica's calls to the record store so far, by operation (a store made
        by ``open_record_store`` counts them)."""
        return dict(getattr(self.records, "calls", {}))


def _expected_output_bytes(submission: Submission) -> int:
    """Store space an output is expected to take (reserved until the real size is known):
    a still's PNG at most ~3 bytes a pixel of its square bound; an animation one byte a
    pixel of its frames; a video about its upload's bytes per output pixel."""
    size = submission.options.size
    media = submission.media
    if media is None:
        return 3 * size * size + 64 * 1024
    pixels = size * size
    if media.kind == "animation":
        return media.frames * pixels
    ratio = max(1.0, pixels / max(media.width * media.height, 1))
    return int(len(submission.data) * ratio) + (1 << 20)


def _service_error(error: BaseException) -> ServiceError:
    if isinstance(error, ServiceError):
        return error
    return StoreError(f"the upload could not be stored: {error}")


def _check_idempotency_key(key: str | None) -> None:
    """The HTTP route's bound on ``Idempotency-Key``, for every caller (handles too)."""
    if key is None:
        return
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not re.match(IDEMPOTENCY_KEY_PATTERN, key):
        raise InvalidParameters(
            f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII "
            "characters, not starting or ending with a space"
        )


def _check_same_content(found: JobRecord, submission: Submission) -> None:
    """A submission that found an earlier job by its Idempotency-Key: the key's job is
    only its own for the same upload and options (422 otherwise)."""
    if found.content_key != submission.content_key:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was sent before with another upload or other "
            "options; use a new key for a new job"
        )
