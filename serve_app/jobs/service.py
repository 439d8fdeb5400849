"""Jobs: a picture submitted now, followed while it is made, fetched when done.

    submit -> record "queued" (+ the upload) in the store -> a detached task runs it
           -> "running" -> the stylize call -> the result in the store -> "done"

Records, uploads and results live in a store addressed by an fsspec URL (a local directory
by default; ``s3://`` or ``gs://`` on a cluster), so any ingress replica on any node can
answer for any job, and a finished job outlives the replicas and a redeploy. A job's id is
the result's cache key: the same bytes and options are the same job, whoever submits them.

A running job beats a heartbeat into its record. A record whose heartbeat stopped (its
ingress died) is taken over by the next replica that reads it: the upload is in the store,
and the result cache makes the rerun cheap where the work had finished.

Plain asyncio over a "stylize" callable: the whole path runs in unit tests without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import fsspec
from pydantic import BaseModel, Field

from serve_app.concurrency import run_detached
from serve_app.config import JobsConfig
from serve_app.errors import ErrorDetail, JobNotDone, ServiceError, StoreFull, Timeout, UnknownJob
from serve_app.media.frames import FrameCounts, MediaOutput, expected_frames
from serve_app.media.probe import MediaInfo
from serve_app.options import StylizeOptions
from serve_app.pipeline.results import StylizeResult

if TYPE_CHECKING:
    from serve_app.metrics import JobMetrics

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
RECORD, UPLOAD, RESULT = "job.json", "upload", "result"
# Job ids are cache keys (hex digests); anything else names no job and never a path.
JOB_ID = re.compile(r"^[0-9a-f]{16,128}$")

Stylize = Callable[[bytes, StylizeOptions, float], Awaitable[StylizeResult]]
"""(upload, options, timeout_s) -> the picture; raises the API's errors."""
ProgressOf = Callable[[str], "float | None"]
"""job id -> how far the model is with it (0..1), or None when it cannot tell."""
RunMedia = Callable[[StylizeOptions, bytes, Callable[[FrameCounts], None]], Awaitable[MediaOutput]]
"""(a video or animation job's options, its upload, a progress sink) -> the finished output."""
JobKind = Literal["still", "animation", "video"]
DELETE_PASSES, DELETE_RETRY_S = 5, 0.05
CANCEL_WAIT_S = 1.0
# How often a running job's progress is read and, when it moved, written to its record.
PROGRESS_EVERY_S = 0.5


class JobResultInfo(BaseModel):
    media_type: str
    width: int
    height: int
    bytes: int
    cache: str = Field(description="how the picture was found: `hit`, `miss` or `coalesced`")
    frames: int | None = Field(default=None, description="videos and animations: frames out")
    duration_s: float | None = Field(default=None, description="videos and animations")


class JobRecord(BaseModel):
    """A job as stored, and as `GET /v1/jobs/{id}` answers it (plus elapsed and ETA)."""

    id: str
    state: JobState
    kind: JobKind = "still"
    media: dict | None = Field(
        default=None, description="videos and animations: what the upload was found to be"
    )
    options: dict
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = Field(default=None, description="a running job's last beat")
    frames_done: int = 0
    frames_total: int = 1
    frames_model: int = Field(default=0, description="frames the model computed")
    frames_repeated: int = Field(default=0, description="frames repeating one earlier in the job")
    frames_cached: int = Field(default=0, description="frames found in the result cache")
    progress: float = Field(default=0.0, description="0..1, from the model's own progress")
    upload_bytes: int = 0
    error: ErrorDetail | None = None
    result: JobResultInfo | None = None
    runner: str | None = Field(default=None, description="the ingress replica running it")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class JobView(JobRecord):
    """The wire shape: the record plus what is computed when it is read."""

    elapsed_s: float = Field(description="since submission; to the end once finished")
    eta_s: float | None = Field(description="expected seconds to the end; null when unknown")
    links: dict[str, str] = Field(description="`self`, `events`, `result`")


@dataclass
class _Run:
    """A job this replica runs: its record as last written, and one writer at a time."""

    record: JobRecord
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class JobOutput:
    """A finished job's picture, as the handle API returns it."""

    data: bytes
    media_type: str
    width: int
    height: int


