"""Videos and animated pictures through the model, frame by frame.

    probe -> frames, decoded as a stream -> resized to the job's size -> content digest
          -> the same frame earlier in this job? its picture again
          -> all but the same as the last frame computed for itself (``likeness``:
             codec and sensor noise on a still shot)? that frame's picture
          -> in the result cache (any job, any replica)? that picture
          -> else to the model, ``frame_batch`` frames of one shape a call
          -> the user's controls -> encoded in order, audio packets copied -> the output

Memory is bounded by ``frames_in_flight``: no more frames than that are decoded and not
yet encoded. How many of those batches reach the model at once is the ``ModelGate``'s
call, shared by every job of an ingress replica: all the model's replicas while no photo
is waiting, one call at a time while people are, so a running job leaves the other model
replicas to single photos.

Plain asyncio over a "stylize these frames" callable and the result cache's interface:
it runs in unit tests, the CLI and the ingress alike. Decoding and encoding run in the
job's own thread (``worker.MediaThread``), which opens, uses and closes the reader and
the writer: a cancelled or failed job lets go of them there, after the call in flight,
so the event loop stays free and no other thread ever touches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from serve_app.concurrency import Backoff, run_detached
from serve_app.config import MediaConfig
from serve_app.errors import Overloaded, ReplicaFailed, Unavailable
from serve_app.media import probe
from serve_app.media.ends import (
    Decoded,
    FrameSource,
    MediaOutput,
    Sink,
    Stylized,
    open_sink,
    release,
)
from serve_app.media.gate import ModelGate
from serve_app.media.reader import MediaReader
from serve_app.media.worker import MediaThread
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import StylizeOptions
from serve_app.pipeline.lru import CachedImage
from serve_app.pipeline.ports import ResultStore, many_at_once

logger = logging.getLogger(__name__)

FRAME_MEDIA_TYPE = "application/x-animegan-rgb"
"""How a stylized frame is kept in the result cache: raw (H, W, 3) uint8 bytes."""
FRAME_KEY_VERSION = 1
# A model replica that dies mid-batch is replaced by Serve within seconds: the batch is
# tried again this many times, waiting longer each time (up to the most), before the job
# fails. A full model (503 overloaded) is waited out the same way, without a count.
MODEL_ATTEMPTS = 6
RETRY_FIRST_WAIT_S = 0.5
RETRY_MOST_WAIT_S = 8.0  # the 5th wait: a dead replica gets 15.5 s to be replaced
# Digests of the frames stylized last, with their pictures: a still shot or a repeating
# animation costs one model pass; older repeats are found in the result cache.
RECENT_FRAMES = 64

FrameModel = Callable[[list[np.ndarray], str], Awaitable[list[StylizedArray]]]
"""(frames of one shape, style) -> their stylized twins; raises ReplicaFailed when the
model replica died mid-call."""
Identity = Callable[[str], ModelIdentity]
"""style -> what the model runs for it (part of every frame's cache key)."""


def frame_key(digest: str, style: str, identity: ModelIdentity) -> str:
    """Cache key of the model's picture for one resized frame (before the user's controls,
    so jobs that differ only in them share frames)."""
    parts = {
        "frame": FRAME_KEY_VERSION,
        "image": digest,
        "style": style,
        "weights": identity.weights,
        "runtime": identity.runtime,
    }
    encoded = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=20).hexdigest()


