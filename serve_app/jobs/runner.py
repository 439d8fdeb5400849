"""One job run on this replica, from its lease to its last write.

    lease held (claim) -> queued: waits for a slot, beating its lease
      -> running: the output made (a still through the pipeline, a video or animation
         through the media service, or another owner's finished output copied)
      -> the output stored under this run's own name -> "done" (compare-and-set)

Every record write is conditional on this runner holding the job and the job not being
over, so a cancel or a takeover elsewhere ends the run at its next write (or at once,
when the change is heard here); what the run stored by then is deleted by the run.
Anything that goes wrong — a bad upload, the model, the deadline, the blob store — ends
the job ``failed`` with a code and frees its space: never a job stuck in "running". The
record store being away (a Redis restart) is not the job's failure: the run's state
changes wait for it and are written once it is back (or, if another replica took the job
over after its lease ran out meanwhile, the run learns so then and stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from serve_app.concurrency import Backoff, raise_if_cancelling, run_in_to_completion
from serve_app.config import JobsConfig
from serve_app.errors import Overloaded, QueueTimeout, ServiceError, StoreError, Timeout
from serve_app.jobs.blobs import UPLOAD, BlobStore
from serve_app.jobs.fair_slots import FairSlots
from serve_app.jobs.record_store import RecordStore
from serve_app.jobs.records import JobRecord, JobResultInfo, failed_changes
from serve_app.media.frames import FrameCounts, MediaOutput
from serve_app.options import StylizeOptions
from serve_app.pipeline.results import StylizeResult

if TYPE_CHECKING:
    from serve_app.metrics import JobMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A still job that finds the service at capacity asks again after these waits (doubling).
CAPACITY_FIRST_WAIT_S = 0.25
CAPACITY_MOST_WAIT_S = 5.0

Stylize = Callable[[bytes, StylizeOptions, float], Awaitable[StylizeResult]]
"""(upload, options, timeout_s) -> the picture; raises the API's errors."""
ProgressOf = Callable[[str], "float | None"]
"""content key -> how far the model is with it (0..1), or None when it cannot tell."""
RunMedia = Callable[[StylizeOptions, Path, Callable[[FrameCounts], None]], Awaitable[MediaOutput]]
"""(a video or animation job's options, its upload as a local file, a progress sink)
-> the finished output."""


class LostJob(Exception):
    """The job is no longer this runner's: cancelled, or taken over elsewhere."""


@dataclass
class RunContext:
    """What every run of a replica shares (built by the job service)."""

    config: JobsConfig
    records: RecordStore
    blobs: BlobStore
    io: Executor  # the store's threads: blob reads and writes
    runner_id: str
    slots: FairSlots
    publish: Callable[[JobRecord], None]
    stylize: Stylize
    progress_of: ProgressOf | None
    run_media: RunMedia | None
    metrics: JobMetrics | None
    on_state: Callable[[JobRecord], None]  # the job entered a state (metrics, webhooks)

    async def io_call(self, function: Callable[..., Any], *args: Any) -> Any:
        """A blob read or write on the store's threads; a cancelled run waits for it."""
        return await run_in_to_completion(self.io, function, *args)

    def lease_until(self) -> float:
        return time.time() + self.config.stale_after_s


