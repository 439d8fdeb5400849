"""The service over HTTP, for asyncio: ``AsyncClient``, the twin of ``sync.Client``.

The same calls with the same names, answers and errors; the requests, the answers' reading
and the retry rule are ``wire``'s, shared with the sync client, so the two differ only in
how they send and wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from serve_app.client import wire
from serve_app.client.live import AsyncLiveSession, open_live_async
from serve_app.client.wire import (
    Call,
    Deadline,
    Download,
    Picture,
    ProgressCallback,
    Upload,
    upload_body,
    upload_name,
)
from serve_app.errors import NoAnswer, ServiceError
from serve_app.jobs.records import TERMINAL_STATES

logger = logging.getLogger(__name__)


class AsyncClient:
    """The service at ``url`` (default ``ANIMEGAN_URL``), as ``api_key`` (default
    ``ANIMEGAN_API_KEY``), for ``async`` code."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = wire.DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        poll_interval_s: float = wire.POLL_INTERVAL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = wire.Settings.resolve(url, api_key, timeout_s)
        self.url = self._settings.url
        self._http = httpx.AsyncClient(**self._settings.http_client_args(), transport=transport)
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- pictures -----------------------------------------------------------------------

    async def live(self, **options: Any) -> AsyncLiveSession:
        """``/v1/live``: a live camera stream (``Client.live``'s twin); ``async with``."""
        return await open_live_async(self._settings, options)

    async def stylize(
        self, image: Upload, *, media_type: str | None = None, **options: Any
    ) -> Picture:
        call = wire.stylize_call(options, media_type or wire.media_type_of(upload_name(image)))
        response = await self._send(call, content=lambda: upload_body(image, stream=False))
        return wire.picture_of(response)

    async def stylize_batch(
        self, images: Sequence[Upload], **options: Any
    ) -> list[wire.BatchOutcome]:
        response = await self._send(
            wire.batch_call(options), files=lambda: wire.batch_files(images)
        )
        return wire.batch_of(response.json(), options.get("style"))

    async def styles(self) -> dict:
        return await self._json(Call("GET", "/v1/styles"))

    async def stats(self) -> dict:
        return await self._json(Call("GET", "/v1/stats"))

    # --- jobs ---------------------------------------------------------------------------

    async def submit_job(
        self,
        media: Upload,
        *,
        media_type: str | None = None,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        webhook_events: str | None = None,
        wait_s: float | None = None,
        **options: Any,
    ) -> dict:
        call = wire.submit_call(
            options,
            media_type or wire.media_type_of(upload_name(media)),
            idempotency_key,
            webhook,
            webhook_events,
            wait_s,
        )
        return await self._json(call, content=lambda: upload_body(media, stream=False))

    async def job(self, job_id: str) -> dict:
        return await self._json(Call("GET", wire.job_path(job_id)))

    async def jobs_page(
        self, state: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> dict:
        return await self._json(wire.list_call(state, cursor, limit))

    async def jobs(self, state: str | None = None, limit: int | None = None) -> AsyncIterator[dict]:
        cursor, seen = None, set()
        while True:
            page = await self.jobs_page(state, cursor, limit)
            for job in page["jobs"]:
                yield job
            cursor = wire.next_cursor(page, seen)
            if cursor is None:
                return

    async def cancel(self, job_id: str) -> dict:
        return await self._json(Call("DELETE", wire.job_path(job_id)))

    async def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict:
        job = None
        async for job in self.follow(job_id, timeout_s):
            if on_progress is not None:
                on_progress(job)
        if job is None:
            job = await self.job(job_id)
        return job

    async def result(self, job_id: str, target: Path | str) -> Download:
        """The finished job's output, streamed to a file that appears only once whole."""
        target, written = Path(target), 0
        path = f"{wire.job_path(job_id)}/result"
        with wire.written_whole(target) as file:
            async with self._stream(path, headers={"Accept": "*/*"}) as answer:
                async for chunk in answer.aiter_bytes(wire.DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    written += len(chunk)
                media_type = answer.headers.get("content-type", wire.UNKNOWN_MEDIA_TYPE)
        return Download(target, written, media_type)

    async def events(
        self, job_id: str, read_timeout_s: float = wire.EVENTS_READ_TIMEOUT_S
    ) -> AsyncIterator[dict]:
        async for job in self._changes(job_id, read_timeout_s):
            if job is not None:
                yield job

    async def _changes(self, job_id: str, read_timeout_s: float) -> AsyncIterator[dict | None]:
        """The job's events, and None at each keep-alive (a wait's end can be checked)."""
        timeout = self._settings.timeout(read_s=read_timeout_s)
        path = f"{wire.job_path(job_id)}/events"
        parser = wire.SseParser()
        headers = {"Accept": "text/event-stream"}
        async with self._stream(path, headers=headers, timeout=timeout) as answer:
            async for line in answer.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield wire.job_of_event(event)
                elif wire.is_keep_alive(line):
                    yield None

    async def follow(self, job_id: str, wait_s: float | None = None) -> AsyncIterator[dict]:
        """As ``Client.follow``: events, then polling once the stream breaks."""
        deadline = Deadline(self._clock, wait_s)
        last = None
        events = self._changes(job_id, deadline.read_timeout_s())
        try:
            async for job in events:
                if job is not None:
                    last = job
                    yield job
                    if job["state"] in TERMINAL_STATES:
                        return
                if deadline.past():
                    return
            reason = "the event stream ended before the job did"
        except ServiceError as error:
            if wire.refused(error):
                raise
            reason = f"the event stream broke ({wire.describe(error)})"
        finally:
            await events.aclose()
        if deadline.past():
            return
        logger.warning("job %s: %s; polling every %g s", job_id, reason, self.poll_interval_s)
        while True:
            job = await self.job(job_id)
            if last is None or wire.changed(last, job):
                yield job
            last = job
            if job["state"] in TERMINAL_STATES or deadline.past():
                return
            await self._sleep(deadline.left(self.poll_interval_s))

    # --- plumbing -----------------------------------------------------------------------

    async def _send(self, call: Call, **body: Callable[[], Any]) -> httpx.Response:
        retries = 0
        while True:
            try:
                return await self._send_once(call, {name: make() for name, make in body.items()})
            except ServiceError as error:
                wait_s = wire.retry_wait_s(error, retries)
                if wait_s is None:
                    raise
                retries += 1
                logger.warning(
                    "%s; sent again in %g s (%d of %d)",
                    wire.describe(error),
                    wait_s,
                    retries,
                    wire.RETRIES,
                )
            await self._sleep(wait_s)

    async def _send_once(self, call: Call, body: Mapping[str, Any]) -> httpx.Response:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, headers=call.headers, **body
            )
        except httpx.HTTPError as exc:
            raise wire.no_answer(self.url, exc) from None
        if wire.failed(response):
            raise wire.error_of(response)
        return response

    async def _json(self, call: Call, **body: Callable[[], Any]) -> dict:
        response = await self._send(call, **body)
        try:
            return response.json()
        except ValueError:
            raise NoAnswer(f"{call.method} {call.path}: not JSON", "bad_response") from None

    @contextlib.asynccontextmanager
    async def _stream(self, path: str, **request: Any) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream("GET", path, **request) as response:
                if wire.failed(response):
                    await response.aread()
                    raise wire.error_of(response)
                yield response
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise wire.no_answer(self.url, exc) from None
