"""The jobs this replica runs or queues: started, stopped, their leases kept, and the jobs
whose runner died (its lease ran out) taken over here — one replica wins each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from serve_app.concurrency import run_detached
from serve_app.errors import RunnerLost
from serve_app.jobs.blobs import UPLOAD, BlobStore
from serve_app.jobs.records import JobRecord, failed_changes
from serve_app.jobs.runner import JobRun, RunContext

if TYPE_CHECKING:
    from serve_app.metrics import JobMetrics

logger = logging.getLogger(__name__)

# Records due for a takeover (or, in the service, for deletion) handled per look; the rest
# at the next look.
PAGE = 200


class ReplicaRuns:
    """This replica's runs by job id."""

    def __init__(self, context: RunContext, metrics: JobMetrics | None = None) -> None:
        self._context = context
        self._metrics = metrics
        self._runs: dict[str, JobRun] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._runs

    def __iter__(self) -> Iterator[JobRun]:
        return iter(list(self._runs.values()))

    def __len__(self) -> int:
        return len(self._runs)

    def job_ids(self) -> set[str]:
        return set(self._runs)

    @property
    def full(self) -> bool:
        """No room for another job here: ``max_running`` run and ``max_queued`` wait."""
        config = self._context.config
        return len(self._runs) >= config.max_running + config.max_queued

    def figures(self) -> dict[str, int]:
        running = sum(run.running for run in self._runs.values())
        return {"running": running, "queued": len(self._runs) - running}

    # --- start and stop --------------------------------------------------------------------

    def start(self, record: JobRecord) -> None:
        run = JobRun(self._context, record)
        # A job belongs to no request: an empty context, so a submitter hanging up never
        # cancels it (Serve cancels the model calls made in a cancelled request's context).
        run.task = run_detached(run.run())
        self._runs[record.id] = run
        run.task.add_done_callback(lambda _: self._forget(run))
        self._gauge()

    def stop(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.stop()

    def _forget(self, run: JobRun) -> None:
        if self._runs.get(run.job_id) is run:
            del self._runs[run.job_id]
        self._gauge()

    def _gauge(self) -> None:
        if self._metrics is not None:
            figures = self.figures()
            self._metrics.set_active(figures["queued"], figures["running"])

    async def close(self) -> None:
        """Stop every run; their leases are released so another replica takes them over
        at once."""
        runs = list(self._runs.values())
        for run in runs:
            run.stop()
        await asyncio.gather(*(r.task for r in runs if r.task), return_exceptions=True)
        context = self._context
        for run in runs:
            with contextlib.suppress(Exception):
                await context.records.update(run.job_id, context.runner_id, {"lease_until": 0.0})

    # --- leases and takeovers --------------------------------------------------------------

    async def renew_leases(self) -> None:
        """Keep the leases of every job run or queued here (one store call); runs of jobs
        no longer ours stop."""
        context = self._context
        lost = await context.records.renew(
            list(self._runs), context.runner_id, context.lease_until()
        )
        for job_id in lost:
            self.stop(job_id)

    async def take_over_stale(self) -> int:
        """Jobs whose runner stopped renewing its lease, run here (one replica wins each)."""
        context, taken = self._context, 0
        for job_id in await context.records.stale(time.time(), PAGE):
            if job_id in self._runs:
                continue
            if self.full:
                break
            record = await context.records.claim(job_id, context.runner_id, context.lease_until())
            if record is None:
                continue  # another replica was first
            taken += 1
            if record.attempts > context.config.max_attempts:
                await self._give_up(record, f"its runner stopped {record.attempts - 1} times")
                continue
            if not await context.io_call(_has_upload, context.blobs, record.id):
                await self._give_up(record, "its upload was lost with its runner")
                continue
            logger.warning("job %s: its runner stopped; running it again here", job_id)
            self.start(record)
        return taken

    async def _give_up(self, record: JobRecord, why: str) -> None:
        context = self._context
        error = RunnerLost(f"the job could not be finished: {why}; submit it again")
        finished = await context.records.finish(
            record.id, context.runner_id, failed_changes(error, time.time(), context.config.ttl_s)
        )
        if finished is not None:
            context.publish(finished)
            context.on_state(finished)
            await context.io_call(context.blobs.delete, record.id)


def _has_upload(blobs: BlobStore, job_id: str) -> bool:
    try:
        blobs.size(job_id, UPLOAD)
        return True
    except FileNotFoundError:
        return False
