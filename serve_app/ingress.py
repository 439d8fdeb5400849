"""The ingress deployment: thin HTTP routes and the Python handle API over the pipeline.

Everything that decides an answer (cache, coalescing, limits, deadlines, retries) lives in
``pipeline.py``; this module reads requests, calls it and writes responses. It imports
neither torch nor the model deployment.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app import imaging, media
from serve_app.byte_ranges import content_range, parse_range
from serve_app.cache import CacheClient, CachedImage
from serve_app.config import MIN_SIDE, AppConfig, example_path
from serve_app.errors import MissingImage, NotFound, Overloaded, ServiceError
from serve_app.examples import document_examples, load_examples, read_example
from serve_app.http_errors import install_error_handlers
from serve_app.jobs import JobOutput, JobRecord, JobService, JobView, sse_event
from serve_app.media_service import MediaService
from serve_app.metrics import JobMetrics
from serve_app.openapi import (
    BINARY,
    JOB_BODY,
    PICTURE_HEADERS,
    RAW_BODY,
    STYLIZE_ERRORS,
    error_statuses,
    multipart_body,
    openapi_document,
)
from serve_app.pipeline import ProgressSink, ReplicaFailed, StylizePipeline, batch_body
from serve_app.request_log import RequestContextMiddleware, ingress_metrics, log_fields
from serve_app.schemas import (
    BatchResponse,
    ErrorBody,
    ExampleInfo,
    ExamplesResponse,
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
# An example's bytes are fixed for a deploy; an hour bounds how long a browser keeps an
# old photo after a redeploy changes it.
EXAMPLE_CACHE_CONTROL = "public, max-age=3600"
# Event streams pass proxies unbuffered (nginx reads X-Accel-Buffering) and uncached.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_KEEP_ALIVE = b": keep-alive\n\n"
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
        "data": {"type": "string", "description": "the job's JSON, as GET /v1/jobs/{id}"},
    },
}
# A job's result goes out in pieces of this size: a video is never whole in memory.
RESULT_CHUNK_BYTES = 1 << 20
RESULT_MEDIA_TYPES = sorted(
    {*imaging.MEDIA_TYPES.values(), *media.VIDEO_MEDIA_TYPES, *media.ANIMATION_MEDIA_TYPES}
)
JOB_HEADERS = {"Location": {"schema": {"type": "string"}, "description": "the job's URL"}}


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
PortraitParam = Annotated[
    str | None,
    Query(
        description="off (default); crop: the largest face, square; paste: every face "
        "stylised at the face styles' scale and pasted back into the picture"
    ),
]
BackgroundParam = Annotated[
    str | None,
    Query(description="portrait=paste: `photo` (default) or a style for the rest"),
]
NoFaceParam = Annotated[
    str | None,
    Query(description="portrait found no face: `error` (default, 422 no_face) or `whole`"),
]
ContainerParam = Annotated[
    str | None,
    Query(
        description="videos (jobs): the output container, `same` (default: the input's "
        "family), `mp4`, `webm`, `matroska` or `mov`"
    ),
]
MaxFpsParam = Annotated[
    float | None,
    Query(
        description="videos: at most this many frames a second (the first frame at or "
        "after each 1/max_fps step is kept, the rest dropped); default: every frame"
    ),
]
API_KEY = [Depends(require_api_key)]


def stylize_query(
    style: StyleParam = None,
    size: SizeParam = None,
    format: FormatParam = None,
    quality: QualityParam = None,
    strength: StrengthParam = None,
    preserve_color: PreserveColorParam = None,
    portrait: PortraitParam = None,
    background: BackgroundParam = None,
    no_face: NoFaceParam = None,
    container: ContainerParam = None,
    max_fps: MaxFpsParam = None,
) -> dict:
    """The options as sent, for resolve_options (every route that makes pictures)."""
    return {
        "style": style,
        "size": size,
        "fmt": format,
        "quality": quality,
        "strength": strength,
        "preserve_color": preserve_color,
        "portrait": portrait,
        "background": background,
        "no_face": no_face,
        "container": container,
        "max_fps": max_fps,
    }


StylizeQuery = Annotated[dict, Depends(stylize_query)]


def resolve_job_options(config: AppConfig, options: dict[str, Any]) -> StylizeOptions:
    """The handle API's keyword options (``format``, as over HTTP) for a job."""
    options = dict(options)
    if "format" in options:
        options["fmt"] = options.pop("format")
    return resolve_options(config, **options, synchronous=False)


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, stylizer: DeploymentHandle, config: AppConfig, weights: dict[str, str]):
        """``weights``: style name -> the digest of its configured weights."""
        self._stylizer = stylizer
        self._config = config
        self._cache = CacheClient(config.cache)
        self._pipeline = StylizePipeline(
            config, self._cache, self._stylize_array, weights, animate=self._animate
        )
        self._media = MediaService(
            config, self._cache, self._stylize_frames, self._pipeline.expected_identity
        )
        self._jobs = JobService(
            config.jobs,
            self._pipeline.stylize,
            progress_of=self._pipeline.progress,
            run_media=self._media.run_job,
            metrics=JobMetrics(),
        )
        self._metrics = ingress_metrics()
        self._gauges_at = 0.0
        self._background: set[asyncio.Task] = set()
        self._examples = load_examples(config)
        self._warm: dict[tuple[str, str], bool] = {}  # (example, style) -> warmed at start
        self._warming = bool(self._examples)
        app.state.api_keys = load_api_keys(config.api_key_env)
        enable_cors(app, config.cors_origins)
        app.openapi_schema = None  # regenerated with this config's limits (see openapi())
        app.openapi = self.openapi
        self._in_background(self._start())

    async def _start(self) -> None:
        await asyncio.gather(self._cache.connect(), self._learn_model_identity())
        try:
            await self._warm_examples()
        finally:
            self._warming = False

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
        portrait: str | None = None,
        background: str | None = None,
        no_face: str | None = None,
    ) -> StylizeResult:
        """Bytes of a picture -> the stylised picture; raises the API's errors."""
        options = resolve_options(
            self._config,
            style,
            size,
            format,
            quality,
            strength,
            preserve_color,
            portrait,
            background,
            no_face,
        )
        self._media.gate.interactive()
        result = await self._pipeline.stylize(data, options)
        self._record(result, options)
        return result

    async def submit_job(self, data: bytes, **options: Any) -> JobView:
        """Start a job for a picture (the options of ``stylize``; sizes up to
        ``limits.max_size``), or find the one already made for these bytes and options."""
        record, _ = await self._submit_job(data, resolve_job_options(self._config, options))
        return self._jobs.view(record)

    async def job(self, job_id: str) -> JobView:
        """A job's state and progress; raises UnknownJob."""
        return self._jobs.view(await self._jobs.get(job_id))

    async def job_result(self, job_id: str) -> JobOutput:
        """A finished job's picture; raises JobNotDone before it is done."""
        return await self._jobs.result(job_id)

    async def cancel_job(self, job_id: str) -> JobView:
        """Stop a job and delete its files."""
        return self._jobs.view(await self._jobs.cancel(job_id))

    async def _submit_job(self, data: bytes, options: StylizeOptions) -> tuple[JobRecord, bool]:
        info = await self._media.inspect(data)
        if info is None:
            job_id = await self._pipeline.key_of(data, options)
        else:
            self._media.check(info, options)
            job_id = await self._pipeline.key_of(data, options, media=True)
        return await self._jobs.submit(job_id, data, options, info)

    async def _animate(self, data: bytes, options: StylizeOptions) -> CachedImage | None:
        """A synchronous request's animation, made animated (None: a still picture)."""
        info = await self._media.inspect(data)
        if info is None:
            return None
        output = await self._media.animate(data, info, options)
        return CachedImage(output.data, output.media_type, output.width, output.height)

    async def _stylize_frames(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        results = await self._model_call(self._stylizer.stylize_frames.remote(frames, style))
        if results:
            self._pipeline.learn(style, results[0].identity)
        return results

    async def warm_cache(self, paths: list[str]) -> int:
        """Stylise photos for every style at the defaults, so their first visitor waits for
        nothing; a bare file name (``4.jpg``) is one of the package's sample photos."""
        limit = self._config.limits.max_bytes
        examples = [read_example(entry, example_path(entry), limit) for entry in paths]
        photos = [example.data for example in examples if example is not None]
        return await self._pipeline.warm(photos, self._warm_options())

    def _warm_options(self) -> list[StylizeOptions]:
        return [resolve_options(self._config, style.name) for style in self._config.styles]

    async def _warm_examples(self) -> None:
        """The configured examples, one (example, style) at a time: warming is background
        work and leaves the model's capacity to visitors meanwhile."""
        for example in self._examples.values():
            for options in self._warm_options():
                try:
                    await self._pipeline.stylize(example.data, options)
                    self._warm[(example.name, options.style)] = True
                except ServiceError as error:
                    logger.warning(
                        "warm cache: example %s, style %s: %s",
                        example.name,
                        options.style,
                        error.message,
                    )
        wanted = len(self._examples) * len(self._config.styles)
        logger.info("warm cache: %d of %d example results ready", len(self._warm), wanted)

    async def _stylize_array(
        self, rgb: np.ndarray, style: str, on_progress: ProgressSink | None = None
    ) -> StylizedArray:
        """One array through the model; ``on_progress`` hears how far a tiled picture's
        forward passes are (a small picture is one pass: nothing to report)."""
        tiled = rgb.shape[0] * rgb.shape[1] > self._config.tiling.max_whole_pixels
        if on_progress is not None and tiled:
            stream = self._stylizer.options(stream=True).stylize_with_progress
            return await self._model_call(stream.remote(rgb, style), on_progress)
        return await self._model_call(self._stylizer.stylize.remote(rgb, style))

    async def _model_call(self, response, on_progress: ProgressSink | None = None):
        try:
            if on_progress is None:
                return await response
            async for item in response:
                if isinstance(item, StylizedArray):
                    return item
                on_progress(*item)
            raise ReplicaFailed("the model's stream ended without a picture")
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
                "content": {t: {"schema": BINARY} for t in RESULT_MEDIA_TYPES},
                "description": "the picture, animation or video (`Range` supported)",
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
        query: StylizeQuery,
    ) -> Response:
        options = resolve_options(self._config, **query)  # before the body is read
        self._media.gate.interactive()
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
        query: StylizeQuery,
    ) -> Response:
        options = resolve_options(self._config, **query)  # before the body is read
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

    @app.post(
        "/v1/jobs",
        status_code=202,
        dependencies=API_KEY,
        summary="Submit a picture, animation or video as a job; follow it, fetch it",
        responses={
            200: {
                "model": JobView,
                "description": "the job made before for these bytes and options",
            },
            202: {"model": JobView, "description": "a new job", "headers": JOB_HEADERS},
            **error_statuses(400, 401, 413, 415, 422, 500, 503, 507),
        },
        openapi_extra={"requestBody": {"required": True, "content": JOB_BODY}},
    )
    async def submit_job_route(self, request: Request, query: StylizeQuery) -> JSONResponse:
        options = resolve_options(self._config, **query, synchronous=False)
        data = await read_single_upload(request, self._config.media.max_bytes, videos=True)
        record, created = await self._submit_job(data, options)
        view = self._jobs.view(record)
        log_fields(request.scope).update(job=record.id, job_state=record.state)
        return JSONResponse(
            view.model_dump(mode="json"),
            status_code=202 if created else 200,
            headers={"Location": view.links["self"]},
        )

    @app.get(
        "/v1/jobs/{job_id}",
        dependencies=API_KEY,
        summary="A job's state, progress and result description",
        responses=error_statuses(401, 404, 500),
    )
    async def job_route(self, job_id: str) -> JobView:
        return await self.job(job_id)

    @app.get(
        "/v1/jobs/{job_id}/events",
        response_class=StreamingResponse,
        dependencies=API_KEY,
        summary="Server-Sent Events: the job at each change, ending with its final state",
        responses={
            200: {
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                "description": "one event per change; a `: keep-alive` comment when idle",
            },
            **error_statuses(401, 404, 500),
        },
    )
    async def job_events_route(self, job_id: str) -> StreamingResponse:
        events = self._jobs.events(job_id)
        first = await anext(events)  # an unknown job answers 404 before the stream starts

        async def stream() -> AsyncIterator[bytes]:
            yield sse_event(self._jobs.view(first))
            async for record in events:
                yield SSE_KEEP_ALIVE if record is None else sse_event(self._jobs.view(record))

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get(
        "/v1/jobs/{job_id}/result",
        response_class=Response,
        dependencies=API_KEY,
        summary="A finished job's output; `Range` requests for video players",
        responses={
            200: {
                "content": {t: {"schema": BINARY} for t in RESULT_MEDIA_TYPES},
                "description": "the picture, animation or video (`Range` supported)",
            },
            206: {"description": "the bytes a `Range: bytes=first-last` header asked for"},
            409: {"model": ErrorBody, "description": "the job is not done"},
            **error_statuses(401, 404, 416, 500),
        },
    )
    async def job_result_route(self, job_id: str, request: Request) -> Response:
        info = (await self._jobs.finished(job_id)).result
        headers = {
            "ETag": f'"{job_id}"',
            "Cache-Control": "private, max-age=3600",
            "Accept-Ranges": "bytes",
        }
        wanted = parse_range(request.headers.get("range"), info.bytes)
        if wanted is None:
            chunks = self._jobs.result_chunks(job_id, info.bytes, RESULT_CHUNK_BYTES)
            headers["Content-Length"] = str(info.bytes)
            return StreamingResponse(chunks, media_type=info.media_type, headers=headers)
        first, last = wanted
        data = await self._jobs.result_range(job_id, first, last - first + 1)
        headers["Content-Range"] = content_range(first, first + len(data) - 1, info.bytes)
        return Response(data, status_code=206, media_type=info.media_type, headers=headers)

    @app.delete(
        "/v1/jobs/{job_id}",
        dependencies=API_KEY,
        summary="Cancel a job and delete its files",
        responses=error_statuses(401, 404, 500),
    )
    async def cancel_job_route(self, job_id: str) -> JobView:
        return await self.cancel_job(job_id)

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
            max_sync_size=min(config.limits.max_sync_size, config.limits.max_size),
            default_format=config.default_format,
            formats=sorted(imaging.MEDIA_TYPES),
            max_bytes=config.limits.max_bytes,
            max_pixels=config.limits.max_pixels,
            max_media_bytes=config.media.max_bytes,
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

    @app.get(
        "/v1/examples",
        dependencies=API_KEY,
        summary="The example photos, and the styles each is warm for",
        responses=error_statuses(401, 500),
    )
    async def examples_route(self) -> ExamplesResponse:
        styles = [style.name for style in self._config.styles]
        return ExamplesResponse(
            size=self._config.default_size,
            format=self._config.default_format,
            warming=self._warming,
            examples=[
                ExampleInfo(
                    name=example.name,
                    url=f"/examples/{quote(example.name)}",
                    media_type=example.media_type,
                    width=example.width,
                    height=example.height,
                    warm={style: self._warm.get((example.name, style), False) for style in styles},
                )
                for example in self._examples.values()
            ],
        )

    # Public like the page and /static: it serves only the photos the operator configured.
    @app.get(
        "/examples/{name}",
        response_class=Response,
        summary="An example photo's bytes, exactly those warmed at start",
        responses={
            200: {"content": {"image/*": {"schema": BINARY}}, "description": "the photo"},
            404: {"model": ErrorBody, "description": "no example of that name"},
            # FastAPI documents one for every route with parameters; ours is the one shape.
            422: {"model": ErrorBody, "description": "a name that is not a path segment"},
            **error_statuses(500),
        },
    )
    async def example_route(self, name: str) -> Response:
        example = self._examples.get(name)
        if example is None:
            raise NotFound(f"no example named {name[:100]!r}; GET /v1/examples lists them")
        headers = {"ETag": f'"{example.etag}"', "Cache-Control": EXAMPLE_CACHE_CONTROL}
        return Response(example.data, media_type=example.media_type, headers=headers)

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
            document = openapi_document(app, self._config)
            document_examples(document, self._examples)
            app.openapi_schema = document
        return app.openapi_schema
