"""Videos and animated pictures as the API takes them: recognised, checked, then made.

The routes and the job service are thin over this; the frames' path itself is
``media_jobs.MediaJob``. No Ray here: the model is a "stylize these frames" callable.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from serve_app.config import AppConfig
from serve_app.errors import InvalidVideoOptions, Timeout, UnsupportedCodec, UseJobs
from serve_app.imaging import pixels
from serve_app.media import probe, writers
from serve_app.media.frames import (
    FrameCounts,
    FrameModel,
    Identity,
    MediaJob,
    MediaOutput,
    sync_animation_budget_error,
)
from serve_app.media.gate import ModelGate
from serve_app.options import StylizeOptions
from serve_app.pipeline.ports import ResultStore

logger = logging.getLogger(__name__)

# Enough of an upload to tell a video container by its signature (MPEG-TS: 3 packets).
SNIFF_BYTES = 512
# A video being written lives in the temporary directory under this prefix until the job
# service stores it.
OUTPUT_PREFIX = "animegan-video-"


def remove_abandoned_outputs(max_age_s: float, directory: Path | None = None) -> int:
    """Delete the videos left half-written by a process killed mid-job: no job outlives its
    deadline, so an output older than that has no writer any more. Returns how many."""
    directory = Path(directory or tempfile.gettempdir())
    cutoff = time.time() - max_age_s
    removed = 0
    for path in directory.glob(f"{OUTPUT_PREFIX}*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:  # another replica removed it first, or it is not ours to remove
            continue
    if removed:
        logger.info("removed %d abandoned video output(s) from %s", removed, directory)
    return removed


class MediaService:
    def __init__(
        self, config: AppConfig, cache: ResultStore, model: FrameModel, identity: Identity
    ) -> None:
        self._config = config
        self._cache = cache
        self._model = model
        self._identity = identity
        media_config = config.media
        self.gate = ModelGate(
            media_config.model_calls,
            media_config.model_calls_busy,
            media_config.interactive_quiet_s,
        )
        # An animation made while its caller waits is interactive work: it never steps back.
        calls = media_config.model_calls
        self._waiting_gate = ModelGate(calls, calls, media_config.interactive_quiet_s)
        remove_abandoned_outputs(config.jobs.timeout_s)

    async def inspect(self, data: bytes) -> probe.MediaInfo | None:
        """What the upload is, when it is a video or an animation (None: a still picture).
        Raises the media errors (415, 413, 400) for what cannot be made."""
        foreign = probe.sniff_foreign_video(data[:SNIFF_BYTES])
        if foreign is not None:
            raise UnsupportedCodec(
                f"{foreign} files are not taken; send MP4, MOV, MKV or WebM (H.264, HEVC, "
                "VP8, VP9 or AV1 video)"
            )
        if probe.sniff_video(data[:SNIFF_BYTES]):
            return await asyncio.to_thread(probe.probe, io.BytesIO(data), self._config.media)
        if not await asyncio.to_thread(probe.is_animated_picture, data):
            return None
        return await asyncio.to_thread(probe.probe, io.BytesIO(data), self._config.media)

    def check(self, info: probe.MediaInfo, options: StylizeOptions) -> None:
        """Refuse, before anything runs, options this upload cannot be made with."""
        width, height = pixels.target_dimensions(info.width, info.height, options.size)
        if info.kind == "video":
            largest = self._config.tiling.max_whole_pixels
            if width * height > largest:
                raise InvalidVideoOptions(
                    f"video frames of {width}x{height} are above the {largest} pixels a frame "
                    "is made at; ask for a smaller size"
                )
            writers.output_container(
                info, options.container
            )  # raises when it cannot hold the audio

    async def run_job(
        self, options: StylizeOptions, data: bytes, on_progress: Callable[[FrameCounts], None]
    ) -> MediaOutput:
        """A video or animation job's output (a video in a temporary file the caller owns)."""
        info = await asyncio.to_thread(probe.probe, io.BytesIO(data), self._config.media)
        job = self._job(info, options, on_progress, self.gate)
        if info.kind != "video":
            return await job.run(io.BytesIO(data), None)
        extension = writers.output_container(info, options.container)[2]
        with tempfile.NamedTemporaryFile(
            prefix=OUTPUT_PREFIX, suffix=f".{extension}", delete=False
        ) as file:
            dest = Path(file.name)
        try:
            return await job.run(io.BytesIO(data), dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    async def animate(self, data: bytes, info: probe.MediaInfo, options: StylizeOptions):
        """An animation made while the caller waits: within the synchronous budget only."""
        if info.kind == "video":
            raise UseJobs("videos are made as jobs: submit it to POST /v1/jobs")
        reason = sync_animation_budget_error(info, options.size, self._config.media.max_sync_pixels)
        if reason is not None:
            raise UseJobs(reason)
        started = time.monotonic()
        timeout_s = self._config.request_timeout_s
        job = self._job(info, options, None, self._waiting_gate)
        try:
            output = await asyncio.wait_for(job.run(io.BytesIO(data), None), timeout_s)
        except asyncio.TimeoutError:
            raise Timeout(f"not ready within {timeout_s:g} s") from None
        logger.info(
            "animation of %d frames in %.2f s (%d computed, %d repeated, %d cached)",
            output.frames,
            time.monotonic() - started,
            job.counts.model,
            job.counts.job,
            job.counts.cache,
        )
        return output

    def _job(self, info, options, on_progress, gate: ModelGate) -> MediaJob:
        return MediaJob(
            info,
            options,
            self._config.media,
            self._model,
            self._cache,
            self._identity,
            gate,
            on_progress,
        )
