"""The ingress deployment: HTTP routes and the Python handle API over one code path.

route -> read upload (uploads.py) -> cache key -> L1 / shared cache (cache.py)
      -> coalesce with an identical request in flight -> decode + resize (imaging.py)
      -> Stylizer (stylizer.py) -> encode -> cache -> response
"""

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app import imaging
from serve_app.cache import CacheClient, CachedImage, cache_key, image_digest
from serve_app.config import AppConfig
from serve_app.errors import ApiError, as_api_error, error_response, install_error_handlers
from serve_app.request_log import RequestContextMiddleware, ingress_metrics, log_fields
from serve_app.schemas import (
    CacheStatus,
    StylizeOptions,
    StylizeResult,
    batch_item,
    resolve_options,
)
from serve_app.security import enable_cors, load_api_keys, require_api_key
from serve_app.stats import ModelFigures
from serve_app.stylizer import StylizedArray
from serve_app.uploads import MULTIPART_OVERHEAD_BYTES, read_form_files, read_single_upload
from serve_app.weights import is_random_digest

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
# A replica that dies mid-call is retried once: stylizing is idempotent.
RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError)
CACHE_GAUGES_EVERY_S = 10.0
STATS_TIMEOUT_S = 1.0

app = FastAPI(
    title="animegan-serve",
    summary="Photo in, anime-style picture out (AnimeGANv2 on Ray Serve).",
    version="1",
)
install_error_handlers(app)
app.add_middleware(RequestContextMiddleware)
app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")

StyleParam = Annotated[str | None, Query(description="a style from /v1/styles")]
SizeParam = Annotated[int | None, Query(description="output longer side, px")]
FormatParam = Annotated[str | None, Query(description="png, jpeg or webp")]
QualityParam = Annotated[int | None, Query(description="1..100, jpeg and webp")]
API_KEY = [Depends(require_api_key)]