class JobStore:
    """Records, uploads and results under one fsspec URL, one folder per job."""

    def __init__(self, url: str) -> None:
        self.url = url if "://" in url else os.path.expanduser(url)
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._fs.makedirs(self._root, exist_ok=True)

    def _path(self, job_id: str, name: str = "") -> str:
        return (
            posixpath.join(self._root, job_id, name) if name else posixpath.join(self._root, job_id)
        )

    def read(self, job_id: str) -> JobRecord | None:
        try:
            with self._fs.open(self._path(job_id, RECORD), "rb") as file:
                return JobRecord.model_validate_json(file.read())
        except FileNotFoundError:
            return None

    def write(self, record: JobRecord) -> None:
        self._fs.makedirs(self._path(record.id), exist_ok=True)
        self._put(self._path(record.id, RECORD), record.model_dump_json().encode())

    def _put(self, path: str, data: bytes) -> None:
        # Write aside, then move: a reader never sees half a record (on object stores a
        # put is already atomic and the move is a copy).
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        with self._fs.open(partial, "wb") as file:
            file.write(data)
        self._fs.mv(partial, path)

    def put_blob(self, job_id: str, name: str, data: bytes) -> None:
        self._fs.makedirs(self._path(job_id), exist_ok=True)
        self._put(self._path(job_id, name), data)

    def put_file(self, job_id: str, name: str, local: str) -> None:
        """A local file into the job's folder (a video result: never whole in memory)."""
        self._fs.makedirs(self._path(job_id), exist_ok=True)
        path = self._path(job_id, name)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        self._fs.put_file(local, partial)
        self._fs.mv(partial, path)

    def read_blob(self, job_id: str, name: str) -> bytes:
        with self._fs.open(self._path(job_id, name), "rb") as file:
            return file.read()

    def read_range(self, job_id: str, name: str, start: int, length: int) -> bytes:
        with self._fs.open(self._path(job_id, name), "rb") as file:
            file.seek(start)
            return file.read(length)

    def delete_blob(self, job_id: str, name: str) -> None:
        self._fs.rm(self._path(job_id, name))

    def delete(self, job_id: str) -> None:
        """Remove a job's folder. A runner still writing into it can make one pass fail
        ("directory not empty"): a few more passes, then what is left has no record and
        the expiry sweep removes it."""
        for _ in range(DELETE_PASSES):
            try:
                self._fs.rm(self._path(job_id), recursive=True)
                return
            except FileNotFoundError:
                return
            except OSError as error:
                logger.debug("job %s: delete pass failed: %s", job_id, error)
                time.sleep(DELETE_RETRY_S)
        logger.warning("job %s: folder not fully deleted; the expiry sweep will", job_id)

    def job_ids(self) -> list[str]:
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    def usage_bytes(self) -> int:
        try:
            return int(self._fs.du(self._root, total=True))
        except FileNotFoundError:
            return 0


