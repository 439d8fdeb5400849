"""The service: what the HTTP routes and the Python handle API call, in plain asyncio.

Composed once per ingress replica over a model and a result cache (their Ray-backed
implementations are handed in by the deployment; unit tests hand in fakes): the pipeline
for single pictures, the media service for videos and animations, the job service for
work followed and fetched later, the example photos, and the figures of ``/v1/stats``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from serve_app.config import MIN_SIDE, OUTPUT_FORMATS, AppConfig, example_path
from serve_app.errors import NotFound, NotReady, ServiceError
from serve_app.jobs.records import ANONYMOUS, JobRecord, WebhookInfo, keyed_owner
from serve_app.jobs.service import JobService, Submission
from serve_app.live.service import LiveMetrics, LiveService
from serve_app.media import probe
from serve_app.media.service import MediaService
from serve_app.options import StylizeOptions, resolve_options
from serve_app.pipeline.ports import Animation, Model, ResultStore
from serve_app.pipeline.results import StylizeResult
from serve_app.pipeline.stylize import StylizePipeline
from serve_app.service.examples import Example, load_examples, read_example
from serve_app.service.wire import (
    ExampleInfo,
    ExamplesResponse,
    LiveLimits,
    ReadyResponse,
    StatsResponse,
    StyleInfo,
    StylesResponse,
)

logger = logging.getLogger(__name__)

CACHE_GAUGES_EVERY_S = 10.0
MODEL_RETRY_S = 1.0  # between asks while no model replica answers (each waits up to 30 s)


class CacheWithStats(ResultStore, Protocol):
    async def stats(self) -> dict: ...


class ServiceMetrics(Protocol):
    """Where the service reports what it did (Ray's metrics in a replica; nothing in tests)."""

    def record_result(self, result: StylizeResult, options: StylizeOptions) -> None: ...

    def record_cache(self, shared: dict) -> None: ...


class AnimeService:
    """Pictures, videos and jobs: every operation the API offers."""

    def __init__(
        self,
        config: AppConfig,
        model: Model,
        cache: CacheWithStats,
        weights: dict[str, str],
        *,
        metrics: ServiceMetrics | None = None,
        job_metrics: Any = None,
        live_metrics: LiveMetrics | None = None,
    ) -> None:
        """``weights``: style -> the digest of its configured weights."""
        self.config = config
        self._model = model
        self._cache = cache
        self._metrics = metrics
        # Picture work has threads of its own: a burst of it never delays the job store's
        # writes (leases) or a video's decoding.
        self._photos = ThreadPoolExecutor(config.photo_threads, thread_name_prefix="photos")
        self.pipeline = StylizePipeline(
            config,
            cache,
            model.stylize,
            weights,
            animate=self._animate,
            executor=self._photos,
            may_move=probe.may_move,
        )
        self.media = MediaService(
            config,
            cache,
            self._stylize_frames,
            self.pipeline.expected_identity,
            executor=self._photos,
        )
        self.jobs = JobService(
            config.jobs,
            self.pipeline.stylize,
            progress_of=self.pipeline.progress,
            run_media=self.media.run_job,
            metrics=job_metrics,
        )
        self.live = LiveService(
            config,
            model.stylize,
            executor=self._photos,
            decode_memory=self.pipeline.decode_memory,
            on_frame=self.media.gate.interactive,
            metrics=live_metrics,
            places=self.jobs.records,  # an API key's streams, counted on every replica
        )
        self.examples: dict[str, Example] = load_examples(config)
        self._warm: dict[tuple[str, str], bool] = {}  # (example, style) -> warmed at start
        self.warming = bool(self.examples)
        self._model_answered = False
        self._gauges_at = 0.0
        self._background: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Connect the cache, learn what the model runs, warm the examples (background
        work: visitors are served meanwhile)."""
        self.jobs.start()
        await asyncio.gather(self._connect_cache(), self._wait_for_model())
        try:
            await self._warm_examples()
        finally:
            self.warming = False

    async def close(self) -> None:
        """Stop background work; jobs running here are left to another replica."""
        await self.jobs.close()
        self._photos.shutdown(wait=False)

    async def _connect_cache(self) -> None:
        connect = getattr(self._cache, "connect", None)
        if connect is not None:
            await connect()

    async def learn_model_identity(self) -> None:
        """Ask a model replica what it runs, so lookups hit results computed before this
        replica started (a redeploy keeps the shared cache)."""
        identities = await self._model.identities()
        learned = [self.pipeline.learn(style, identity) for style, identity in identities.items()]
        # Only a replica running this deploy's weights counts: during a redeploy with other
        # weights, one of the deploy before may answer, and what it runs would key this
        # replica's first results (and jobs) under a runtime still unknown.
        self._model_answered = self._model_answered or any(learned)

    async def _wait_for_model(self) -> None:
        """Until a model replica answers (it may wait for a node, or load its weights):
        the examples are warmed once it can make them."""
        while True:
            await self.learn_model_identity()
            if self._model_answered:
                return
            await asyncio.sleep(MODEL_RETRY_S)

    def ready(self) -> ReadyResponse:
        """Ready to serve: a model replica has answered (once is enough: a busy model is
        not an unready one) and the examples are warm; raises NotReady before."""
        if not self._model_answered:
            raise NotReady("no model replica has answered yet")
        if self.warming:
            wanted = len(self.examples) * len(self.config.styles)
            raise NotReady(f"the examples are warming ({len(self._warm)} of {wanted} ready)")
        return ReadyResponse(status="ready", examples_warm=len(self._warm))

    # --- options -----------------------------------------------------------------------

    def options(self, values: Mapping[str, Any], synchronous: bool = True) -> StylizeOptions:
        """The caller's options (by the names of ``StylizeOptions``' fields; None: the
        default) with the config's defaults, checked: 422 on anything wrong, an unknown
        name included. ``synchronous``: sizes past ``limits.max_sync_size`` are refused."""
        return resolve_options(self.config, values, synchronous=synchronous)

    # --- pictures ------------------------------------------------------------------------

    async def stylize(
        self, data: bytes, options: StylizeOptions, owner: str = ANONYMOUS
    ) -> StylizeResult:
        """Bytes of a picture -> the stylized picture; raises the API's errors. ``owner``:
        the caller's API key's (its misses in progress are bounded; none without keys)."""
        self.media.gate.interactive()
        result = await self.pipeline.stylize(data, options, owner=keyed_owner(owner))
        self._record(result, options)
        return result

    async def stylize_many(
        self, files: list[bytes], options: StylizeOptions, owner: str = ANONYMOUS
    ) -> list[StylizeResult | BaseException]:
        """Several pictures at once; each succeeds or fails alone."""
        self.media.gate.interactive()
        outcomes = await self.pipeline.stylize_many(files, options, keyed_owner(owner))
        for outcome in outcomes:
            if isinstance(outcome, StylizeResult):
                self._record(outcome, options)
        return outcomes

    async def _animate(self, data: bytes, options: StylizeOptions) -> Animation | None:
        """The pipeline's way to animations, bound late: the pipeline is made before
        ``self.media``."""
        return await self.media.animation(data, options)

    async def _stylize_frames(self, frames, style: str):
        results = await self._model.stylize_frames(frames, style)
        if results:
            self.pipeline.learn(style, results[0].identity)
        return results

    # --- jobs ----------------------------------------------------------------------------

    async def submit_job(
        self,
        data: bytes,
        options: StylizeOptions,
        owner: str = ANONYMOUS,
        idempotency_key: str | None = None,
        webhook: WebhookInfo | None = None,
    ) -> tuple[JobRecord, bool]:
        """Start a job for a picture, animation or video, or find the caller's own job
        for the same idempotency key (or, with an owner, these bytes and options); the
        flag says whether this call started it."""
        info = await self.media.inspect(data)
        if info is not None:
            self.media.check(info, options)
        content_key = await self.pipeline.key_of(data, options, media=info is not None)
        submission = Submission(data, options, content_key, info, owner, idempotency_key, webhook)
        return await self.jobs.submit(submission)

    # --- examples, styles, figures -------------------------------------------------------

    def example(self, name: str) -> Example:
        example = self.examples.get(name)
        if example is None:
            raise NotFound(f"no example named {name[:100]!r}; GET /v1/examples lists them")
        return example

    def examples_info(self) -> ExamplesResponse:
        styles = [style.name for style in self.config.styles]
        return ExamplesResponse(
            size=self.config.default_size,
            format=self.config.default_format,
            warming=self.warming,
            examples=[
                ExampleInfo(
                    name=example.name,
                    url=example.url,
                    media_type=example.media_type,
                    width=example.width,
                    height=example.height,
                    warm={style: self._warm.get((example.name, style), False) for style in styles},
                )
                for example in self.examples.values()
            ],
        )

    def styles(self) -> StylesResponse:
        config = self.config
        return StylesResponse(
            default_style=config.default_style_name,
            default_size=config.default_size,
            min_size=MIN_SIDE,
            max_size=config.limits.max_size,
            max_sync_size=min(config.limits.max_sync_size, config.limits.max_size),
            default_format=config.default_format,
            formats=sorted(OUTPUT_FORMATS),
            max_bytes=config.limits.max_bytes,
            max_pixels=config.limits.max_pixels,
            max_media_bytes=config.media.max_bytes,
            max_batch_images=config.max_batch_images,
            live=LiveLimits(
                default_size=config.live_default_size,
                max_size=config.largest_live_size,
                max_frame_bytes=config.live.max_frame_bytes,
            ),
            styles=[
                StyleInfo(
                    name=style.name,
                    description=style.description,
                    random_weights=self.pipeline.runs_random_weights(style.name),
                )
                for style in config.styles
            ],
        )

    async def stats(self) -> StatsResponse:
        cache = await self._cache_stats()
        cache["coalesced"] = self.pipeline.requests["coalesced"]
        return StatsResponse(
            cache=cache,
            requests=dict(self.pipeline.requests),
            in_flight=self.pipeline.in_flight,
            model=await self._model.stats(),
            jobs=self.jobs.figures(),
            job_records=self.jobs.record_calls,
            live_streams=self.live.open_streams,
        )

    # --- the cache, warmed ---------------------------------------------------------------

    async def warm_cache(self, paths: list[str]) -> int:
        """Stylize photos for every style at the defaults, so their first visitor waits for
        nothing; a bare file name (``4.jpg``) is one of the package's sample photos."""
        limit = self.config.limits.max_bytes
        examples = [read_example(entry, example_path(entry), limit) for entry in paths]
        photos = [example.data for example in examples if example is not None]
        return await self.pipeline.warm(photos, self._warm_options())

    def _warm_options(self) -> list[StylizeOptions]:
        return [resolve_options(self.config, style=style.name) for style in self.config.styles]

    async def _warm_examples(self) -> None:
        """The configured examples, one (example, style) at a time: warming is background
        work and leaves the model's capacity to visitors meanwhile."""
        for example in self.examples.values():
            for options in self._warm_options():
                try:
                    await self.pipeline.stylize(example.data, options)
                    self._warm[(example.name, options.style)] = True
                except ServiceError as error:
                    logger.warning(
                        "warm cache: example %s, style %s: %s",
                        example.name,
                        options.style,
                        error.message,
                    )
        wanted = len(self.examples) * len(self.config.styles)
        logger.info("warm cache: %d of %d example results ready", len(self._warm), wanted)

    # --- figures -------------------------------------------------------------------------

    def _record(self, result: StylizeResult, options: StylizeOptions) -> None:
        if self._metrics is None:
            return
        self._metrics.record_result(result, options)
        now = time.monotonic()
        if now - self._gauges_at >= CACHE_GAUGES_EVERY_S:
            self._gauges_at = now
            self.in_background(self._cache_stats())

    def in_background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cache_stats(self) -> dict:
        stats = await self._cache.stats()
        # A sum over the shards that answered in time would read as entries lost.
        if self._metrics is not None and stats["shards_answered"] == stats["shards"]:
            self._metrics.record_cache(stats["shared"])
        return stats
