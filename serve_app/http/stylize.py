"""Routes that answer with pictures: one (`POST /v1/stylize`) or several (`/batch`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve_app.errors import MissingImage
from serve_app.http.batch import batch_body
from serve_app.http.openapi import (
    BINARY,
    PICTURE_HEADERS,
    PICTURE_MEDIA_TYPES,
    RAW_BODY,
    STYLIZE_ERRORS,
    multipart_body,
)
from serve_app.http.params import API_CHECKS, Owner, Service, StylizeQuery
from serve_app.http.request_log import log_fields
from serve_app.http.uploads import read_form_files, read_single_upload
from serve_app.service.wire import BatchResponse

router = APIRouter()


@router.post(
    "/v1/stylize",
    response_class=Response,
    dependencies=API_CHECKS,
    summary="Stylize one picture",
    responses={
        200: {
            "content": {t: {"schema": BINARY} for t in PICTURE_MEDIA_TYPES},
            "description": "the picture, or the animation (videos are made as jobs)",
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
    request: Request, service: Service, query: StylizeQuery, owner: Owner
) -> Response:
    options = service.options(query)  # before the body is read
    service.media.gate.interactive()
    limits = service.config.limits
    data = await read_single_upload(request, limits.max_bytes, limits.upload_idle_timeout_s)
    result = await service.stylize(data, options, owner)
    log_fields(request.scope).update(
        style=result.style,
        size=max(result.width, result.height),
        format=result.media_type,
        cache=result.cache,
        bytes_in=len(data),
        timings_ms={name: round(ms, 1) for name, ms in result.timings_ms.items()},
    )
    return Response(result.data, media_type=result.media_type, headers=result.headers())


@router.post(
    "/v1/stylize/batch",
    response_class=Response,
    dependencies=API_CHECKS,
    summary="Stylize several pictures; each succeeds or fails alone",
    responses={200: {"model": BatchResponse}, **STYLIZE_ERRORS},
    openapi_extra={
        "requestBody": {"required": True, "content": multipart_body("images", many=True)}
    },
)
async def stylize_batch_route(
    request: Request, service: Service, query: StylizeQuery, owner: Owner
) -> Response:
    options = service.options(query)  # before the body is read
    count, limits = service.config.max_batch_images, service.config.limits
    files = await read_form_files(
        request, "images", count, limits.max_bytes, limits.upload_idle_timeout_s
    )
    if not files:
        raise MissingImage("send the pictures as multipart fields 'images'")
    outcomes = await service.stylize_many(files, options, owner)
    log_fields(request.scope).update(style=options.style, images=len(files))
    body = await asyncio.to_thread(batch_body, outcomes)
    return Response(body, media_type="application/json")
