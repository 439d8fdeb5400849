"""The ingress deployment: HTTP routes and the Python handle API over one code path.

route -> read upload (uploads.py) -> cache key -> L1 / shared cache (cache.py)
      -> coalesce with an identical request in flight -> decode + resize (imaging.py)
      -> Stylizer (stylizer.py) -> encode -> cache -> response
"""

import asyncio
import base64
import logging
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app import imaging
from serve_app.cache import CacheClient, CachedImage, cache_key, image_digest
from serve_app.config import AppConfig
from serve_app.errors import ApiError, as_api_error, error_response, install_error_handlers
from serve_app.stylizer import InferenceInfo, StylizedArray
from serve_app.uploads import MULTIPART_OVERHEAD_BYTES, read_form_files, read_single_upload

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
CacheStatus = Literal["hit", "miss", "coalesced"]
# A replica that dies mid-call is retried once: stylizing is idempotent.
RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError)


@dataclass(frozen=True)
class StylizeResult:
    """What a stylize call returns, over HTTP and to Python handle callers alike."""

    data: bytes
    media_type: str
    cache: CacheStatus
    style: str
    width: int
    height: int
    key: str  # the cache key, also the HTTP ETag
    random_weights: bool  # the style runs on untrained weights: a meaningless picture

    def headers(self) -> dict[str, str]:
        headers = {"X-Cache": self.cache, "X-Style": self.style, "ETag": f'"{self.key}"'}
        if self.random_weights:
            headers["X-Weights"] = "random"
        return headers


@dataclass(frozen=True)
class StylizeOptions:
    style: str
    size: int
    format: imaging.OutputFormat
    quality: int | None  # None for png


def resolve_options(
    config: AppConfig,
    style: str | None,
    size: int | None,
    fmt: str | None,
    quality: int | None,
) -> StylizeOptions:
    """Fill defaults and check every option against the config; 422 on anything wrong."""
    style = style or config.default_style_name
    if config.style(style) is None:
        names = [s.name for s in config.styles]
        raise ApiError(422, "unknown_style", f"unknown style {style!r}; served: {names}")
    size = config.default_size if size is None else size
    if not 0 < size <= config.limits.max_size:
        raise ApiError(
            422, "invalid_size", f"size must be 1..{config.limits.max_size} px, got {size}"
        )
    fmt = (fmt or config.default_format).lower()
    if fmt not in imaging.MEDIA_TYPES:
        raise ApiError(
            422,
            "invalid_format",
            f"format must be one of {sorted(imaging.MEDIA_TYPES)}, got {fmt!r}",
        )
    if quality is not None and not 1 <= quality <= 100:
        raise ApiError(422, "invalid_quality", f"quality must be 1..100, got {quality}")
    if fmt == "png":
        quality = None
    elif quality is None:
        quality = config.default_quality
    return StylizeOptions(style=style, size=size, format=fmt, quality=quality)


class ModelFigures:
    """What this ingress replica saw of the Stylizer replicas' work."""

    def __init__(self, remember_batches: int = 4096):
        self.loads: dict[str, int] = {}
        self.images = 0
        self.batch_sizes: Counter[int] = Counter()
        self.inference_ms: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.queue_ms_total = 0.0
        self.max_batch_size: int | None = None
        self._seen_batches: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._remember = remember_batches

    def record(self, style: str, info: InferenceInfo) -> None:
        self.loads[info.replica] = info.loads
        self.images += 1
        self.max_batch_size = info.max_batch_size
        self.queue_ms_total += info.queue_ms
        self.inference_ms[style][0] += 1
        self.inference_ms[style][1] += info.inference_ms / info.group_size
        batch = (info.replica, info.batch_id)
        if batch not in self._seen_batches:
            self._seen_batches[batch] = None
            self.batch_sizes[info.batch_size] += 1
            if len(self._seen_batches) > self._remember:
                self._seen_batches.popitem(last=False)

    def to_dict(self) -> dict:
        batches = sum(self.batch_sizes.values())
        return {
            "replicas_seen": len(self.loads),
            "loads": sum(self.loads.values()),
            "images": self.images,
            "batches": batches,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "mean_batch_size": (self.images / batches) if batches else 0.0,
            "max_batch_size": self.max_batch_size,
            "mean_queue_ms": self.queue_ms_total / self.images if self.images else 0.0,
            "inference_ms_per_image": {
                style: total / count for style, (count, total) in self.inference_ms.items()
            },
        }


def batch_item(index: int, outcome: StylizeResult | BaseException) -> dict:
    if isinstance(outcome, StylizeResult):
        return {
            "index": index,
            "status": 200,
            "media_type": outcome.media_type,
            "cache": outcome.cache,
            "width": outcome.width,
            "height": outcome.height,
            "data": base64.b64encode(outcome.data).decode("ascii"),
        }
    if isinstance(outcome, ApiError):
        error = {"code": outcome.code, "message": outcome.message}
        return {"index": index, "status": outcome.status, "error": error}
    logger.error("batch item %d failed", index, exc_info=outcome)
    error = {"code": "internal_error", "message": "internal error; see the server log"}
    return {"index": index, "status": 500, "error": error}


app = FastAPI(
    title="animegan-serve",
    summary="Photo in, anime-style picture out (AnimeGANv2 on Ray Serve).",
    version="1",
)
install_error_handlers(app)

