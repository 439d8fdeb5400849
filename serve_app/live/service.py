"""Live streams on one ingress replica: who may open one, with which options, and one
frame's way through the model.

A frame is decoded, resized, stylized and encoded as a photo is, in the frame's own
format (JPEG or WebP), but never cached or coalesced: no two frames of a camera are the
same. Frames of every stream go to the model deployment as single calls, which its
dynamic batching groups by style and shape, beside single photos; each frame tells the
job gate that interactive work is asking, so jobs step back while streams run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

from serve_app.concurrency import MemoryBudget, in_thread, run_in_to_completion
from serve_app.config import AppConfig
from serve_app.errors import (
    InvalidParameters,
    InvalidSize,
    LiveFull,
    ReplicaFailed,
    ServiceError,
    StoreError,
    TooManyStreams,
    Unavailable,
    UnsupportedFormat,
)
from serve_app.imaging import decode
from serve_app.live.stream import (
    LIVE_OPTIONS,
    FrameAnswer,
    LiveStream,
    LiveTransport,
    StreamMetrics,
)
from serve_app.options import StylizeOptions, resolve_options
from serve_app.pipeline.ports import StylizeArray
from serve_app.pipeline.stylize import finish

logger = logging.getLogger(__name__)

# A stream's place among its API key's, in the shared store: held this long and renewed
# every third of it, so a replica that dies frees its streams' places within it.
PLACE_LEASE_S = 30.0


async def _renew(places: Places, group: str, holder: str) -> None:
    """Keep a stream's place until cancelled (the stream ended)."""
    while True:
        await asyncio.sleep(PLACE_LEASE_S / 3)
        try:
            await places.renew_place(group, holder, time.time() + PLACE_LEASE_S)
        except StoreError as error:  # tried again at the next turn, before the lease ends
            logger.warning("live: renewing a stream's place failed: %s", error)


class Places(Protocol):
    """Bounded places shared by every ingress replica (the job record store: a node's
    SQLite, or a cluster's Redis)."""

    async def hold_place(self, group: str, holder: str, bound: int, until: float) -> bool: ...

    async def renew_place(self, group: str, holder: str, until: float) -> None: ...

    async def release_place(self, group: str, holder: str) -> None: ...