def overloaded(message: str) -> ApiError:
    return ApiError(503, "overloaded", message, {"Retry-After": "1"})


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, stylizer: DeploymentHandle, config: AppConfig, weights: dict[str, str]):
        """``weights``: style name -> weights digest (it is part of every cache key)."""
        self._stylizer = stylizer
        self._config = config
        self._weights = weights
        self._random_styles = frozenset(
            name for name, digest in weights.items() if is_random_digest(digest)
        )
        cache = config.cache
        self._cache = CacheClient(
            cache.name, cache.shards, cache.max_bytes, cache.ttl_s, cache.local_max_bytes,
            cache.timeout_s,
        )  # fmt: skip
        self._in_flight: dict[str, asyncio.Future[tuple[CachedImage, dict]]] = {}
        self._background: set[asyncio.Task] = set()
        self._requests: Counter[str] = Counter()
        self._model = ModelFigures()
        self._metrics = ingress_metrics()
        self._gauges_at = 0.0
        self._in_background(self._cache.connect())
        app.state.api_keys = load_api_keys(config.api_key_env)
        enable_cors(app, config.cors_origins)
        if config.warm_examples:
            self._in_background(self.warm_cache(config.warm_examples))

    # --- the one code path -------------------------------------------------------

    async def stylize(
        self,
        data: bytes,
        style: str | None = None,
        size: int | None = None,
        format: str | None = None,
        quality: int | None = None,
    ) -> StylizeResult:
        """Bytes of a picture -> the stylised picture (the Python handle API)."""
        options = resolve_options(self._config, style, size, format, quality)
        if not data:
            raise ApiError(400, "empty_upload", "the uploaded picture is empty")
        try:
            imaging.check_upload_size(data, self._config.limits)  # before hashing it
        except imaging.ImageTooLarge as error:
            raise as_api_error(error) from None
        key = cache_key(
            image_digest(data),
            style=options.style,
            weights_digest=self._weights[options.style],
            size=options.size,
            fmt=options.format,
            quality=options.quality,
        )
        (image, timings), status = await self._lookup_or_compute(key, data, options)
        self._requests[status] += 1
        self._metrics.cache_results.inc(tags={"status": status})
        self._refresh_cache_gauges()
        return StylizeResult(
            data=image.data,
            media_type=image.media_type,
            cache=status,
            style=options.style,
            width=image.width,
            height=image.height,
            key=key,
            random_weights=options.style in self._random_styles,
            timings_ms=timings if status == "miss" else {},
        )

    async def _lookup_or_compute(
        self, key: str, data: bytes, options: StylizeOptions
    ) -> tuple[tuple[CachedImage, dict], CacheStatus]:
        cached = await self._cache.get(key)
        if cached is not None:
            return (cached, {}), "hit"
        in_flight = self._in_flight.get(key)
        status: CacheStatus = "coalesced"
        if in_flight is None:
            if len(self._in_flight) >= self._config.max_in_flight:
                raise overloaded("too many pictures in progress; retry shortly")
            timeout = self._config.request_timeout_s
            # The deadline cancels the work itself (the Stylizer call included).
            in_flight = asyncio.ensure_future(
                asyncio.wait_for(self._compute(key, data, options), timeout)
            )
            self._in_flight[key] = in_flight
            in_flight.add_done_callback(lambda _: self._in_flight.pop(key, None))
            status = "miss"
        try:
            # shield: one caller giving up does not cancel the work others wait for.
            return await asyncio.shield(in_flight), status
        except asyncio.TimeoutError:
            timeout = self._config.request_timeout_s
            raise ApiError(504, "timeout", f"not ready within {timeout:g} s") from None

    async def _compute(
        self, key: str, data: bytes, options: StylizeOptions
    ) -> tuple[CachedImage, dict]:
        started = time.perf_counter()
        try:
            decoded = await asyncio.to_thread(
                imaging.decode_resized, data, self._config.limits, options.size
            )
        except imaging.ImageError as error:
            raise as_api_error(error) from None
        decoded_at = time.perf_counter()
        stylized = await self._call_stylizer(decoded.rgb, options.style)
        self._model.record(options.style, stylized.info)
        encode_from = time.perf_counter()
        encoded = await asyncio.to_thread(
            imaging.encode_image, stylized.rgb, decoded.alpha, options.format, options.quality
        )
        encoded_at = time.perf_counter()
        height, width = stylized.rgb.shape[:2]
        image = CachedImage(encoded, imaging.MEDIA_TYPES[options.format], width, height)
        self._in_background(self._cache.put(key, image))
        timings = {
            "decode": (decoded_at - started) * 1e3,
            "queue": stylized.info.queue_ms,
            "inference": stylized.info.inference_ms,
            "encode": (encoded_at - encode_from) * 1e3,
        }
        self._metrics.decode_ms.observe(timings["decode"])
        self._metrics.encode_ms.observe(timings["encode"], tags={"format": options.format})
        return image, timings

    async def _call_stylizer(self, rgb, style: str) -> StylizedArray:
        for attempt in (1, 2):
            response = self._stylizer.stylize.remote(rgb, style)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()  # the deadline passed: stop the work on the replica
                raise
            except BackPressureError:
                raise overloaded("the service is at capacity; retry shortly") from None
            except RETRYABLE as error:
                if attempt == 2:
                    raise ApiError(
                        503, "unavailable", "the model replica failed; retry shortly",
                        {"Retry-After": "1"},
                    ) from error  # fmt: skip
                logger.warning("Stylizer replica failed (%s); retrying once", error)
        raise AssertionError("unreachable")

    def _in_background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _refresh_cache_gauges(self) -> None:
        now = time.monotonic()
        if now - self._gauges_at >= CACHE_GAUGES_EVERY_S:
            self._gauges_at = now
            self._in_background(self._cache_stats())

    async def _cache_stats(self) -> dict:
        stats = await self._cache.stats()
        self._metrics.record_cache(stats["shared"])
        return stats

    async def warm_cache(self, paths: list[str]) -> int:
        """Stylise example photos for every style, so their first visitor waits for nothing."""
        done = 0
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as error:
                logger.warning("warm cache: cannot read %s: %s", path, error)
                continue
            for style in self._config.styles:
                try:
                    await self.stylize(data, style=style.name)
                    done += 1
                except Exception:
                    logger.exception("warm cache: %s failed for style %s", path, style.name)
        logger.info("warm cache: %d results ready", done)
        return done

    # --- HTTP --------------------------------------------------------------------

    @app.post(
        "/v1/stylize",
        response_class=Response,
        dependencies=API_KEY,
        summary="Stylise one picture",
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
    )
    async def stylize_route(
        self,
        request: Request,
        style: StyleParam = None,
        size: SizeParam = None,
        format: FormatParam = None,
        quality: QualityParam = None,
    ) -> Response:
        resolve_options(self._config, style, size, format, quality)  # 422 before reading
        data = await read_single_upload(request, self._config.limits.max_bytes)
        result = await self.stylize(data, style, size, format, quality)
        log_fields(request.scope).update(
            style=result.style,
            size=max(result.width, result.height),
            format=result.media_type,
            cache=result.cache,
            bytes_in=len(data),
            timings_ms={name: round(ms, 1) for name, ms in result.timings_ms.items()},
        )
        return Response(result.data, media_type=result.media_type, headers=result.headers())

    @app.post(
        "/v1/stylize/batch",
        dependencies=API_KEY,
        summary="Stylise several pictures (multipart fields `images`)",
    )
    async def stylize_batch_route(
        self,
        request: Request,
        style: StyleParam = None,
        size: SizeParam = None,
        format: FormatParam = None,
        quality: QualityParam = None,
    ) -> dict:
        resolve_options(self._config, style, size, format, quality)  # 422 before reading
        count = self._config.max_batch_images
        limit = count * (self._config.limits.max_bytes + MULTIPART_OVERHEAD_BYTES)
        files = await read_form_files(request, "images", count, limit)
        if not files:
            raise ApiError(422, "missing_image", "send the pictures as multipart fields 'images'")
        outcomes = await asyncio.gather(
            *(self.stylize(data, style, size, format, quality) for data in files),
            return_exceptions=True,
        )
        log_fields(request.scope).update(style=style, images=len(files))
        return {"results": [batch_item(i, outcome) for i, outcome in enumerate(outcomes)]}

    @app.get("/v1/styles", dependencies=API_KEY, summary="The styles served and the defaults")
    async def styles_route(self) -> dict:
        config = self._config
        return {
            "default_style": config.default_style_name,
            "default_size": config.default_size,
            "max_size": config.limits.max_size,
            "default_format": config.default_format,
            "formats": sorted(imaging.MEDIA_TYPES),
            "max_bytes": config.limits.max_bytes,
            "max_pixels": config.limits.max_pixels,
            "max_batch_images": config.max_batch_images,
            "styles": [
                {
                    "name": style.name,
                    "weights": style.weights,
                    "random_weights": style.name in self._random_styles,
                    "description": style.description,
                }
                for style in config.styles
            ],
        }

    @app.get("/v1/stats", dependencies=API_KEY, summary="Cache and model figures")
    async def stats_route(self) -> dict:
        cache = await self._cache_stats()
        cache["coalesced"] = self._requests["coalesced"]
        model = {**self._model.to_dict(), "replica": await self._one_replica_stats()}
        return {"cache": cache, "requests": dict(self._requests), "model": model}

    async def _one_replica_stats(self) -> dict | None:
        """One Stylizer replica's own report: runtime, threads, batch curve and choice."""
        try:
            return await asyncio.wait_for(self._stylizer.stats.remote(), STATS_TIMEOUT_S)
        except Exception as error:  # stats must answer even when the model cannot
            logger.warning("Stylizer stats unavailable: %s", error)
            return None

    @app.get("/healthz", summary="200 once the app can serve")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def page(self):
        index = WEB_DIR / "index.html"
        if not index.is_file():
            return error_response(404, "not_found", "the upload page is not installed")
        return FileResponse(index)
