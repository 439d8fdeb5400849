"""Videos and animated pictures as the API takes them: recognised, checked, then made.

The routes and the job service are thin over this; the frames' path itself is
``frames.MediaJob``. No Ray here: the model is a "stylize these frames" callable.
Whatever the decoders make of an upload comes out as the media errors (415, 413, 400;
``boundary``), never as a raw exception.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from serve_app.concurrency import in_thread
from serve_app.config import MIN_SIDE, AppConfig
from serve_app.errors import (
    InvalidVideoOptions,
    MediaTooLarge,
    ServiceError,
    Timeout,
    UnsupportedCodec,
    UseJobs,
)
from serve_app.media import probe, writers
from serve_app.media.boundary import NOT_MEDIA
from serve_app.media.frames import (
    FrameCounts,
    FrameModel,
    Identity,
    MediaJob,
    MediaOutput,
    sync_animation_budget_error,
)
from serve_app.media.gate import ModelGate
from serve_app.media.worker import MediaThread
from serve_app.options import StylizeOptions
from serve_app.pipeline.lru import CachedImage
from serve_app.pipeline.ports import Animation, ResultStore

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
        self,
        config: AppConfig,
        cache: ResultStore,
        model: FrameModel,
        identity: Identity,
        executor: Executor | None = None,
    ) -> None:
        """``executor``: the threads that probe uploads (default: the loop's); each job's
        own decoding and encoding run in that job's thread."""
        self._config = config
        self._executor = executor
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
        """What the upload is, when it is a video or an animation (None: a still picture,
        an APNG whose animation is broken but whose default image is fine included).
        Raises the media errors (415, 413, 400) for what cannot be made."""
        foreign = probe.sniff_foreign_video(data[:SNIFF_BYTES])
        if foreign is not None:
            raise UnsupportedCodec(
                f"{foreign} files are not taken; send MP4, MOV, MKV or WebM (H.264, HEVC, "
                "VP8, VP9 or AV1 video)"
            )
        video = probe.sniff_video(data[:SNIFF_BYTES])
        if not video and not await in_thread(self._executor, probe.is_animated_picture, data):
            return None
        info = await in_thread(self._executor, probe.probe, io.BytesIO(data), self._config.media)
        return None if info.kind == "still" else info

    def check(self, info: probe.MediaInfo, options: StylizeOptions) -> None:
        """Refuse, before anything runs, options this upload cannot be made with."""
        if options.portrait != "off":  # no frame of a video or animation is searched
            raise InvalidVideoOptions(
                f"portrait mode takes still pictures; this upload is a {info.kind}: send it "
                "with portrait=off, or one frame as a picture"
            )
        width, height = info.output_size(options.size)
        largest = self._config.tiling.max_whole_pixels
        if width * height > largest:  # frames go to the model whole, never tiled
            raise InvalidVideoOptions(
                f"{info.kind} frames of {width}x{height} are above the {largest} pixels a "
                "frame is made at; ask for a smaller size"
            )
        if info.kind == "video":
            writers.output_container(
                info, options.container
            )  # raises when it cannot hold the audio
        else:
            self._check_animation_pixels(info, options.size, width, height)

    def _check_animation_pixels(
        self, info: probe.MediaInfo, size: int, width: int, height: int
    ) -> None:
        """An animation's writer holds every output frame: frames × output pixels bounded."""
        limit = self._config.media.max_animation_pixels
        total = info.frames * width * height
        if total <= limit:
            return
        fits = _largest_size_within(info, size, limit)
        advice = f"ask for size={fits} or less" if fits else "send fewer or smaller frames"
        raise MediaTooLarge(
            f"an animation of {info.frames} frames at {width}x{height} is {total} output "
            f"pixels, over the limit of {limit} (frames × width × height); {advice}"
        )

    async def run_job(
        self,
        options: StylizeOptions,
        source: Path,
        on_progress: Callable[[FrameCounts], None],
    ) -> MediaOutput:
        """A video or animation job's output, from the upload in ``source`` (a file the
        caller owns and keeps until this returns; a video's output is a temporary file the
        caller then owns). Probing, decoding, encoding and closing all run in the job's
        own thread; cancelled, this returns only once that thread has let go of the files.
        """
        dest: Path | None = None
        try:
            async with MediaThread() as thread:
                info = await thread.call(probe.probe, source, self._config.media)
                if info.kind == "still":
                    raise UnsupportedCodec(NOT_MEDIA)
                self.check(info, options)
                job = self._job(info, options, on_progress, self.gate)
                if info.kind != "video":
                    return await job.run(source, None, thread)
                extension = writers.output_container(info, options.container)[2]
                with tempfile.NamedTemporaryFile(
                    prefix=OUTPUT_PREFIX, suffix=f".{extension}", delete=False
                ) as file:
                    dest = Path(file.name)
                return await job.run(source, dest, thread)
        except BaseException:
            # Never handed over, whenever it failed or was cancelled: the thread's end too
            # (the writer was closed in it, before this).
            if dest is not None:
                dest.unlink(missing_ok=True)
            raise

    async def animation(self, data: bytes, options: StylizeOptions) -> Animation | None:
        """A synchronous request's upload made while the caller waits, when it is an
        animation (None: a still picture, for the picture's own path)."""
        info = await self.inspect(data)
        if info is None:
            return None
        output = await self.animate(data, info, options)
        image = CachedImage(output.data, output.media_type, output.width, output.height)
        return Animation(image, output.foreign_frames)

    async def animate(self, data: bytes, info: probe.MediaInfo, options: StylizeOptions):
        """An animation made while the caller waits: within the synchronous budget only."""
        if info.kind == "video":
            raise UseJobs("videos are made as jobs: submit it to POST /v1/jobs")
        self.check(info, options)
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
            "animation of %d frames in %.2f s (%d computed, %d repeated, %d cached, %d alike)",
            output.frames,
            time.monotonic() - started,
            job.counts.model,
            job.counts.job,
            job.counts.cache,
            job.counts.similar,
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


def _largest_size_within(info: probe.MediaInfo, size: int, limit: int) -> int | None:
    """The largest size below ``size`` whose output stays within ``limit`` pixels."""
    low, high, best = MIN_SIDE, size - 1, None
    while low <= high:
        middle = (low + high) // 2
        try:
            width, height = info.output_size(middle)
        except ServiceError:  # the shorter side under the minimum: larger sizes only
            low = middle + 1
            continue
        if info.frames * width * height <= limit:
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best