def frame_format(data: bytes) -> str:
    """A frame's format from its first bytes: ``jpeg`` or ``webp``; 415 for anything else
    (the answer comes back in the same format)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise UnsupportedFormat("a live frame is a JPEG or WebP picture")


class LiveMetrics(StreamMetrics, Protocol):
    """Where live streams are counted (Ray's metrics in a replica)."""

    def streams(self, open_streams: int) -> None:
        """How many streams are open on this replica now."""


class _Uncounted:
    """No metrics (unit tests, the CLI)."""

    def streams(self, open_streams: int) -> None:
        pass

    def frame(self, outcome: str) -> None:
        pass

    def latency(self, ms: float) -> None:
        pass


class LiveService:
    """The live streams of one ingress replica."""

    def __init__(
        self,
        config: AppConfig,
        stylize_array: StylizeArray,
        *,
        executor: Executor | None = None,
        decode_memory: MemoryBudget | None = None,
        on_frame: Callable[[], None] = lambda: None,
        metrics: LiveMetrics | None = None,
        places: Places | None = None,
    ) -> None:
        """``stylize_array``: one array through the model. ``decode_memory``: the budget
        photos decode within (shared with them). ``on_frame``: told before each frame's
        model pass (jobs step back). ``places``: where an API key's streams are counted
        across ingress replicas (None: on this replica only)."""
        self._config = config
        self._live = config.live
        self._stylize_array = stylize_array
        self._executor = executor
        self._decode_memory = decode_memory or MemoryBudget(config.decode_memory_bytes)
        self._on_frame = on_frame
        self._metrics: LiveMetrics = metrics or _Uncounted()
        self._places = places
        self._releasing: set[asyncio.Future] = set()
        self._by_owner: Counter[str] = Counter()
        self.open_streams = 0
        # Places at the model, taken in turn by the streams' frames (a waiter queue: no
        # stream passes another twice).
        frames = self._live.frames_at_model
        self._at_model = asyncio.Semaphore(frames) if frames else None

    # --- opening a stream --------------------------------------------------------------

    def options(self, values: Mapping[str, Any]) -> StylizeOptions:
        """A stream's options from its query parameters (or a control message): the live
        ones only (422 ``invalid_parameters`` for any other), ``size`` by default
        ``live_default_size`` and at most ``largest_live_size``."""
        unknown = sorted(set(values) - set(LIVE_OPTIONS))
        if unknown:
            raise InvalidParameters(
                f"unknown live option(s) {unknown}; a live stream takes {list(LIVE_OPTIONS)}"
            )
        given = {name: values.get(name) for name in LIVE_OPTIONS}
        if given["size"] in (None, ""):
            given["size"] = self._config.live_default_size
        # Past the synchronous bound is past the live one too: its error, not "use jobs".
        options = resolve_options(self._config, given, synchronous=False, format="jpeg")
        largest = self._config.largest_live_size
        if options.size > largest:
            raise InvalidSize(f"size {options.size} is over the live streams' largest, {largest}")
        return options

    def change_options(self, current: StylizeOptions, changes: Mapping[str, Any]) -> StylizeOptions:
        """The options after a control message: ``changes`` over ``current`` (checked as
        at the start)."""
        return self.options({name: getattr(current, name) for name in LIVE_OPTIONS} | changes)

    @contextlib.asynccontextmanager
    async def admit(self, owner: str | None) -> AsyncIterator[None]:
        """A place for one stream while the block runs; ``owner``: the API key's digest
        (None on an open service, which bounds streams per replica only). A key's places
        are counted on every ingress replica that shares the store of ``places``."""
        if self.open_streams >= self._live.max_streams:
            raise LiveFull(
                f"this replica holds its {self._live.max_streams} live streams; retry shortly"
            )
        bound = self._live.max_streams_per_key
        if owner is not None and self._by_owner[owner] >= bound:
            raise TooManyStreams(f"this API key holds {bound} live streams already")
        self.open_streams += 1
        if owner is not None:
            self._by_owner[owner] += 1
        self._metrics.streams(self.open_streams)
        try:
            async with self._shared_place(owner):
                yield
        finally:
            self.open_streams -= 1
            if owner is not None:
                self._by_owner[owner] -= 1
                if not self._by_owner[owner]:
                    del self._by_owner[owner]
            self._metrics.streams(self.open_streams)

    @contextlib.asynccontextmanager
    async def _shared_place(self, owner: str | None) -> AsyncIterator[None]:
        """The stream's place among its key's in the shared store, renewed while the
        block runs. While the store cannot be reached, streams are admitted by this
        replica's count alone (live does not fail with the job store)."""
        if owner is None or self._places is None:
            yield
            return
        places, group, holder = self._places, f"live:{owner}", uuid.uuid4().hex
        bound = self._live.max_streams_per_key
        hold = asyncio.ensure_future(
            places.hold_place(group, holder, bound, time.time() + PLACE_LEASE_S)
        )
        try:
            held = await asyncio.shield(hold)
        except StoreError as error:
            logger.warning("live: %s; admitting by this replica's count of the key", error)
            held = None
        except asyncio.CancelledError:
            # The client left during the hold, which goes on (its command or thread is
            # under way): the place it takes is given back once it has it.
            hold.add_done_callback(lambda _: self._give_back_if_held(hold, group, holder))
            raise
        if held is False:
            raise TooManyStreams(
                f"this API key holds {bound} live streams already (on this service's replicas)"
            )
        renewal = asyncio.ensure_future(_renew(places, group, holder)) if held else None
        try:
            yield
        finally:
            if renewal is not None:
                renewal.cancel()
                self._give_back(group, holder)

    def _give_back(self, group: str, holder: str) -> None:
        """Release a stream's place, detached: a stream often ends by its client's
        hang-up, which cancels the stream's task; the place is given back all the same."""
        release = asyncio.ensure_future(self._places.release_place(group, holder))
        self._releasing.add(release)
        release.add_done_callback(self._released)

    def _give_back_if_held(self, hold: asyncio.Future, group: str, holder: str) -> None:
        if not hold.cancelled() and hold.exception() is None and hold.result():
            self._give_back(group, holder)

    def _released(self, release: asyncio.Future) -> None:
        self._releasing.discard(release)
        if not release.cancelled() and release.exception() is not None:
            logger.warning(
                "live: a stream's place was not given back (it lapses): %s", release.exception()
            )

    async def run(self, transport: LiveTransport, options: StylizeOptions) -> ServiceError | None:
        """One stream, until its client leaves (None) or it must end (why)."""
        stream = LiveStream(
            transport,
            options,
            self._live,
            self.stylize_frame,
            self.change_options,
            self._metrics,
            self._at_model_slot,
        )
        ended = await stream.run()
        logger.info(
            "live stream ended (%s): %d frames received, %d processed, %d skipped, %d failed",
            "client left" if ended is None else ended.code,
            stream.received,
            stream.processed,
            stream.skipped,
            stream.failed,
        )
        return ended

    @contextlib.asynccontextmanager
    async def _at_model_slot(self) -> AsyncIterator[None]:
        if self._at_model is None:
            yield
            return
        async with self._at_model:
            yield

    # --- one frame ---------------------------------------------------------------------

    async def stylize_frame(self, data: bytes, options: StylizeOptions) -> FrameAnswer:
        """A frame's bytes -> the stylized frame in its format; raises ServiceError for a
        frame that cannot be (the same checks and limits as a photo's)."""
        options = options.model_copy(update={"format": frame_format(data)})
        started = time.perf_counter()
        pixels = decode.header_pixels(data)
        async with self._decode_memory.reserve(decode.decode_peak_bytes(pixels)):
            decoded = await run_in_to_completion(  # the budget held as long as the decode
                self._executor, decode.decode_resized, data, self._config.limits, options.size
            )
        decoded_at = time.perf_counter()
        self._on_frame()
        stylized = await self._stylize_with_retry(decoded.rgb, options.style)
        encode_from = time.perf_counter()
        encoded = await in_thread(self._executor, finish, decoded, stylized.rgb, options)
        height, width = stylized.rgb.shape[:2]
        return FrameAnswer(
            encoded,
            width,
            height,
            {
                "decode": (decoded_at - started) * 1e3,
                "queue": stylized.queue_ms,
                "inference": stylized.inference_ms,
                "encode": (time.perf_counter() - encode_from) * 1e3,
            },
        )

    async def _stylize_with_retry(self, rgb, style: str):
        """A model replica that dies mid-frame is retried once on another: the stream loses
        no frame to it unless the second fails too."""
        try:
            return await self._stylize_array(rgb, style)
        except ReplicaFailed as error:
            logger.warning("model replica failed during a live frame (%s); retrying once", error)
        try:
            return await self._stylize_array(rgb, style)
        except ReplicaFailed as error:
            raise Unavailable("the model replica failed; the next frame goes to another") from error