@dataclass
class FrameCounts:
    """A media job's frames: how many in all, written, and where each picture came from."""

    total: int
    done: int = 0
    model: int = 0  # computed by the model
    job: int = 0  # the same frame earlier in this job
    cache: int = 0  # found in the result cache
    similar: int = 0  # all but the same as the last frame computed for itself

    @property
    def progress(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0


@dataclass
class _Pending:
    """A frame between the decoder and the encoder."""

    decoded: Decoded
    picture: asyncio.Future = field(repr=False)  # -> the model's (H, W, 3) uint8


class MediaJob:
    """One video or animation made: decode, dedupe, batch to the model, encode."""

    def __init__(
        self,
        info: probe.MediaInfo,
        options: StylizeOptions,
        config: MediaConfig,
        model: FrameModel,
        cache: ResultStore,
        identity: Identity,
        gate: ModelGate,
        on_progress: Callable[[FrameCounts], None] | None = None,
    ) -> None:
        self._info = info
        self._options = options
        self._config = config
        self._model = model
        self._cache = many_at_once(cache)
        self._identity = identity
        self._gate = gate
        self._on_progress = on_progress
        self.counts = FrameCounts(total=expected_frames(info, options.max_fps))
        self.foreign_frames = 0  # see MediaOutput
        self._recent: OrderedDict[str, asyncio.Future] = OrderedDict()
        # The picture of the last frame the source did not mark ``alike``: the one the
        # frames marked so reuse (the source compared them with that frame).
        self._anchor: asyncio.Future | None = None
        self._waiting: list[tuple[str, _Pending]] = []  # (digest, frame) for the model
        self._calls: set[asyncio.Task] = set()
        self._at_model: set[asyncio.Task] = set()  # calls the model is running now
        self._stopping = False
        self._background: set[asyncio.Task] = set()

    async def run(
        self, source: BinaryIO | Path, dest: Path | None, thread: MediaThread | None = None
    ) -> MediaOutput:
        """``dest``: where a video is written (an animation comes back as bytes).
        ``thread``: the job's thread, when the caller made one (it probed in it);
        otherwise the job makes its own and ends it."""
        if thread is None:
            async with MediaThread() as own:
                return await self._run(source, dest, own)
        return await self._run(source, dest, thread)

    async def _run(
        self, source: BinaryIO | Path, dest: Path | None, thread: MediaThread
    ) -> MediaOutput:
        opened = _Opened()
        try:
            await thread.call(self._open, opened, source, dest)
            await self._pump(opened.source, opened.sink, thread)
            output = await thread.call(opened.sink.finish)
            return replace(output, foreign_frames=self.foreign_frames)
        finally:
            await self._settle_calls()
            # After the call in flight (a cancelled call still waited for it), in the
            # thread that used them.
            await thread.call(release, opened.source, opened.sink, opened.reader)

    async def _settle_calls(self) -> None:
        """Ends this job's model calls: those not sent yet are cancelled; one the model is
        running is waited for, up to ``stop_grace_s``. Cancelling a Serve call stops only the
        wait for it here, not the replica's pass: without the wait, a cancelled job's frames
        would still be computed after its run has ended."""
        self._stopping = True
        for task in self._calls - self._at_model:
            task.cancel()
        deadline = asyncio.get_running_loop().time() + self._config.stop_grace_s
        while self._calls:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:  # a pass that does not end: stop waiting for it
                for task in self._calls:
                    task.cancel()
                left = None
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(set(self._calls), timeout=left)

    def _open(self, opened: _Opened, source: BinaryIO | Path, dest: Path | None) -> None:
        """In the job's thread: the reader, the writer, and the frames' source."""
        opened.reader = MediaReader(source, self._info)
        width, height = self._info.output_size(self._options.size)
        opened.sink = open_sink(opened.reader, dest, width, height, self._options, self._config)
        opened.source = FrameSource(opened.reader, opened.sink, self._options, (width, height))

    async def _pump(self, frames: FrameSource, sink: Sink, thread: MediaThread) -> None:
        window: deque[_Pending] = deque()
        most = self._config.frames_in_flight
        exhausted = False
        while not exhausted or window:
            if not exhausted and len(window) < most:
                pulled, exhausted = await thread.call(frames.pull, most - len(window))
                window.extend(await self._route(pulled))
            if exhausted or len(window) >= most:
                self._dispatch(everything=True)  # nothing more arrives to fill a batch
            ready = _take_ready(window)
            if ready:
                await thread.call(sink.write, ready)
                self.counts.done += len(ready)
                if self._on_progress is not None:
                    self._on_progress(self.counts)
            elif window and (exhausted or len(window) >= most):
                await asyncio.wait([window[0].picture])

    async def _route(self, pulled: list[Decoded]) -> list[_Pending]:
        """Each new frame: a repeat of a recent one, alike the last one computed, a cache
        hit, or work for the model."""
        loop = asyncio.get_running_loop()
        routed: list[_Pending] = []
        lookups: list[tuple[str, str, _Pending]] = []
        for decoded in pulled:
            earlier = self._recent.get(decoded.digest)
            alike = decoded.alike and self._anchor is not None
            if earlier is not None:
                self._recent.move_to_end(decoded.digest)
                pending = _Pending(decoded, _chained(earlier))
                self.counts.job += 1
            elif alike:
                # Not remembered by digest: only pictures computed for their own frame are.
                pending = _Pending(decoded, _chained(self._anchor))
                self.counts.similar += 1
            else:
                pending = _Pending(decoded, loop.create_future())
                self._remember(decoded.digest, pending.picture)
                identity = self._identity(self._options.style)
                key = frame_key(decoded.digest, self._options.style, identity)
                lookups.append((decoded.digest, key, pending))
            if not alike:
                self._anchor = pending.picture
            routed.append(pending)
        found = await self._cache.get_many([key for _, key, _ in lookups]) if lookups else []
        for (digest, _, pending), cached in zip(lookups, found, strict=True):
            picture = _cached_frame(cached, pending.decoded.photo.shape)
            if picture is not None:
                pending.picture.set_result(picture)
                self.counts.cache += 1
            else:
                self._waiting.append((digest, pending))
        self._dispatch(everything=False)
        return routed

    def _remember(self, digest: str, picture: asyncio.Future) -> None:
        self._recent[digest] = picture
        while len(self._recent) > RECENT_FRAMES:
            self._recent.popitem(last=False)

    def _dispatch(self, everything: bool) -> None:
        """Send full batches to the model; with ``everything``, the last partial one too."""
        size = self._config.frame_batch
        while len(self._waiting) >= size or (everything and self._waiting):
            batch, self._waiting = self._waiting[:size], self._waiting[size:]
            task = asyncio.ensure_future(self._stylize(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _stylize(self, batch: list[tuple[str, _Pending]]) -> None:
        try:
            results = await self._call_model([p.decoded.photo for _, p in batch])
        except asyncio.CancelledError:
            for _, pending in batch:
                pending.picture.cancel()
            raise
        except Exception as error:
            for _, pending in batch:
                if not pending.picture.done():
                    pending.picture.set_exception(error)
                    pending.picture.exception()  # the job raises it once; no "never retrieved"
            return
        self.counts.model += len(batch)
        configured = self._identity(self._options.style).weights
        self.foreign_frames += sum(result.identity.weights != configured for result in results)
        for (_, pending), result in zip(batch, results, strict=True):
            pending.picture.set_result(result.rgb)
        self._keep([(digest, result) for (digest, _), result in zip(batch, results, strict=True)])

    async def _call_model(self, frames: list[np.ndarray]) -> list[StylizedArray]:
        """A replica that died is tried again up to ``MODEL_ATTEMPTS`` times; a model
        whose queues are full (``Overloaded``: photos and other jobs first) is waited
        out for as long as the job's own deadline lets it. Each try takes a place at the
        gate; the waits between tries leave it to the other jobs."""
        backoff, failures = Backoff(RETRY_FIRST_WAIT_S, RETRY_MOST_WAIT_S), 0
        while True:
            try:
                async with self._gate.slot():
                    return await self._at_the_model(frames)
            except ReplicaFailed as error:
                failures += 1
                if failures == MODEL_ATTEMPTS or self._stopping:
                    raise Unavailable("the model replicas kept failing; retry the job") from error
                logger.warning(
                    "model replica failed (%s); batch retried in %.1f s", error, backoff.next_s
                )
            except Overloaded:
                if self._stopping:
                    raise
                logger.info("the model is at capacity; batch retried in %.1f s", backoff.next_s)
            await backoff.wait()

    async def _at_the_model(self, frames: list[np.ndarray]) -> list[StylizedArray]:
        """One call, marked as running at the model while it does (see ``_settle_calls``)."""
        task = asyncio.current_task()
        self._at_model.add(task)
        try:
            return await self._model(frames, self._options.style)
        finally:
            self._at_model.discard(task)

    def _keep(self, made: list[tuple[str, StylizedArray]]) -> None:
        """A batch's frames into the shared cache (one call), each under the key of what
        computed it."""
        items = []
        for digest, result in made:
            rgb = np.ascontiguousarray(result.rgb)
            value = CachedImage(rgb.tobytes(), FRAME_MEDIA_TYPE, rgb.shape[1], rgb.shape[0])
            items.append((frame_key(digest, self._options.style, result.identity), value))
        task = run_detached(self._cache.put_many(items))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def expected_frames(info: probe.MediaInfo, max_fps: float | None) -> int:
    """Frames the output will have (an estimate when ``max_fps`` drops some)."""
    if max_fps is None or info.kind != "video" or info.fps <= max_fps:
        return info.frames
    return max(1, min(info.frames, round(info.duration_s * max_fps)))


def _take_ready(window: deque[_Pending]) -> list[Stylized]:
    """The frames at the front whose pictures are there, with them (a failed one raises)."""
    ready = []
    while window and window[0].picture.done():
        pending = window.popleft()
        # The model's error, if any, fails the job here.
        ready.append((pending.decoded, pending.picture.result()))
    return ready


def _chained(earlier: asyncio.Future) -> asyncio.Future:
    """A future of the same picture as ``earlier`` (done now, or when it is)."""
    if earlier.done():
        return earlier
    follower = asyncio.get_running_loop().create_future()

    def copy(done: asyncio.Future) -> None:
        if follower.done():
            return
        if done.cancelled():
            follower.cancel()
        elif done.exception() is not None:
            follower.set_exception(done.exception())
        else:
            follower.set_result(done.result())

    earlier.add_done_callback(copy)
    return follower


def _cached_frame(cached: CachedImage | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if cached is None or cached.media_type != FRAME_MEDIA_TYPE:
        return None
    if (cached.height, cached.width, 3) != tuple(shape):
        return None
    return np.frombuffer(cached.data, np.uint8).reshape(shape)


@dataclass
class _Opened:
    """What a job opened in its thread, as far as it got (released in that thread)."""

    reader: MediaReader | None = None
    sink: Sink | None = None
    source: FrameSource | None = None


def sync_animation_budget_error(info: probe.MediaInfo, size: int, budget: int) -> str | None:
    """Why an animation is too much to make while the caller waits (None: it is not)."""
    width, height = info.output_size(size)
    pixels = info.frames * width * height
    if pixels <= budget:
        return None
    return (
        f"an animation of {info.frames} frames at {width}x{height} is {pixels} output pixels, "
        f"above the {budget} made while the caller waits; submit it to POST /v1/jobs"
    )
