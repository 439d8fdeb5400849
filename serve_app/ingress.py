"""The ingress deployment: thin HTTP routes and the Python handle API over the pipeline.

Everything that decides an answer (cache, coalescing, limits, deadlines, retries) lives in
``pipeline.py``; this module reads requests, calls it and writes responses. It imports
neither torch nor the model deployment.
"""

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app import imaging
from serve_app.cache import CacheClient
from serve_app.config import MIN_SIDE, AppConfig
from serve_app.errors import MissingImage, NotFound, Overloaded
from serve_app.http_errors import install_error_handlers
from serve_app.openapi import (
    BINARY,
    PICTURE_HEADERS,
    RAW_BODY,
    STYLIZE_ERRORS,
    error_statuses,
    multipart_body,
    openapi_document,
)
from serve_app.pipeline import ReplicaFailed, StylizePipeline, batch_body
from serve_app.request_log import RequestContextMiddleware, ingress_metrics, log_fields
from serve_app.schemas import (
    BatchResponse,
    HealthResponse,
    StatsResponse,
    StyleInfo,
    StylesResponse,
    StylizedArray,
    StylizeOptions,
    StylizeResult,
    resolve_options,
)
from serve_app.security import enable_cors, load_api_keys, require_api_key
from serve_app.uploads import MULTIPART_OVERHEAD_BYTES, read_form_files, read_single_upload

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
# A replica that dies mid-call: the pipeline retries once (stylising is idempotent).
REPLICA_FAILURES = (ActorDiedError, ActorUnavailableError, RayActorError)
CACHE_GAUGES_EVERY_S = 10.0
STATS_TIMEOUT_S = 1.0
IDENTITY_TIMEOUT_S = 30.0


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
FormatParam = Annotated[str | None, Query(description="output format, case-insensitive")]
QualityParam = Annotated[int | None, Query(description="1..100, jpeg and webp")]
StrengthParam = Annotated[
    float | None, Query(description="0 (the photo) .. 1 (the style's full effect, default)")
]
PreserveColorParam = Annotated[
    bool | None, Query(description="keep the photo's colours, take the style's lightness")
]
API_KEY = [Depends(require_api_key)]


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, stylizer: DeploymentHandle, config: AppConfig, weights: dict[str, str]):
        """``weights``: style name -> the digest of its configured weights."""
        self._stylizer = stylizer
        self._config = config
        self._cache = CacheClient(config.cache)
        self._pipeline = StylizePipeline(config, self._cache, self._stylize_array, weights)
        self._metrics = ingress_metrics()
        self._gauges_at = 0.0
        self._background: set[asyncio.Task] = set()
        app.state.api_keys = load_api_keys(config.api_key_env)
        enable_cors(app, config.cors_origins)
        app.openapi_schema = None  # regenerated with this config's limits (see openapi())
        app.openapi = self.openapi
        self._in_background(self._start())

    async def _start(self) -> None:
        await asyncio.gather(self._cache.connect(), self._learn_model_identity())
        if self._config.warm_examples:
            await self.warm_cache(self._config.warm_examples)

    async def _learn_model_identity(self) -> None:
        """Ask a model replica what it runs, so lookups hit results computed before this
        ingress started (a redeploy keeps the shared cache)."""
        try:
            identities = await asyncio.wait_for(
                self._stylizer.identities.remote(), IDENTITY_TIMEOUT_S
            )
        except Exception as error:  # learnt from the first answer instead
            logger.warning("model identity unavailable at start: %s", error)
            return
        for style, identity in identities.items():
            self._pipeline.learn(style, identity)

    # --- the Python handle API ---------------------------------------------------------

    async def stylize(
        self,
        data: bytes,
        style: str | None = None,
        size: int | None = None,
        format: str | None = None,
        quality: int | None = None,
        strength: float | None = None,
        preserve_color: bool | None = None,
    ) -> StylizeResult:
        """Bytes of a picture -> the stylised picture; raises the API's errors."""
        options = resolve_options(
            self._config, style, size, format, quality, strength, preserve_color
        )
        result = await self._pipeline.stylize(data, options)
        self._record(result, options)
        return result

    async def warm_cache(self, paths: list[str]) -> int:
        """Stylise example photos for every style, so their first visitor waits for nothing."""
        photos = []
        for path in paths:
            try:
                photos.append(Path(path).read_bytes())
            except OSError as error:
                logger.warning("warm cache: cannot read %s: %s", path, error)
        options = [resolve_options(self._config, style.name) for style in self._config.styles]
        return await self._pipeline.warm(photos, options)

    async def _stylize_array(self, rgb: np.ndarray, style: str) -> StylizedArray:
        response = self._stylizer.stylize.remote(rgb, style)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # nobody waits any more: stop the work on the replica too
            raise
        except BackPressureError:
            raise Overloaded("the service is at capacity; retry shortly") from None
        except REPLICA_FAILURES as error:
            raise ReplicaFailed(str(error)[:200]) from error

    def _record(self, result: StylizeResult, options: StylizeOptions) -> None:
        self._metrics.cache_results.inc(tags={"status": result.cache})
        timings = result.timings_ms
        if timings:
            self._metrics.decode_ms.observe(timings["decode"])
            self._metrics.encode_ms.observe(timings["encode"], tags={"format": options.format})
        now = time.monotonic()
        if now - self._gauges_at >= CACHE_GAUGES_EVERY_S:
            self._gauges_at = now
            self._in_background(self._cache_stats())

    def _in_background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cache_stats(self) -> dict:
        stats = await self._cache.stats()
        self._metrics.record_cache(stats["shared"])
        return stats

    # --- HTTP ----------------------------------------------------------------------------

    @app.post(
        "/v1/stylize",
        response_class=Response,
        dependencies=API_KEY,
        summary="Stylise one picture",
        responses={
            200: {
                "content": {t: {"schema": BINARY} for t in imaging.MEDIA_TYPES.values()},
                "description": "the picture",
                "headers": PICTURE_HEADERS,
            },
            **STYLIZE_ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {**multipart_body("image", many=False), **RAW_BODY},
            }
        },
    )
    async def stylize_route(
        self,
        request: Request,
        style: StyleParam = None,
        size: SizeParam = None,
        format: FormatParam = None,
        quality: QualityParam = None,
        strength: StrengthParam = None,
        preserve_color: PreserveColorParam = None,
    ) -> Response:
        options = resolve_options(  # before the body is read
            self._config, style, size, format, quality, strength, preserve_color
        )
        data = await read_single_upload(request, self._config.limits.max_bytes)
        result = await self._pipeline.stylize(data, options)
        self._record(result, options)
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
        response_class=Response,
        dependencies=API_KEY,
        summary="Stylise several pictures; each succeeds or fails alone",
        responses={200: {"model": BatchResponse}, **STYLIZE_ERRORS},
        openapi_extra={
            "requestBody": {"required": True, "content": multipart_body("images", many=True)}
        },
    )
    async def stylize_batch_route(
        self,
        request: Request,
        style: StyleParam = None,
        size: SizeParam = None,
        format: FormatParam = None,
        quality: QualityParam = None,
        strength: StrengthParam = None,
        preserve_color: PreserveColorParam = None,
    ) -> Response:
        options = resolve_options(  # before the body is read
            self._config, style, size, format, quality, strength, preserve_color
        )
        count = self._config.max_batch_images
        limit = count * (self._config.limits.max_bytes + MULTIPART_OVERHEAD_BYTES)
        files = await read_form_files(request, "images", count, limit)
        if not files:
            raise MissingImage("send the pictures as multipart fields 'images'")
        outcomes = await self._pipeline.stylize_many(files, options)
        for outcome in outcomes:
            if isinstance(outcome, StylizeResult):
                self._record(outcome, options)
        log_fields(request.scope).update(style=options.style, images=len(files))
        body = await asyncio.to_thread(batch_body, outcomes)
        return Response(body, media_type="application/json")

    @app.get(
        "/v1/styles",
        dependencies=API_KEY,
        summary="The styles served, the defaults and the limits",
        responses=error_statuses(401, 500),
    )
    async def styles_route(self) -> StylesResponse:
        config = self._config
        return StylesResponse(
            default_style=config.default_style_name,
            default_size=config.default_size,
            min_size=MIN_SIDE,
            max_size=config.limits.max_size,
            default_format=config.default_format,
            formats=sorted(imaging.MEDIA_TYPES),
            max_bytes=config.limits.max_bytes,
            max_pixels=config.limits.max_pixels,
            max_batch_images=config.max_batch_images,
            styles=[
                StyleInfo(
                    name=style.name,
                    description=style.description,
                    random_weights=self._pipeline.runs_random_weights(style.name),
                )
                for style in config.styles
            ],
        )

    @app.get(
        "/v1/stats",
        dependencies=API_KEY,
        summary="Cache figures and one model replica's own report",
        responses=error_statuses(401, 500),
    )
    async def stats_route(self) -> StatsResponse:
        cache = await self._cache_stats()
        cache["coalesced"] = self._pipeline.requests["coalesced"]
        return StatsResponse(
            cache=cache,
            requests=dict(self._pipeline.requests),
            in_flight=self._pipeline.in_flight,
            model=await self._one_replica_stats(),
        )

    async def _one_replica_stats(self) -> dict | None:
        try:
            return await asyncio.wait_for(self._stylizer.stats.remote(), STATS_TIMEOUT_S)
        except Exception as error:  # stats must answer even when the model cannot
            logger.warning("model replica stats unavailable: %s", error)
            return None

    @app.get("/healthz", summary="200 once the app can serve", responses=error_statuses(500))
    async def healthz(self) -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/", include_in_schema=False)
    async def page(self):
        index = WEB_DIR / "index.html"
        if not index.is_file():
            raise NotFound("the upload page is not installed")
        return FileResponse(index)

    def openapi(self) -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, self._config)
        return app.openapi_schema
