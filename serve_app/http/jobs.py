"""Job routes: submit a picture, animation or video; follow it; fetch it; cancel it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.errors import ErrorBody
from serve_app.http.openapi import (
    BINARY,
    JOB_BODY,
    JOB_HEADERS,
    RESULT_MEDIA_TYPES,
    SSE_EVENT_SCHEMA,
    error_statuses,
)
from serve_app.http.params import API_KEY, Service, StylizeQuery
from serve_app.http.ranges import content_range, parse_range
from serve_app.http.request_log import log_fields
from serve_app.http.uploads import read_single_upload
from serve_app.jobs.service import JobView, sse_event

router = APIRouter()

# Event streams pass proxies unbuffered (nginx reads X-Accel-Buffering) and uncached.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_KEEP_ALIVE = b": keep-alive\n\n"
# A job's result goes out in pieces of this size: a video is never whole in memory.
RESULT_CHUNK_BYTES = 1 << 20


@router.post(
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
async def submit_job_route(request: Request, service: Service, query: StylizeQuery) -> JSONResponse:
    options = service.options(synchronous=False, **query)
    data = await read_single_upload(request, service.config.media.max_bytes, videos=True)
    record, created = await service.submit_job(data, options)
    view = service.jobs.view(record)
    log_fields(request.scope).update(job=record.id, job_state=record.state)
    return JSONResponse(
        view.model_dump(mode="json"),
        status_code=202 if created else 200,
        headers={"Location": view.links["self"]},
    )


@router.get(
    "/v1/jobs/{job_id}",
    dependencies=API_KEY,
    summary="A job's state, progress and result description",
    responses=error_statuses(401, 404, 500),
)
async def job_route(job_id: str, service: Service) -> JobView:
    return await service.job(job_id)


@router.get(
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
async def job_events_route(job_id: str, service: Service) -> StreamingResponse:
    events = service.jobs.events(job_id)
    first = await anext(events)  # an unknown job answers 404 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        yield sse_event(service.jobs.view(first))
        async for record in events:
            yield SSE_KEEP_ALIVE if record is None else sse_event(service.jobs.view(record))

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
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
async def job_result_route(job_id: str, request: Request, service: Service) -> Response:
    jobs = service.jobs
    info = (await jobs.finished(job_id)).result
    headers = {
        "ETag": f'"{job_id}"',
        "Cache-Control": "private, max-age=3600",
        "Accept-Ranges": "bytes",
    }
    wanted = parse_range(request.headers.get("range"), info.bytes)
    if wanted is None:
        chunks = jobs.result_chunks(job_id, info.bytes, RESULT_CHUNK_BYTES)
        headers["Content-Length"] = str(info.bytes)
        return StreamingResponse(chunks, media_type=info.media_type, headers=headers)
    first, last = wanted
    data = await jobs.result_range(job_id, first, last - first + 1)
    headers["Content-Range"] = content_range(first, first + len(data) - 1, info.bytes)
    return Response(data, status_code=206, media_type=info.media_type, headers=headers)


@router.delete(
    "/v1/jobs/{job_id}",
    dependencies=API_KEY,
    summary="Cancel a job and delete its files",
    responses=error_statuses(401, 404, 500),
)
async def cancel_job_route(job_id: str, service: Service) -> JobView:
    return await service.cancel_job(job_id)
