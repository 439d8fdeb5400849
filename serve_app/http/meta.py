"""Routes about the service: styles, figures, examples, health and the page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from serve_app.errors import ErrorBody, NotFound
from serve_app.http.openapi import BINARY, error_statuses
from serve_app.http.params import API_CHECKS, Service
from serve_app.http.ranges import unchanged
from serve_app.service.wire import (
    ExamplesResponse,
    HealthResponse,
    ReadyResponse,
    StatsResponse,
    StylesResponse,
)

router = APIRouter()

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# An example's bytes are fixed for a deploy; an hour bounds how long a browser keeps an
# old photo after a redeploy changes it.
EXAMPLE_CACHE_CONTROL = "public, max-age=3600"


@router.get(
    "/v1/styles",
    dependencies=API_CHECKS,
    summary="The styles served, the defaults and the limits",
    responses=error_statuses(401, 500),
)
async def styles_route(service: Service) -> StylesResponse:
    return service.styles()


@router.get(
    "/v1/stats",
    dependencies=API_CHECKS,
    summary="Cache figures and one model replica's own report",
    responses=error_statuses(401, 500),
)
async def stats_route(service: Service) -> StatsResponse:
    return await service.stats()


@router.get(
    "/v1/examples",
    dependencies=API_CHECKS,
    summary="The example photos, and the styles each is warm for",
    responses=error_statuses(401, 500),
)
async def examples_route(service: Service) -> ExamplesResponse:
    return service.examples_info()


# Public like the page and /static: it serves only the photos the operator configured.
@router.get(
    "/examples/{name}",
    response_class=Response,
    summary="An example photo's bytes, exactly those warmed at start",
    responses={
        200: {"content": {"image/*": {"schema": BINARY}}, "description": "the photo"},
        304: {"description": "`If-None-Match` names the photo's ETag: the copy sent is current"},
        404: {"model": ErrorBody, "description": "no example of that name"},
        # FastAPI documents one for every route with parameters; ours is the one shape.
        422: {"model": ErrorBody, "description": "a name that is not a path segment"},
        **error_statuses(500),
    },
)
async def example_route(name: str, request: Request, service: Service) -> Response:
    example = service.example(name)
    etag = f'"{example.etag}"'
    headers = {"ETag": etag, "Cache-Control": EXAMPLE_CACHE_CONTROL}
    if unchanged(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(example.data, media_type=example.media_type, headers=headers)


# Probes carry no key: /healthz and /readyz are public and say nothing about the work.
@router.get("/healthz", summary="200 while the process lives", responses=error_statuses(500))
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    summary="200 once a model replica has answered and the examples are warm; 503 before",
    responses=error_statuses(500, 503),
)
async def readyz(service: Service) -> ReadyResponse:
    return service.ready()


@router.get("/", include_in_schema=False)
async def page():
    index = WEB_DIR / "index.html"
    if not index.is_file():
        raise NotFound("the upload page is not installed")
    return FileResponse(index)
