"""The service over HTTP, for code that waits: ``Client``.

Every call answers the service's JSON or a ``Picture``, or raises the service's own error
class (``serve_app.errors``: ``code``, ``message``, ``status``); no answer at all is
``NoAnswer``. A call answered 503 or 429 with ``Retry-After`` is sent again after that
delay, a few times. Following a job reads its Server-Sent Events and, when the stream
breaks, polls the job instead. ``aio.AsyncClient`` is the same for asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from serve_app.client import wire
from serve_app.client.live import LiveSession, open_live
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


class Client:
    """The service at ``url`` (default ``ANIMEGAN_URL``, then ``http://127.0.0.1:8000``),
    as ``api_key`` (default ``ANIMEGAN_API_KEY``; none: an open service)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = wire.DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        poll_interval_s: float = wire.POLL_INTERVAL_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = wire.Settings.resolve(url, api_key, timeout_s)
        self.url = self._settings.url
        self._http = httpx.Client(**self._settings.http_client_args(), transport=transport)
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- pictures -----------------------------------------------------------------------

    def live(self, **options: Any) -> LiveSession:
        """``/v1/live``: a live camera stream (a WebSocket) with the live options (``style``,
        ``size``, ``strength``, ``preserve_color``, ``quality``); a context manager."""
        return open_live(self._settings, options)

    def stylize(self, image: Upload, *, media_type: str | None = None, **options: Any) -> Picture:
        """``POST /v1/stylize``: one picture (or a small animation) made while you wait.
        ``options``: the service's stylize options (``style``, ``size``, ``format``...)."""
        call = wire.stylize_call(options, media_type or wire.media_type_of(upload_name(image)))
        response = self._send(call, content=lambda: upload_body(image))
        return wire.picture_of(response)

    def stylize_batch(self, images: Sequence[Upload], **options: Any) -> list[wire.BatchOutcome]:
        """``POST /v1/stylize/batch``: several pictures in one call, each made or refused
        alone (its ``picture`` or its ``error``), in the order given."""
        response = self._send(wire.batch_call(options), files=lambda: wire.batch_files(images))
        return wire.batch_of(response.json(), options.get("style"))

    def styles(self) -> dict:
        return self._json(Call("GET", "/v1/styles"))

    def stats(self) -> dict:
        return self._json(Call("GET", "/v1/stats"))

    # --- jobs ---------------------------------------------------------------------------

    def submit_job(
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
        """``POST /v1/jobs``: a video, animation or large picture made in the background;
        answers the job. ``wait_s``: ask the service to answer once it is done, if it is
        within that long (``Prefer: wait``)."""
        call = wire.submit_call(
            options,
            media_type or wire.media_type_of(upload_name(media)),
            idempotency_key,
            webhook,
            webhook_events,
            wait_s,
        )
        return self._json(call, content=lambda: upload_body(media))

    def job(self, job_id: str) -> dict:
        return self._json(Call("GET", wire.job_path(job_id)))

    def jobs_page(
        self, state: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> dict:
        """``GET /v1/jobs``: one page, ``{"jobs": [...], "next_cursor"}``, newest first."""
        return self._json(wire.list_call(state, cursor, limit))

    def jobs(self, state: str | None = None, limit: int | None = None) -> Iterator[dict]:
        """Every job of yours, newest first, following ``next_cursor`` to the end."""
        cursor, seen = None, set()
        while True:
            page = self.jobs_page(state, cursor, limit)
            yield from page["jobs"]
            cursor = wire.next_cursor(page, seen)
            if cursor is None:
                return

    def cancel(self, job_id: str) -> dict:
        return self._json(Call("DELETE", wire.job_path(job_id)))

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict:
        """The job once it has ended (or as it is after ``timeout_s``); ``on_progress``
        hears it at each change on the way."""
        job = None
        for job in self.follow(job_id, timeout_s):
            if on_progress is not None:
                on_progress(job)
        if job is None:
            job = self.job(job_id)
        return job

    def result(self, job_id: str, target: Path | str) -> Download:
        """The finished job's output, streamed to a file beside ``target`` and renamed to
        it once whole: ``target`` is never left half-written."""
        target, written = Path(target), 0
        path = f"{wire.job_path(job_id)}/result"
        with (
            wire.written_whole(target) as file,
            self._stream(path, headers={"Accept": "*/*"}) as answer,
        ):
            for chunk in answer.iter_bytes(wire.DOWNLOAD_CHUNK_BYTES):
                file.write(chunk)
                written += len(chunk)
            media_type = answer.headers.get("content-type", wire.UNKNOWN_MEDIA_TYPE)
        return Download(target, written, media_type)

    def events(
        self, job_id: str, read_timeout_s: float = wire.EVENTS_READ_TIMEOUT_S
    ) -> Iterator[dict]:
        """``GET /v1/jobs/{id}/events``: the job at each change, as the service sends it,
        to the end of the stream."""
        for job in self._changes(job_id, read_timeout_s):
            if job is not None:
                yield job

    def _changes(self, job_id: str, read_timeout_s: float) -> Iterator[dict | None]:
        """The job's events, and None at each keep-alive (a wait's end can be checked)."""
        timeout = self._settings.timeout(read_s=read_timeout_s)
        path = f"{wire.job_path(job_id)}/events"
        parser = wire.SseParser()
        with self._stream(path, headers={"Accept": "text/event-stream"}, timeout=timeout) as answer:
            for line in answer.iter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield wire.job_of_event(event)
                elif wire.is_keep_alive(line):
                    yield None

    def follow(self, job_id: str, wait_s: float | None = None) -> Iterator[dict]:
        """The job at each change to its end (or for ``wait_s``, ending at the first event
        or keep-alive past it: within 15 s while the job does not change): its events, or
        its record polled every ``poll_interval_s`` once the stream breaks off or fails. A
        refusal (4xx: no such job, not yours) is raised, not polled."""
        deadline = Deadline(self._clock, wait_s)
        last = None
        events = self._changes(job_id, deadline.read_timeout_s())
        try:
            for job in events:
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
            events.close()
        if deadline.past():
            return
        logger.warning("job %s: %s; polling every %g s", job_id, reason, self.poll_interval_s)
        while True:
            job = self.job(job_id)
            if last is None or wire.changed(last, job):
                yield job
            last = job
            if job["state"] in TERMINAL_STATES or deadline.past():
                return
            self._sleep(deadline.left(self.poll_interval_s))

    # --- plumbing -----------------------------------------------------------------------

    def _send(self, call: Call, **body: Callable[[], Any]) -> httpx.Response:
        """``call`` sent, and sent again after a 503 or 429's ``Retry-After`` (a few times);
        ``body``: makers of the request's content or files, called again for each send."""
        retries = 0
        while True:
            try:
                return self._send_once(call, {name: make() for name, make in body.items()})
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
            self._sleep(wait_s)

    def _send_once(self, call: Call, body: Mapping[str, Any]) -> httpx.Response:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, headers=call.headers, **body
            )
        except httpx.HTTPError as exc:
            raise wire.no_answer(self.url, exc) from None
        finally:
            for value in body.values():
                if hasattr(value, "close"):
                    value.close()
        if wire.failed(response):
            raise wire.error_of(response)
        return response

    def _json(self, call: Call, **body: Callable[[], Any]) -> dict:
        response = self._send(call, **body)
        try:
            return response.json()
        except ValueError:
            raise NoAnswer(f"{call.method} {call.path}: not JSON", "bad_response") from None

    @contextlib.contextmanager
    def _stream(self, path: str, **request: Any) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives; an error status or a broken connection
        (before or while the body is read) raises."""
        try:
            with self._http.stream("GET", path, **request) as response:
                if wire.failed(response):
                    response.read()
                    raise wire.error_of(response)
                yield response
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise wire.no_answer(self.url, exc) from None
