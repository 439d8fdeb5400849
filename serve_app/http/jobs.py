"""Job routes: submit a picture, animation or video; list, follow, fetch and cancel jobs.

A job is its submitter's: with API keys, another key gets 404 for it on every route;
on an open service whoever holds its (random, unguessable) id reaches it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.concurrency import cancel_and_wait
from serve_app.errors import ErrorBody, ServiceError
from serve_app.http.openapi import (
    BINARY,
    JOB_BODY,
    JOB_HEADERS,
    RANGE_HEADERS,
    RESULT_HEADERS,
    RESULT_MEDIA_TYPES,
    SSE_EVENT_SCHEMA,
    error_statuses,
)
from serve_app.http.params import (
    API_CHECKS,
    Owner,
    Service,
    StylizeQuery,
    accept_socket,
    close_socket,
    owner_of_request,
)
from serve_app.http.ranges import content_range, parse_range, range_applies, unchanged
from serve_app.http.request_log import log_fields
from serve_app.http.uploads import read_single_upload
from serve_app.jobs.records import (
    CURSOR,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY_CHARS,
    JobList,
    JobState,
    JobView,
)
from serve_app.jobs.service import JobService
from serve_app.jobs.webhooks import WEBHOOK_EVENTS

router = APIRouter()

# Event streams pass proxies unbuffered (nginx reads X-Accel-Buffering) and uncached.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_KEEP_ALIVE = b": keep-alive\n\n"
# A job's result goes out in pieces of this size: never whole in memory, whatever the range.
RESULT_CHUNK_BYTES = 1 << 20
# RFC 7240: `wait=N` among other preferences, N a token or a quoted string.
_PREFER_WAIT = re.compile(r'(?:^|[,;\s])wait\s*=\s*(\d+|"\d+")(?=$|[,;\s])', re.IGNORECASE)
# The subprotocol a WebSocket follower speaks (offered beside ``bearer.<key>``).
EVENTS_PROTOCOL = "animegan.jobs.v1"
WEBHOOK_EVENTS_PATTERN = r"^{e}(,{e})*$".format(e=f"({'|'.join(WEBHOOK_EVENTS)})")


def _prefer_wait_s(prefer: str | None, most_s: float) -> float:
    """RFC 7240 ``Prefer: wait=N``: how long the caller would wait for the finished job."""
    match = _PREFER_WAIT.search(prefer or "")
    if match is None:
        return 0.0
    digits = match.group(1).strip('"').lstrip("0") or "0"
    return most_s if len(digits) > 9 else min(float(digits), most_s)  # longer: "for ever"


@router.post(
    "/v1/jobs",
    status_code=202,
    dependencies=API_CHECKS,
    summary="Submit a picture, animation or video as a job; follow it, fetch it",
    responses={
        200: {
            "model": JobView,
            "description": "the caller's job made before for this Idempotency-Key (or, with "
            "an API key, these bytes and options), or a new one that finished within the "
            "`Prefer: wait` asked for",
        },
        202: {"model": JobView, "description": "a new job", "headers": JOB_HEADERS},
        **error_statuses(400, 401, 408, 413, 415, 422, 429, 500, 503, 507),
    },
    openapi_extra={"requestBody": {"required": True, "content": JOB_BODY}},
)
async def submit_job_route(
    request: Request,
    service: Service,
    owner: Owner,
    query: StylizeQuery,
    webhook: Annotated[
        str | None, Query(description="a URL told when the job runs or ends (allow-listed)")
    ] = None,
    webhook_events: Annotated[
        str | None,
        Query(description="some of: running, done, failed, cancelled (default: all but running)"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="the same key again (from the same caller) gets the same job back",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            pattern=IDEMPOTENCY_KEY_PATTERN,
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            description="`wait=N` (seconds, RFC 7240): answer with the finished job if it "
            "ends within N s"
        ),
    ] = None,
) -> JSONResponse:
    options = service.options(query, synchronous=False)
    hook = service.jobs.webhooks.check(webhook, webhook_events)  # 422 before the upload
    data = await read_single_upload(
        request,
        service.config.media.max_bytes,
        service.config.limits.upload_idle_timeout_s,
        videos=True,
    )
    record, created = await service.submit_job(
        data, options, owner=owner, idempotency_key=idempotency_key, webhook=hook
    )
    wait_s = _prefer_wait_s(prefer, service.config.jobs.max_wait_s)
    headers = {"Location": f"/v1/jobs/{record.id}"}
    if wait_s and not record.terminal:
        record = await service.jobs.wait(record.id, owner, wait_s)
        headers["Preference-Applied"] = f"wait={wait_s:g}"
    log_fields(request.scope).update(job=record.id, job_state=record.state)
    status = 202 if created and not record.terminal else 200
    return JSONResponse(
        service.jobs.view(record).model_dump(mode="json"), status_code=status, headers=headers
    )


@router.get(
    "/v1/jobs",
    dependencies=API_CHECKS,
    summary="The caller's jobs, newest first, a page at a time",
    responses=error_statuses(401, 403, 422, 500),
)
async def list_jobs_route(
    service: Service,
    owner: Owner,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the page before", pattern=CURSOR.pattern),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
) -> JobList:
    records, next_cursor = await service.jobs.list(owner, state, cursor, limit)
    return JobList(jobs=[service.jobs.view(r) for r in records], next_cursor=next_cursor)


@router.get(
    "/v1/jobs/{job_id}",
    dependencies=API_CHECKS,
    summary="A job's state, progress and result description",
    responses=error_statuses(401, 404, 500),
)
async def job_route(job_id: str, service: Service, owner: Owner) -> JobView:
    return service.jobs.view(await service.jobs.get(job_id, owner))


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    dependencies=API_CHECKS,
    summary="Server-Sent Events: the job at each change, ending with its final state "
    "(the same events over a WebSocket at this path)",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            "description": "one event per change; a `: keep-alive` comment when idle",
        },
        **error_statuses(401, 404, 500),
    },
)
async def job_events_route(job_id: str, service: Service, owner: Owner) -> StreamingResponse:
    jobs = service.jobs
    events = jobs.events(job_id, owner)
    first = await anext(events)  # an unknown job answers 404 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        yield sse_event(jobs.view(first))
        async for record in events:
            yield SSE_KEEP_ALIVE if record is None else sse_event(jobs.view(record))

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.websocket("/v1/jobs/{job_id}/events")
async def job_events_socket(websocket: WebSocket, job_id: str) -> None:
    """The job's events as JSON text messages ``{"event": state, "data": job}``; the
    socket closes with 1000 after the final state, or with 4000 + the HTTP status the
    same request would get (4401, 4403 for a web page of another site, 4404) and a reason.

    Browsers cannot set headers on a WebSocket: they offer the API key as the
    subprotocol ``bearer.<key>`` beside ``animegan.jobs.v1`` (the one the server picks)."""
    if not await accept_socket(websocket, EVENTS_PROTOCOL):
        return
    service = websocket.app.state.service
    events = service.jobs.events(job_id, owner_of_request(websocket))
    # The client's departure arrives only as a message to read (Serve stops watching an
    # accepted socket's connection): read while sending, or a socket whose job does not
    # change would hold its follower and its request until the job ends.
    sending = asyncio.ensure_future(_send_events(websocket, service.jobs, events))
    leaving = asyncio.ensure_future(_until_the_client_leaves(websocket))
    try:
        await asyncio.wait({sending, leaving}, return_when=asyncio.FIRST_COMPLETED)
        if sending.done():
            sending.result()
    except ServiceError as error:
        await close_socket(websocket, error)
    except WebSocketDisconnect:
        pass
    finally:
        await cancel_and_wait(leaving)
        await cancel_and_wait(sending)  # its step over before the generator is closed
        await events.aclose()


async def _send_events(websocket: WebSocket, jobs: JobService, events: AsyncIterator) -> None:
    async for record in events:
        if record is None:
            continue  # idle: the server's pings keep the socket alive
        view = jobs.view(record).model_dump(mode="json")
        await websocket.send_json({"event": record.state, "data": view})
    await websocket.close(1000, "the job ended")


async def _until_the_client_leaves(websocket: WebSocket) -> None:
    """Reads what the client sends (nothing is asked of it: dropped) until it leaves."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.get(
    "/v1/jobs/{job_id}/result",
    response_class=Response,
    dependencies=API_CHECKS,
    summary="A finished job's output; `Range` requests for video players",
    responses={
        200: {
            "content": {t: {"schema": BINARY} for t in RESULT_MEDIA_TYPES},
            "description": "the picture, animation or video (`Range` supported)",
            "headers": RESULT_HEADERS,
        },
        206: {
            "content": {t: {"schema": BINARY} for t in RESULT_MEDIA_TYPES},
            "description": "the bytes a `Range: bytes=first-last` header asked for",
            "headers": RANGE_HEADERS,
        },
        304: {"description": "`If-None-Match` names the result's ETag: the copy sent is current"},
        409: {"model": ErrorBody, "description": "the job is not done"},
        **error_statuses(401, 404, 416, 500),
    },
)
async def job_result_route(
    job_id: str, request: Request, service: Service, owner: Owner
) -> Response:
    jobs = service.jobs
    record = await jobs.finished(job_id, owner)
    size, etag = record.result.bytes, f'"{job_id}-{record.result_name}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes"}
    if unchanged(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    wanted = None
    if range_applies(request.headers.get("if-range"), etag):
        wanted = parse_range(request.headers.get("range"), size)
    first, last = wanted if wanted is not None else (0, size - 1)
    headers["Content-Length"] = str(last - first + 1)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = content_range(first, last, size)
    if request.method == "HEAD":  # the headers alone: no bytes read from the store
        return Response(status_code=status, media_type=record.result.media_type, headers=headers)
    chunks = jobs.result_chunks(record, first, last, RESULT_CHUNK_BYTES)
    return StreamingResponse(
        chunks, status_code=status, media_type=record.result.media_type, headers=headers
    )


@router.delete(
    "/v1/jobs/{job_id}",
    dependencies=API_CHECKS,
    summary="Cancel a job and delete its files (its record stays, `cancelled`, until it expires)",
    responses=error_statuses(401, 404, 500),
)
async def cancel_job_route(job_id: str, service: Service, owner: Owner) -> JobView:
    return service.jobs.view(await service.jobs.cancel(job_id, owner))


def sse_event(record: JobView) -> bytes:
    """One Server-Sent Event: the event name is the state, the data the job's JSON."""
    return f"event: {record.state}\ndata: {json.dumps(record.model_dump(mode='json'))}\n\n".encode()
