"""The request pipeline: upload bytes -> cache key -> cached or computed picture.

    bytes -> digest -> key -> cache hit? -> same key in flight? join it
          -> (one shared task) decode + resize -> model -> encode -> cache -> waiters

Plain asyncio: the cache client and the "stylize one array" callable are passed in, so
the whole path runs in unit tests without Ray. The ingress deployment is thin routes
over it.

Shared work (one task per key, however many requests wait for it) belongs to no single
request: it runs in an empty context, so the serving framework's per-request
cancellation (a client that hangs up) reaches only that request's wait, never the work
others are waiting for. Each waiter keeps its own deadline; work nobody waits for any
more is cancelled and frees its slot.

Longer than most modules, on purpose: the one code path of a picture (plain and portrait)
and the shared work it coalesces on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from serve_app.concurrency import (
    MemoryBudget,
    in_thread,
    run_detached,
    run_in_to_completion,
    trim_heap,
)
from serve_app.config import AppConfig
from serve_app.errors import (
    EmptyUpload,
    NoFace,
    Overloaded,
    ReplicaFailed,
    ServiceError,
    Timeout,
    TooManyPictures,
    Unavailable,
)
from serve_app.imaging import decode
from serve_app.imaging import portrait as geometry
from serve_app.imaging.faces import detect_faces, search_version
from serve_app.imaging.pixels import MEDIA_TYPES, DecodedImage, apply_controls, encode_image
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.model.weights import is_random_digest
from serve_app.options import BACKGROUND_PHOTO, StylizeOptions
from serve_app.pipeline.keys import result_key
from serve_app.pipeline.lru import CachedImage, image_digest
from serve_app.pipeline.ports import Animate, MayMove, ProgressSink, ResultStore, StylizeArray
from serve_app.pipeline.results import CacheStatus, StylizeResult

logger = logging.getLogger(__name__)

# Hashing a large upload takes tens of ms: do it in a thread so hits and health checks
# on the same event loop are not held up; small ones are cheaper than the thread hop.
HASH_IN_THREAD_BYTES = 256 * 1024


# After decoding a picture this large, hand the freed memory back to the OS: glibc keeps
# freed blocks in per-thread arenas, and a few full-size decodes in different worker
# threads otherwise leave the ingress hundreds of MiB larger for good.
TRIM_AFTER_PIXELS = 16_000_000
# A computation's progress at the end of each stage, for those who follow it (jobs): the
# model's pass is most of the time.
PROGRESS_DECODED, PROGRESS_STYLIZED = 0.05, 0.9
# Portrait mode cuts faces from the full-resolution picture, so its decode also holds the
# full-size picture converted (Pillow keeps RGB as 4 bytes a pixel) and as an array (3),
# on top of what decode_peak_bytes bounds for a resized decode.
PORTRAIT_DECODE_BYTES_PER_PIXEL = 8


@dataclass
class _SharedWork:
    """One computation, the requests waiting for it, and how far it is (0..1)."""

    task: asyncio.Task | None = None
    waiters: int = 0
    progress: float = 0.0


@dataclass
class _Portrait:
    """A picture made ready for portrait mode (in a worker thread, from the full decode)."""

    prepared: geometry.Prepared
    detect_ms: float


@dataclass
class _Computed:
    image: CachedImage
    key: str  # the key it was stored under (the ETag)
    timings_ms: dict[str, float] = field(default_factory=dict)
    configured_weights: bool = True  # see StylizeResult


class StylizePipeline:
    """Bytes of a picture -> the stylized picture, with caching, coalescing and limits."""

    def __init__(
        self,
        config: AppConfig,
        cache: ResultStore,
        stylize_array: StylizeArray,
        weights: dict[str, str],
        animate: Animate | None = None,
        executor: Executor | None = None,
        may_move: MayMove | None = None,
    ) -> None:
        """``weights``: style -> the digest of the weights the config asks for.
        ``animate``: makes animated pictures (without it, an animation's first frame).
        ``executor``: the threads that decode and encode (default: the loop's).
        ``may_move``: whether an upload may be a video or an animation, by its
        signature (without it, any upload may, once ``animate`` is given); a still
        picture's key leaves out the options only motion reads."""
        self._config = config
        self._portrait_settings = config.portrait.model_dump(mode="json")  # part of keys
        self._executor = executor
        self._cache = cache
        self._stylize_array = stylize_array
        self._animate = animate
        self._may_move = may_move
        self._weights = weights
        # The runtime the model replicas report per style (device, precision, versions):
        # lookups use it, so results computed elsewhere on another runtime never match.
        self._runtimes: dict[str, str] = {}
        self._in_flight: dict[str, _SharedWork] = {}
        # Misses in progress by the owner (API key) that started them.
        self._started_by: Counter[str] = Counter()
        self.decode_memory = MemoryBudget(config.decode_memory_bytes)
        self._background: set[asyncio.Task] = set()
        self.requests: Counter[CacheStatus] = Counter()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def learn(self, style: str, identity: ModelIdentity) -> bool:
        """Record what a model replica runs for ``style`` if it runs the configured weights
        (False: it does not, e.g. a replica of the deploy before, still stopping)."""
        if identity.weights != self._weights.get(style):
            return False
        self._runtimes[style] = identity.runtime
        return True

    def runs_random_weights(self, style: str) -> bool:
        return is_random_digest(self._weights[style])

    def expected_identity(self, style: str) -> ModelIdentity:
        return ModelIdentity(self._weights[style], self._runtimes.get(style, "unknown"))

    # --- the one code path -------------------------------------------------------------

    async def key_of(self, data: bytes, options: StylizeOptions, media: bool = False) -> str:
        """The key the picture for these bytes and options is cached under. ``media``: a
        video or animation, whose size was checked against the media limits instead."""
        return (await self._digest_and_key(data, options, media))[1]

    def progress(self, key: str) -> float | None:
        """How far the work for ``key`` is (0..1); None when none is in flight here."""
        work = self._in_flight.get(key)
        return None if work is None else work.progress

    async def _digest_and_key(
        self, data: bytes, options: StylizeOptions, media: bool = False
    ) -> tuple[str, str]:
        if not data:
            raise EmptyUpload("the uploaded picture is empty")
        if not media:
            decode.check_upload_size(data, self._config.limits)  # before hashing it
        digest = await self._digest(data)
        key = self._key(
            digest,
            data,
            options,
            self.expected_identity(options.style),
            self._expected_background(options),
        )
        return digest, key

    async def stylize(
        self,
        data: bytes,
        options: StylizeOptions,
        timeout_s: float | None = None,
        owner: str | None = None,
    ) -> StylizeResult:
        """``timeout_s``: the caller's deadline (default ``request_timeout_s``).
        ``owner``: the caller's API key's owner, whose misses in progress are bounded by
        ``max_in_flight_per_key`` (None: no key, no bound of its own)."""
        timeout_s = timeout_s or self._config.request_timeout_s
        deadline = time.monotonic() + timeout_s
        digest, key = await self._digest_and_key(data, options)
        cached = await self._cache.get(key)
        if cached is not None:
            return self._result(_Computed(cached, key), options, "hit")
        work = self._in_flight.get(key)
        status: CacheStatus = "coalesced"
        if work is None:
            self._admit(owner)
            work = _SharedWork()
            work.task = run_detached(self._compute(digest, data, options, work))
            self._in_flight[key] = work
            work.task.add_done_callback(lambda _: self._forget(key, work))
            if owner is not None:
                self._started_by[owner] += 1
                work.task.add_done_callback(lambda _: self._release(owner))
            status = "miss"
        computed = await self._wait(key, work, deadline, timeout_s)
        return self._result(computed, options, status)

    async def stylize_many(
        self, files: Sequence[bytes], options: StylizeOptions, owner: str | None = None
    ) -> list[StylizeResult | BaseException]:
        """Several pictures at once; each succeeds or fails alone."""
        return await asyncio.gather(
            *(self.stylize(data, options, owner=owner) for data in files), return_exceptions=True
        )

    async def warm(self, photos: Sequence[bytes], options: Sequence[StylizeOptions]) -> int:
        """Compute (or find) each photo for each option set, so no visitor waits for them."""
        done = 0
        for data in photos:
            for option in options:
                try:
                    await self.stylize(data, option)
                    done += 1
                except ServiceError as error:
                    logger.warning("warm cache: %s for style %s", error.message, option.style)
        logger.info("warm cache: %d results ready", done)
        return done

    # --- shared work -------------------------------------------------------------------

    async def _wait(
        self, key: str, work: _SharedWork, deadline: float, timeout_s: float
    ) -> _Computed:
        """Wait for shared work until this caller's own deadline; the last to leave
        cancels it."""
        work.waiters += 1
        try:
            remaining = max(deadline - time.monotonic(), 0.0)
            return await asyncio.wait_for(asyncio.shield(work.task), remaining)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise Timeout(f"not ready within {timeout_s:g} s") from None
        finally:
            work.waiters -= 1
            if work.waiters == 0 and not work.task.done():
                work.task.cancel()
                self._forget(key, work)

    def _forget(self, key: str, work: _SharedWork) -> None:
        if self._in_flight.get(key) is work:
            del self._in_flight[key]

    def _admit(self, owner: str | None) -> None:
        """Room for one more miss, for ``owner``: its own bound first, so a key that fills
        it is told so (429), then the replica's (503)."""
        per_key = self._config.max_in_flight_per_key
        if owner is not None and self._started_by[owner] >= per_key:
            raise TooManyPictures(
                f"this API key has {per_key} pictures in progress on this replica "
                "(max_in_flight_per_key); retry shortly"
            )
        if len(self._in_flight) >= self._config.max_in_flight:
            raise Overloaded("too many pictures in progress; retry shortly")

    def _release(self, owner: str) -> None:
        self._started_by[owner] -= 1
        if self._started_by[owner] <= 0:
            del self._started_by[owner]

    def _key(
        self,
        digest: str,
        data: bytes,
        options: StylizeOptions,
        identity: ModelIdentity,
        background: ModelIdentity | None = None,
    ) -> str:
        """``result_key``, with a still picture's options as a still reads them."""
        moving = self._animate is not None and (self._may_move is None or self._may_move(data))
        portrait = None
        if options.portrait != "off":  # OpenCV is imported by the first portrait only
            portrait = {**self._portrait_settings, "opencv": search_version()}
        return result_key(
            digest, options if moving else options.for_still(), identity, background, portrait
        )

    def _expected_background(self, options: StylizeOptions) -> ModelIdentity | None:
        if options.portrait != "paste" or options.background == BACKGROUND_PHOTO:
            return None
        return self.expected_identity(options.background)

    async def _compute(
        self, digest: str, data: bytes, options: StylizeOptions, work: _SharedWork
    ) -> _Computed:
        if self._animate is not None:
            animation = await self._animate(data, options)
            if animation is not None:
                identity = self.expected_identity(options.style)
                background = self._expected_background(options)  # as its lookup's key
                key = self._key(digest, data, options, identity, background)
                if animation.foreign_frames:
                    logger.warning(
                        "style %s: model replicas ran other weights for %d frames of an "
                        "animation; result not cached",
                        options.style,
                        animation.foreign_frames,
                    )
                    return _Computed(animation.image, key, configured_weights=False)
                self._store(key, animation.image, options.style, identity)
                return _Computed(animation.image, key)
        if options.portrait != "off":
            return await self._compute_portrait(digest, data, options, work)
        started = time.perf_counter()
        pixels = decode.header_pixels(data)
        # The reservation lasts as long as the decode itself: a cancelled wait (the last
        # caller hung up) still waits for the thread, or the budget would be given back
        # while its memory is in use.
        async with self.decode_memory.reserve(decode.decode_peak_bytes(pixels)):
            decoded = await run_in_to_completion(
                self._executor, self._decode, data, pixels, options.size
            )
        decoded_at = time.perf_counter()
        work.progress = PROGRESS_DECODED

        def model_progress(done: int, total: int) -> None:
            share = PROGRESS_STYLIZED - PROGRESS_DECODED
            work.progress = PROGRESS_DECODED + share * done / max(total, 1)

        # Only a tiled picture's model pass has steps worth reporting.
        height, width = decoded.rgb.shape[:2]
        large = height * width > self._config.tiling.max_whole_pixels
        stylized = await self._stylize_with_retry(
            decoded.rgb, options.style, model_progress if large else None
        )
        work.progress = PROGRESS_STYLIZED
        encode_from = time.perf_counter()
        encoded = await in_thread(self._executor, finish, decoded, stylized.rgb, options)
        encoded_at = time.perf_counter()
        height, width = stylized.rgb.shape[:2]
        image = CachedImage(encoded, MEDIA_TYPES[options.format], width, height)
        key = self._key(digest, data, options, stylized.identity)
        self._store(key, image, options.style, stylized.identity)
        timings = {
            "decode": (decoded_at - started) * 1e3,
            "queue": stylized.queue_ms,
            "inference": stylized.inference_ms,
            "encode": (encoded_at - encode_from) * 1e3,
        }
        configured = self._configured(options.style, [stylized])
        return _Computed(image, key, timings, configured)

    async def _compute_portrait(
        self, digest: str, data: bytes, options: StylizeOptions, work: _SharedWork
    ) -> _Computed:
        """Faces found, cut from the full-resolution picture and stylized at the model's
        face size in one batch (the same shape), then cropped out or pasted back."""
        started = time.perf_counter()
        pixels = decode.header_pixels(data)
        peak = decode.decode_peak_bytes(pixels) + PORTRAIT_DECODE_BYTES_PER_PIXEL * pixels
        async with self.decode_memory.reserve(peak):  # for as long as the decode runs
            ready = await run_in_to_completion(
                self._executor, self._prepare_portrait, data, pixels, options
            )
        prepared_at = time.perf_counter()
        work.progress = PROGRESS_DECODED
        prepared = ready.prepared
        background = None  # the style of the picture around the faces, if any
        if prepared.crops and self._expected_background(options) is not None:
            background = options.background
        calls = [self._stylize_with_retry(crop, options.style) for crop in prepared.crops]
        if not calls:  # no face, and no_face=whole: the whole picture, as without portrait
            calls = [self._stylize_with_retry(prepared.photo.rgb, options.style)]
        if background:
            calls.append(self._stylize_with_retry(prepared.photo.rgb, background))
        results = await _all_or_none(calls)
        work.progress = PROGRESS_STYLIZED
        faces = results[:-1] if background else results
        scene = results[-1] if background else None
        encode_from = time.perf_counter()
        encoded, width, height = await in_thread(
            self._executor,
            finish_portrait,
            prepared,
            [face.rgb for face in faces],
            None if scene is None else scene.rgb,
            options,
            self._config.portrait.feather,
        )
        encoded_at = time.perf_counter()
        image = CachedImage(encoded, MEDIA_TYPES[options.format], width, height)
        identity = faces[0].identity
        scene_identity = self._expected_background(options) if scene is None else scene.identity
        key = self._key(digest, data, options, identity, scene_identity)
        if any(face.identity != identity for face in faces):
            logger.warning(
                "style %s: model replicas of two runtimes answered one picture; result not cached",
                options.style,
            )
        elif scene is not None and scene.identity.weights != self._weights[background]:
            logger.warning(
                "background style %s: a model replica ran other weights (%s); result not cached",
                background,
                scene.identity.weights,
            )
        else:
            if scene is not None:
                self.learn(background, scene.identity)
            self._store(key, image, options.style, identity)
        timings = {
            "decode": (prepared_at - started) * 1e3 - ready.detect_ms,
            "detect": ready.detect_ms,
            "queue": max(result.queue_ms for result in results),
            "inference": max(result.inference_ms for result in results),
            "encode": (encoded_at - encode_from) * 1e3,
        }
        configured = self._configured(options.style, faces) and (
            scene is None or self._configured(background, [scene])
        )
        return _Computed(image, key, timings, configured)

    def _configured(self, style: str, results: Sequence[StylizedArray]) -> bool:
        """Whether the config's weights for ``style`` made each of ``results``."""
        return all(result.identity.weights == self._weights[style] for result in results)

    def _prepare_portrait(self, data: bytes, pixels: int, options: StylizeOptions) -> _Portrait:
        """The full decode, the faces, and the model's inputs (a worker thread's work)."""
        config = self._config.portrait
        try:
            full = decode.decode_upload(data, self._config.limits)
            detect_from = time.perf_counter()
            faces = detect_faces(full.rgb, config)
            detect_ms = (time.perf_counter() - detect_from) * 1e3
            if not faces and options.no_face == "error":
                raise NoFace(
                    "no face found in the picture; send no_face=whole to stylize the whole "
                    "picture instead, or portrait=off"
                )
            prepared = geometry.prepare(full, faces, options.portrait, options.size, config)
            return _Portrait(prepared, detect_ms)
        finally:
            if pixels >= TRIM_AFTER_PIXELS:
                trim_heap()

    def _decode(self, data: bytes, pixels: int, size: int) -> DecodedImage:
        try:
            return decode.decode_resized(data, self._config.limits, size)
        finally:
            if pixels >= TRIM_AFTER_PIXELS:
                trim_heap()

    def _store(self, key: str, image: CachedImage, style: str, identity: ModelIdentity) -> None:
        """Cache a result only under the key of what actually computed it, and only if that
        is what the config asks for (during a rolling update, an old replica's answer is
        returned to its caller but never cached)."""
        if identity.weights != self._weights[style]:
            logger.warning(
                "style %s: a model replica ran other weights (%s); result not cached",
                style,
                identity.weights,
            )
            return
        self.learn(style, identity)
        task = run_detached(self._cache.put(key, image))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stylize_with_retry(
        self, rgb: np.ndarray, style: str, on_progress: ProgressSink | None = None
    ) -> StylizedArray:
        """A replica that dies mid-call is retried once: stylizing is idempotent."""
        progress = {} if on_progress is None else {"on_progress": on_progress}
        try:
            return await self._stylize_array(rgb, style, **progress)
        except ReplicaFailed as error:
            logger.warning("model replica failed (%s); retrying once", error)
        try:
            return await self._stylize_array(rgb, style, **progress)
        except ReplicaFailed as error:
            raise Unavailable("the model replica failed; retry shortly") from error

    async def _digest(self, data: bytes) -> str:
        if len(data) < HASH_IN_THREAD_BYTES:
            return image_digest(data)
        return await in_thread(self._executor, image_digest, data)

    def _result(self, computed: _Computed, options: StylizeOptions, status: CacheStatus):
        self.requests[status] += 1
        image = computed.image
        return StylizeResult(
            data=image.data,
            media_type=image.media_type,
            cache=status,
            style=options.style,
            width=image.width,
            height=image.height,
            key=computed.key,
            random_weights=self.runs_random_weights(options.style),
            configured_weights=computed.configured_weights,
            timings_ms=computed.timings_ms if status == "miss" else {},
        )


def finish(decoded: DecodedImage, stylized: np.ndarray, options: StylizeOptions) -> bytes:
    """The user's controls over the model's output, then the encoded picture."""
    rgb = apply_controls(decoded.rgb, stylized, options.strength, options.preserve_color)
    return encode_image(rgb, decoded.alpha, options.format, options.quality)


def finish_portrait(
    prepared: geometry.Prepared,
    faces: Sequence[np.ndarray],
    scene: np.ndarray | None,
    options: StylizeOptions,
    feather: float,
) -> tuple[bytes, int, int]:
    """Portrait mode's answer: (encoded bytes, width, height); see portrait.finish."""
    rgb, alpha = geometry.finish(
        prepared,
        faces,
        scene,
        options.portrait,
        options.size,
        options.strength,
        options.preserve_color,
        feather,
    )
    encoded = encode_image(rgb, alpha, options.format, options.quality)
    return encoded, rgb.shape[1], rgb.shape[0]


async def _all_or_none(calls: Sequence[Awaitable[StylizedArray]]) -> list[StylizedArray]:
    """Every call's result, run at once (so the model batches them); the first failure
    cancels the rest, as nobody will use them."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