class JobService:
    """Submit, follow, fetch and cancel jobs; the routes and the handle API are thin over it."""

    def __init__(
        self,
        config: JobsConfig,
        stylize: Stylize,
        store: JobStore | None = None,
        progress_of: ProgressOf | None = None,
        run_media: RunMedia | None = None,
        metrics: JobMetrics | None = None,
    ):
        self._config = config
        self._stylize = stylize
        self._progress_of = progress_of
        self._run_media = run_media
        self._metrics = metrics
        self._frames: dict[str, FrameCounts] = {}  # running media jobs' counts
        self._running: set[str] = set()
        self.store = store or JobStore(config.store_url)
        self.runner_id = uuid.uuid4().hex[:12]
        self._tasks: dict[str, asyncio.Task] = {}
        self._creating: dict[str, asyncio.Task] = {}  # submissions being stored
        # Jobs past this many wait "queued" instead of competing for the model at once.
        self._slots = asyncio.Semaphore(config.max_running)

    async def _io(self, function, *args):
        return await asyncio.to_thread(function, *args)

    # --- the API ---------------------------------------------------------------------------

    async def submit(
        self, job_id: str, data: bytes, options: StylizeOptions, media: MediaInfo | None = None
    ) -> tuple[JobRecord, bool]:
        """Start a job, or find the one made or running for these bytes and options;
        the flag says whether this call started it. ``media``: a video or animation, as
        probed (None: a still picture)."""
        existing = await self._io(self.store.read, self._checked(job_id))
        if existing is not None and existing.state in ("done", "queued", "running"):
            return await self._take_over_if_stale(existing), False
        if job_id in self._creating:  # the same upload, submitted twice at once
            return await asyncio.shield(self._creating[job_id]), False
        # Outside the request's context, and shielded: a client that hangs up mid-way must
        # not leave a record whose upload was never stored or whose runner never started.
        created = run_detached(self._create(job_id, data, options, media))
        self._creating[job_id] = created
        created.add_done_callback(lambda _: self._creating.pop(job_id, None))
        return await asyncio.shield(created), True

    async def _create(
        self, job_id: str, data: bytes, options: StylizeOptions, media: MediaInfo | None
    ) -> JobRecord:
        await self._make_room(len(data))
        record = JobRecord(
            id=job_id,
            state="queued",
            kind="still" if media is None else media.kind,
            media=None if media is None else media.to_dict(),
            options=asdict(options),
            created_at=time.time(),
            upload_bytes=len(data),
            frames_total=1 if media is None else expected_frames(media, options.max_fps),
        )
        # The record first: a folder without one is debris the expiry sweep may remove.
        await self._io(self.store.write, record)
        await self._io(self.store.put_blob, job_id, UPLOAD, data)
        self._count(record, "queued")
        self._start(record, data)
        return record

    @staticmethod
    def _checked(job_id: str) -> str:
        if not JOB_ID.match(job_id):
            raise UnknownJob(f"no job {job_id[:140]!r}: job ids are hex digests")
        return job_id

    async def get(self, job_id: str) -> JobRecord:
        record = await self._io(self.store.read, self._checked(job_id))
        if record is None:
            raise UnknownJob(f"no job {job_id!r} (finished jobs are kept for a limited time)")
        return await self._take_over_if_stale(record)

    async def events(self, job_id: str, idle_s: float = 15.0) -> AsyncIterator[JobRecord | None]:
        """The record each time it changes, ending with its final state; ``None`` after
        ``idle_s`` without a change (a stream sends a keep-alive then)."""
        record = await self.get(job_id)
        last, changed_at = None, time.monotonic()
        while True:
            current = record.model_dump_json(exclude={"heartbeat_at"})
            if current != last:
                last, changed_at = current, time.monotonic()
                yield record
            elif time.monotonic() - changed_at >= idle_s:
                changed_at = time.monotonic()
                yield None
            if record.terminal:
                return
            await asyncio.sleep(self._config.poll_interval_s)
            fresh = await self._io(self.store.read, job_id)
            if fresh is None:  # deleted while followed
                yield record.model_copy(update={"state": "cancelled", "finished_at": time.time()})
                return
            record = await self._take_over_if_stale(fresh)

    async def result(self, job_id: str) -> JobOutput:
        record = await self.finished(job_id)
        try:
            data = await self._io(self.store.read_blob, job_id, RESULT)
        except FileNotFoundError:
            raise UnknownJob(f"job {job_id}'s result is gone (expired)") from None
        info = record.result
        return JobOutput(data, info.media_type, info.width, info.height)

    async def finished(self, job_id: str) -> JobRecord:
        """The job's record, when it is done (its ``result`` set); raises JobNotDone."""
        record = await self.get(job_id)
        if record.state != "done" or record.result is None:
            raise JobNotDone(f"job {job_id} is {record.state}; its result is not ready")
        return record

    async def result_range(self, job_id: str, start: int, length: int) -> bytes:
        """``length`` bytes of a finished job's result from ``start`` (a player's Range)."""
        try:
            return await self._io(self.store.read_range, job_id, RESULT, start, length)
        except FileNotFoundError:
            raise UnknownJob(f"job {job_id}'s result is gone (expired)") from None

    async def result_chunks(self, job_id: str, size: int, chunk: int) -> AsyncIterator[bytes]:
        """A finished job's result, piece by piece."""
        for start in range(0, size, chunk):
            yield await self.result_range(job_id, start, min(chunk, size - start))

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop the job if it runs, and delete its files."""
        record = await self.get(job_id)
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_WAIT_S)  # its last write lands first
        await self._io(self.store.delete, job_id)
        if record.terminal:
            return record
        self._count(record, "cancelled")
        return record.model_copy(update={"state": "cancelled", "finished_at": time.time()})

    def view(self, record: JobRecord, base_url: str = "") -> JobView:
        now = time.time()
        end = record.finished_at or now
        elapsed = end - record.created_at
        eta = 0.0 if record.terminal else None
        if record.state == "running" and record.started_at and 0 < record.progress < 1:
            eta = (now - record.started_at) * (1 - record.progress) / record.progress
        prefix = f"{base_url.rstrip('/')}/v1/jobs/{record.id}"
        links = {"self": prefix, "events": f"{prefix}/events", "result": f"{prefix}/result"}
        return JobView(**record.model_dump(), elapsed_s=elapsed, eta_s=eta, links=links)

    # --- running ----------------------------------------------------------------------------

    def _start(self, record: JobRecord, data: bytes) -> None:
        # A job belongs to no request: it runs in an empty context, so the submitter
        # hanging up never cancels it.
        run = _Run(record.model_copy(update={"runner": self.runner_id}))
        task = run_detached(self._run(run, data))
        self._tasks[record.id] = task
        task.add_done_callback(lambda done: self._forget(record.id, done))
        self._gauge()

    def _forget(self, job_id: str, task: asyncio.Task) -> None:
        if self._tasks.get(job_id) is task:  # not a later run of the same job
            del self._tasks[job_id]
        self._frames.pop(job_id, None)
        self._gauge()

    async def _run(self, run: _Run, data: bytes) -> None:
        if not await self._save(run, heartbeat_at=time.time()):
            return
        beat = asyncio.ensure_future(self._heartbeat(run, asyncio.current_task()))
        try:
            async with self._slots:
                now = time.time()
                if not await self._save(run, state="running", started_at=now, heartbeat_at=now):
                    return
                self._count(run.record, "running")
                self._running.add(run.record.id)
                self._gauge()
                if self._metrics is not None:
                    self._metrics.job_queue_wait_ms.observe((now - run.record.created_at) * 1e3)
                info = await self._make(run.record, data)
        except ServiceError as error:
            await self._fail(run, error)
            return
        except Exception:  # the job fails; the replica goes on
            logger.exception("job %s failed", run.record.id)
            await self._fail(run, ServiceError())
            return
        finally:
            beat.cancel()
            self._running.discard(run.record.id)
            self._gauge()
        done = {
            "state": "done",
            "finished_at": time.time(),
            "frames_done": info.frames or 1,
            "progress": 1.0,
            "result": info,
        }
        counts = self._frames.pop(run.record.id, None)
        if counts is not None:
            done.update(_frame_fields(counts))
        if await self._save(run, **done):
            self._count(run.record, "done")
            with contextlib.suppress(FileNotFoundError):  # the upload only served a rerun
                await self._io(self.store.delete_blob, run.record.id, UPLOAD)
            logger.info("job %s done", run.record.id)

    async def _make(self, record: JobRecord, data: bytes) -> JobResultInfo:
        """The job's output, stored; what the record says of it."""
        options = StylizeOptions(**record.options)
        if record.kind == "still":
            result = await self._stylize(data, options, self._config.timeout_s)
            await self._io(self.store.put_blob, record.id, RESULT, result.data)
            return JobResultInfo(
                media_type=result.media_type,
                width=result.width,
                height=result.height,
                bytes=len(result.data),
                cache=result.cache,
            )
        if self._run_media is None:
            raise ServiceError("this service makes no videos or animations")
        counts = self._frames.setdefault(record.id, FrameCounts(total=record.frames_total))

        def on_progress(latest: FrameCounts) -> None:
            self._frames[record.id] = latest

        try:
            output = await asyncio.wait_for(
                self._run_media(options, data, on_progress), self._config.timeout_s
            )
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise Timeout(f"the job was not done within {self._config.timeout_s:g} s") from None
        size = output.size
        try:
            if output.path is not None:
                await self._io(self.store.put_file, record.id, RESULT, str(output.path))
            else:
                await self._io(self.store.put_blob, record.id, RESULT, output.data)
        finally:
            if output.path is not None:
                output.path.unlink(missing_ok=True)
        if self._metrics is not None:
            latest = self._frames.get(record.id, counts)
            sources = {"model": latest.model, "job": latest.job, "cache": latest.cache}
            for source, frames in sources.items():
                if frames:  # Ray's counters take positive increments only
                    self._metrics.job_frames.inc(frames, tags={"source": source})
        return JobResultInfo(
            media_type=output.media_type,
            width=output.width,
            height=output.height,
            bytes=size,
            cache="miss",
            frames=output.frames,
            duration_s=output.duration_s,
        )

    def _count(self, record: JobRecord, state: str) -> None:
        if self._metrics is not None:
            self._metrics.jobs.inc(tags={"state": state, "kind": record.kind})

    def _gauge(self) -> None:
        if self._metrics is not None:
            running = len(self._running)
            self._metrics.jobs_active.set(len(self._tasks) - running, tags={"state": "queued"})
            self._metrics.jobs_active.set(running, tags={"state": "running"})

    async def _fail(self, run: _Run, error: ServiceError) -> None:
        self._frames.pop(run.record.id, None)
        detail = ErrorDetail(code=error.code, message=error.message)
        if await self._save(run, state="failed", finished_at=time.time(), error=detail):
            self._count(run.record, "failed")
            if self._metrics is not None:
                self._metrics.job_failures.inc(tags={"code": error.code})
            logger.info("job %s failed: %s", run.record.id, error.code)

    async def _save(self, run: _Run, **update) -> bool:
        """Write this runner's record, unless the job was deleted or taken over meanwhile
        (then False: the job is no longer ours)."""
        async with run.lock:
            stored = await self._io(self.store.read, run.record.id)
            if stored is None or stored.runner not in (None, self.runner_id):
                return False
            if stored.state == "cancelled":
                return False
            run.record = run.record.model_copy(update=update)
            await self._io(self.store.write, run.record)
            return True

    async def _heartbeat(self, run: _Run, job: asyncio.Task | None) -> None:
        """Beat while the job waits and runs, and record its progress as it moves; stop
        the job once it is no longer ours (deleted on any replica, or taken over)."""
        tick = min(self._config.heartbeat_s, PROGRESS_EVERY_S)
        beat_at = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            update = {}
            counts = self._frames.get(run.record.id)
            if counts is not None and counts.done != run.record.frames_done:
                update.update(_frame_fields(counts))
            progress = self._progress_of(run.record.id) if self._progress_of else None
            if progress is not None and progress >= run.record.progress + 0.01:
                update["progress"] = min(progress, 0.99)  # 1 once the result is stored
            if time.monotonic() - beat_at >= self._config.heartbeat_s:
                beat_at = time.monotonic()
                update["heartbeat_at"] = time.time()
            if update and not await self._save(run, **update):
                if job is not None:
                    job.cancel()
                return

    async def _take_over_if_stale(self, record: JobRecord) -> JobRecord:
        """A queued or running job whose runner stopped beating is run again here."""
        if record.terminal or record.id in self._tasks:
            return record
        beat = record.heartbeat_at or record.created_at
        if time.time() - beat < self._config.stale_after_s:
            return record
        try:
            data = await self._io(self.store.read_blob, record.id, UPLOAD)
        except FileNotFoundError:  # its submitter died before the upload was stored
            lost = ServiceError("the job's upload was lost; submit it again")
            failed = {"state": "failed", "finished_at": time.time()}
            failed["error"] = ErrorDetail(code=lost.code, message=lost.message)
            record = record.model_copy(update=failed)
            await self._io(self.store.write, record)
            return record
        logger.warning("job %s: its runner stopped; running it again here", record.id)
        taken = record.model_copy(
            update={"state": "queued", "runner": self.runner_id, "heartbeat_at": time.time()}
        )
        await self._io(self.store.write, taken)
        self._start(taken, data)
        return taken

    # --- the store's bounds -------------------------------------------------------------------

    async def _make_room(self, incoming: int) -> None:
        await self._io(self._expire)
        used = await self._io(self.store.usage_bytes)
        if used + incoming > self._config.max_store_bytes:
            raise StoreFull(
                f"the job store is full ({used} of {self._config.max_store_bytes} bytes); "
                "retry later or fetch and delete finished jobs"
            )

    def _expire(self) -> None:
        """Delete finished jobs older than the TTL (a sweep before each new job)."""
        cutoff = time.time() - self._config.ttl_s
        for job_id in self.store.job_ids():
            record = self.store.read(job_id)
            if record is None or (record.terminal and (record.finished_at or 0) < cutoff):
                self.store.delete(job_id)


def _frame_fields(counts: FrameCounts) -> dict:
    return {
        "frames_done": counts.done,
        "frames_total": max(counts.total, counts.done),
        "frames_model": counts.model,
        "frames_repeated": counts.job,
        "frames_cached": counts.cache,
        "progress": min(counts.progress, 0.99),  # 1 once the result is stored
    }


def sse_event(record: JobView) -> bytes:
    """One Server-Sent Event: the event name is the state, the data the job's JSON."""
    return f"event: {record.state}\ndata: {json.dumps(record.model_dump(mode='json'))}\n\n".encode()