StyleParam = Annotated[str | None, Query(description="a style from /v1/styles")]
SizeParam = Annotated[int | None, Query(description="output longer side, px")]
FormatParam = Annotated[str | None, Query(description="png, jpeg or webp")]
QualityParam = Annotated[int | None, Query(description="1..100, jpeg and webp")]


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, stylizer: DeploymentHandle, config: AppConfig, weights: dict[str, str]):
        """``weights``: style name -> weights digest (it is part of every cache key)."""
        self._stylizer = stylizer
        self._config = config
        self._weights = weights
        self._cache = CacheClient(
            config.cache.name,
            config.cache.shards,
            config.cache.max_bytes,
            config.cache.ttl_s,
            config.cache.local_max_bytes,
            config.cache.timeout_s,
        )
        self._in_flight: dict[str, asyncio.Future[CachedImage]] = {}
        self._background: set[asyncio.Task] = set()
        self._requests: Counter[str] = Counter()
        self._model = ModelFigures()

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
        if len(data) > self._config.limits.max_bytes:
            limit = self._config.limits.max_bytes
            message = f"the picture has {len(data)} bytes; the limit is {limit}"
            raise as_api_error(imaging.ImageTooLarge(message))
        key = cache_key(
            image_digest(data),
            style=options.style,
            weights_digest=self._weights[options.style],
            size=options.size,
            fmt=options.format,
            quality=options.quality,
        )
        image, status = await self._lookup_or_compute(key, data, options)
        self._requests[status] += 1
        return StylizeResult(
            data=image.data,
            media_type=image.media_type,
            cache=status,
            style=options.style,
            width=image.width,
            height=image.height,
            key=key,
            random_weights=self._weights[options.style].startswith("random"),
        )

    async def _lookup_or_compute(
        self, key: str, data: bytes, options: StylizeOptions
    ) -> tuple[CachedImage, CacheStatus]:
        cached = await self._cache.get(key)
        if cached is not None:
            return cached, "hit"
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            return await asyncio.shield(in_flight), "coalesced"
        task = asyncio.ensure_future(self._compute(key, data, options))
        self._in_flight[key] = task
        task.add_done_callback(lambda _: self._in_flight.pop(key, None))
        # shield: one caller giving up does not cancel the work others wait for.
        return await asyncio.shield(task), "miss"

    async def _compute(self, key: str, data: bytes, options: StylizeOptions) -> CachedImage:
        try:
            decoded = await asyncio.to_thread(self._decode, data, options.size)
        except imaging.ImageError as error:
            raise as_api_error(error) from None
        stylized = await self._call_stylizer(decoded.rgb, options.style)
        self._model.record(options.style, stylized.info)
        encoded = await asyncio.to_thread(
            imaging.encode_image, stylized.rgb, decoded.alpha, options.format, options.quality
        )
        height, width = stylized.rgb.shape[:2]
        image = CachedImage(encoded, imaging.MEDIA_TYPES[options.format], width, height)
        self._in_background(self._cache.put(key, image))
        return image

    def _decode(self, data: bytes, size: int) -> imaging.DecodedImage:
        return imaging.resize_long_side(imaging.decode_upload(data, self._config.limits), size)

    async def _call_stylizer(self, rgb, style: str) -> StylizedArray:
        timeout = self._config.request_timeout_s
        for attempt in (1, 2):
            response = self._stylizer.stylize.remote(rgb, style)
            try:
                return await asyncio.wait_for(response, timeout)
            except asyncio.TimeoutError:
                response.cancel()
                raise ApiError(
                    504, "timeout", f"the picture was not ready within {timeout:g} s"
                ) from None
            except BackPressureError:
                raise ApiError(
                    503,
                    "overloaded",
                    "the service is at capacity; retry shortly",
                    {"Retry-After": "1"},
                ) from None
            except RETRYABLE as error:
                if attempt == 2:
                    raise ApiError(
                        503,
                        "unavailable",
                        "the model replica failed; retry shortly",
                        {"Retry-After": "1"},
                    ) from error
                logger.warning("Stylizer replica failed (%s); retrying once", error)
        raise AssertionError("unreachable")

    def _in_background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- HTTP --------------------------------------------------------------------

    @app.post("/v1/stylize", response_class=Response, summary="Stylise one picture")
    async def stylize_route(
        self,
        request: Request,
        style: StyleParam = None,
        size: SizeParam = None,
        format: FormatParam = None,
        quality: QualityParam = None,
    ) -> Response:
        data = await read_single_upload(request, self._config.limits.max_bytes)
        result = await self.stylize(data, style, size, format, quality)
        return Response(result.data, media_type=result.media_type, headers=result.headers())

    @app.post("/v1/stylize/batch", summary="Stylise several pictures (multipart field `images`)")
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
        return {"results": [batch_item(i, outcome) for i, outcome in enumerate(outcomes)]}

    @app.get("/v1/styles", summary="The styles served and the defaults")
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
                    "random_weights": self._weights[style.name].startswith("random"),
                    "description": style.description,
                }
                for style in config.styles
            ],
        }

    @app.get("/v1/stats", summary="Cache and model figures")
    async def stats_route(self) -> dict:
        return {
            "cache": {**await self._cache.stats(), "coalesced": self._requests["coalesced"]},
            "requests": dict(self._requests),
            "model": self._model.to_dict(),
        }

    @app.get("/healthz", summary="200 once the app can serve")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def page(self):
        index = WEB_DIR / "index.html"
        if not index.is_file():
            return error_response(404, "not_found", "the upload page is not installed")
        return FileResponse(index)