class JobRun:
    """Runs one job held by this replica's lease; ``task`` is its asyncio task."""

    def __init__(self, context: RunContext, record: JobRecord) -> None:
        self.context = context
        self.record = record
        self.counts: FrameCounts | None = None
        self.task: asyncio.Task | None = None
        self.running = False
        self.finished_here = False
        self._stopping = False
        self._result_name = f"result-{record.attempts}"
        self._shareable = True  # see JobRecord.shareable

    @property
    def job_id(self) -> str:
        return self.record.id

    def stop(self) -> None:
        """Cancel the run, once: a cancel, a takeover and the store's news of either may
        all ask, and a second cancel would cut short the first one's cleanup (the wait
        for the model pass it sent, the release of its files)."""
        if self.task is not None and not self._stopping:
            self._stopping = True
            self.task.cancel()

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            beat = asyncio.ensure_future(self._beat())
            try:
                await self._wait_for_slot()
                try:
                    await self._running()
                    output = await self._make()
                finally:
                    self.running = False
                    self.context.slots.release(self.record.owner)
            finally:  # the last writes below end the lease: no beat may race them
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
            await self._done(output)
        except LostJob:
            await self._forget_result()
        except asyncio.CancelledError:
            await self._forget_result()
            raise
        except ServiceError as error:
            await self._fail(error)
        except Exception:  # the job fails; the replica goes on
            logger.exception("job %s failed", self.job_id)
            await self._fail(ServiceError())

    async def _wait_for_slot(self) -> None:
        config = self.context.config
        left_s = config.queue_timeout_s - (time.time() - self.record.created_at)
        if not await self.context.slots.acquire_within(self.record.owner, left_s):
            raise QueueTimeout(
                f"the job waited {config.queue_timeout_s:g} s for a place to run; submit it "
                "again later"
            )

    async def _running(self) -> None:
        now = time.time()
        started = await self._recorded(lambda: self._write({"state": "running", "started_at": now}))
        self.running = True
        self.context.on_state(started)
        if self.context.metrics is not None:
            wait_ms = (now - self.record.created_at) * 1e3
            self.context.metrics.job_queue_wait_ms.observe(wait_ms)

    async def _make(self) -> JobResultInfo:
        """The job's output, stored under this run's name."""
        record, context = self.record, self.context
        copied = await self._copy_finished_output()
        if copied is not None:
            return copied
        options = StylizeOptions.from_dict(record.options)
        if record.kind == "still":
            data = await context.io_call(context.blobs.read, record.id, UPLOAD)
            result = await self._stylize_still(data, options)
            self._shareable = result.configured_weights
            await context.io_call(context.blobs.put, record.id, self._result_name, result.data)
            return JobResultInfo(
                media_type=result.media_type,
                width=result.width,
                height=result.height,
                bytes=len(result.data),
                cache=result.cache,
            )
        return await self._make_media(options)

    async def _stylize_still(self, data: bytes, options: StylizeOptions) -> StylizeResult:
        """The picture, within the job's deadline. While the service is at capacity
        (``Overloaded``: the photos people wait for come first) the job waits and asks
        again instead of failing."""
        deadline = time.monotonic() + self.context.config.timeout_s
        backoff = Backoff(CAPACITY_FIRST_WAIT_S, CAPACITY_MOST_WAIT_S)
        while True:
            try:
                return await self.context.stylize(data, options, deadline - time.monotonic())
            except Overloaded:
                if time.monotonic() + backoff.next_s >= deadline:
                    raise
                logger.info("job %s: the service is at capacity; asking again", self.job_id)
            await backoff.wait()

    async def _make_media(self, options: StylizeOptions) -> JobResultInfo:
        context, record = self.context, self.record
        if context.run_media is None:
            raise ServiceError("this service makes no videos or animations")
        self.counts = FrameCounts(total=record.frames_total)

        def on_progress(latest: FrameCounts) -> None:
            self.counts = latest

        async with self._local_upload() as upload:
            try:
                output = await asyncio.wait_for(
                    context.run_media(options, upload, on_progress), context.config.timeout_s
                )
            except asyncio.TimeoutError:
                limit = context.config.timeout_s
                raise Timeout(f"the job was not done within {limit:g} s") from None
        try:
            if output.path is not None:
                await context.io_call(
                    context.blobs.put_file, record.id, self._result_name, output.path
                )
            else:
                await context.io_call(context.blobs.put, record.id, self._result_name, output.data)
            size = output.size
        finally:
            if output.path is not None:
                output.path.unlink(missing_ok=True)
        self._count_frames()
        self._shareable = output.foreign_frames == 0
        return JobResultInfo(
            media_type=output.media_type,
            width=output.width,
            height=output.height,
            bytes=size,
            cache="miss",
            frames=output.frames,
            duration_s=output.duration_s,
        )

    @contextlib.asynccontextmanager
    async def _local_upload(self) -> AsyncIterator[Path]:
        """The upload as a file on this node, which decoders read without holding it whole:
        the store's own file, or a temporary copy of an object store's."""
        blobs = self.context.blobs
        if blobs.local:
            yield blobs.local_path(self.job_id, UPLOAD)
            return
        with tempfile.TemporaryDirectory(prefix="animegan-job-") as folder:
            local = Path(folder) / UPLOAD
            await self.context.io_call(blobs.fetch, self.job_id, UPLOAD, local)
            yield local

    async def _copy_finished_output(self) -> JobResultInfo | None:
        """Another owner's finished job of the same content: its output, copied (sharing
        compute never shares the job)."""
        context, record = self.context, self.record
        if not record.content_key:
            return None
        try:
            done = await context.records.find_done(record.content_key)
        except StoreError:  # the record store is away: make it afresh
            return None
        if done is None or done.id == record.id or done.result is None or not done.result_name:
            return None
        if not done.shareable:  # made in part by a replica of an earlier deploy
            return None
        try:
            await context.io_call(
                context.blobs.copy, done.id, done.result_name, record.id, self._result_name
            )
        except (FileNotFoundError, StoreError):  # expired meanwhile: make it afresh
            return None
        if record.kind != "still":
            self.counts = FrameCounts(
                total=done.frames_total, done=done.frames_done, cache=done.frames_done
            )
        return done.result.model_copy(update={"cache": "hit"})

    async def _done(self, info: JobResultInfo) -> None:
        now = time.time()
        changes: dict[str, Any] = {
            "state": "done",
            "finished_at": now,
            "expires_at": now + self.context.config.ttl_s,
            "frames_done": info.frames or 1,
            "progress": 1.0,
            "result": info,
            "result_name": self._result_name,
            "reserved_bytes": info.bytes,
            "shareable": self._shareable,
        }
        if self.counts is not None:
            changes.update(_frame_fields(self.counts))
            changes["progress"] = 1.0  # the frames' own figure stops at 0.99 until now
        finished = await self._finish(changes)
        if finished is None:  # cancelled or taken over while it was being made
            await self._forget_result()
            return
        await self.context.io_call(self.context.blobs.delete, self.job_id, UPLOAD)
        logger.info("job %s done", self.job_id)

    async def _fail(self, error: ServiceError) -> None:
        changes = failed_changes(error, time.time(), self.context.config.ttl_s)
        try:
            finished = await self._finish(changes)
        except Exception as store_error:  # the lease runs out; a takeover ends it later
            logger.warning(
                "job %s: its failure could not be recorded: %s", self.job_id, store_error
            )
            return
        if finished is not None:
            logger.info("job %s failed: %s", self.job_id, error.code)
            await self.context.io_call(self.context.blobs.delete, self.job_id)

    async def _forget_result(self) -> None:
        """What this run stored, deleted: the job is no longer its to finish (unless its
        record names it: this run's last write landed though its answer was lost)."""
        if self.finished_here:
            return  # it did finish it: the result is the job's now
        with contextlib.suppress(Exception):
            record = await self.context.records.get(self.job_id)
            if record is not None and record.result_name == self._result_name:
                return
            await self.context.io_call(self.context.blobs.delete, self.job_id, self._result_name)

    # --- writes --------------------------------------------------------------------------

    async def _write(self, changes: dict[str, Any]) -> JobRecord:
        """A conditional write; LostJob when the job is no longer this runner's."""
        updated = await self.context.records.update(self.job_id, self.context.runner_id, changes)
        if updated is None:
            raise LostJob(self.job_id)
        self._accept(updated)
        return updated

    async def _finish(self, changes: dict[str, Any]) -> JobRecord | None:
        records, runner = self.context.records, self.context.runner_id
        tries = 0

        async def write() -> JobRecord | None:
            nonlocal tries
            tries += 1
            return await records.finish(self.job_id, runner, changes)

        finished = await self._recorded(write)
        if finished is None and tries > 1:  # an earlier try may have landed unanswered
            finished = await self._recorded(lambda: self._as_written(changes))
        if finished is not None:
            self.finished_here = True
            self._accept(finished)
            self.context.on_state(finished)
        return finished

    async def _as_written(self, changes: dict[str, Any]) -> JobRecord | None:
        """The record, if it holds this run's final write (``finished_at`` is this run's
        own): the server took it and went away before it answered."""
        record = await self.context.records.get(self.job_id)
        if record is None or record.finished_at != changes["finished_at"]:
            return None
        return record if record.state == changes["state"] else None

    async def _recorded(self, write: Callable[[], Awaitable[T]]) -> T:
        """``write()``, tried again every heartbeat while the record store cannot be
        reached (StoreError), however long that takes: a record server's restart must not
        fail the job. The write is conditional, so once the store is back it also tells
        whether the job was cancelled or taken over meanwhile."""
        said = False
        while True:
            try:
                return await write()
            except StoreError as error:
                raise_if_cancelling()  # a stop that met the client's timeout
                if not said:
                    said = True
                    logger.warning(
                        "job %s: waiting for the record store to write its state: %s",
                        self.job_id,
                        error.message,
                    )
                await asyncio.sleep(self.context.config.heartbeat_s)

    def _accept(self, record: JobRecord) -> None:
        self.record = record
        self.context.publish(record)

    async def _beat(self) -> None:
        """Write the job's progress as it moves (at most every ``progress_every_s``):
        followers hear it then. (The replica renews all its runs' leases at once.)"""
        while True:
            await asyncio.sleep(self.context.config.progress_every_s)
            changes = self._progress()
            if not changes:
                continue
            try:
                await self._write(changes)
            except LostJob:  # cancelled or taken over elsewhere: stop the run
                self.stop()
                return
            except Exception as error:  # the store hiccupped: the next change tries again
                logger.warning("job %s: progress not written: %s", self.job_id, error)
            # The run waits for this task to end once the job is made: a stop swallowed
            # by the write above would leave the job "running" for good.
            raise_if_cancelling()

    def _progress(self) -> dict[str, Any]:
        record = self.record
        if not self.running:
            return {}
        if self.counts is not None:
            fields = _frame_fields(self.counts)
            moved = fields["frames_done"] != record.frames_done
            return fields if moved else {}
        of = self.context.progress_of
        progress = of(record.content_key) if of is not None else None
        if progress is not None and progress >= record.progress + 0.01:
            return {"progress": min(progress, 0.99)}  # 1 once the result is stored
        return {}

    def _count_frames(self) -> None:
        metrics, counts = self.context.metrics, self.counts
        if metrics is None or counts is None:
            return
        for source, frames in {
            "model": counts.model,
            "job": counts.job,
            "cache": counts.cache,
            "similar": counts.similar,
        }.items():
            if frames:  # Ray's counters take positive increments only
                metrics.job_frames.inc(frames, tags={"source": source})


def _frame_fields(counts: FrameCounts) -> dict[str, Any]:
    return {
        "frames_done": counts.done,
        "frames_total": max(counts.total, counts.done),
        "frames_model": counts.model,
        "frames_repeated": counts.job,
        "frames_cached": counts.cache,
        "frames_similar": counts.similar,
        "progress": min(counts.progress, 0.99),  # 1 once the result is stored
    }
