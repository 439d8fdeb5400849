"""A client of a running service's jobs over HTTP: ``/v1/jobs`` and the routes under it.

Every call answers the service's JSON (a job as ``JobView``, a page as ``JobList``) or
raises ``JobsError`` with the service's ``{"error": {"code", "message"}}``; a connection
that fails, times out or breaks off is a ``JobsError`` without a status. Following a job
reads its Server-Sent Events and, when the stream breaks, polls the job instead. A
submission the service answers 503 with ``Retry-After`` is sent again a few times.

No argparse and no printing here: the command (``cli/jobs.py``) does both. The API key
goes in the ``Authorization`` header only, never in a URL, a message or a log line.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import mimetypes
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from serve_app.jobs.records import TERMINAL_STATES

logger = logging.getLogger(__name__)

URL_ENV = "ANIMEGAN_URL"
API_KEY_ENV = "ANIMEGAN_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
# The service takes a raw body typed image/* or video/*, or this for a file whose type its
# name does not tell (it finds out what the bytes are itself).
UNKNOWN_MEDIA_TYPE = "application/octet-stream"
SUBMIT_RETRIES = 3  # times a submission answered 503 with Retry-After is sent again
MAX_RETRY_WAIT_S = 30.0  # the longest wait before one, whatever Retry-After asks
POLL_INTERVAL_S = 1.0  # following a job without its event stream
# The service sends a keep-alive comment every 15 s: this long without a line, the event
# stream is dead.
EVENTS_READ_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK_BYTES = 1 << 20


class JobsError(Exception):
    """A request that did not succeed: the service's error (``status`` its HTTP status), or
    no answer at all (``status`` None: unreachable, timed out, broken off)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def refused(self) -> bool:
        """The service refused the request (4xx): sending it again changes nothing."""
        return self.status is not None and 400 <= self.status < 500

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}"


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


@dataclass(frozen=True)
class Download:
    path: Path
    bytes: int
    media_type: str


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from a stream's lines (line endings removed): comments (the
    service's ``: keep-alive``) skipped, ``data`` lines joined, an event dispatched at each
    blank line; an event cut off by the stream's end is dropped, as the standard says."""
    event, data = "", []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


def media_type_of(path: Path) -> str:
    """What a file's name says it is, as the upload's Content-Type."""
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or UNKNOWN_MEDIA_TYPE


def error_of(response: httpx.Response) -> JobsError:
    """The service's error from a read response; a body not in its form (a proxy's page)
    keeps its status, with ``http_<status>`` as the code."""
    retry_after_s = _retry_after_s(response.headers.get("retry-after"))
    try:
        error = response.json()["error"]
        return JobsError(
            str(error["code"]), str(error["message"]), response.status_code, retry_after_s
        )
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return JobsError(f"http_{response.status_code}", text, response.status_code, retry_after_s)


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After``: seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _no_answer(url: str, exc: Exception) -> JobsError:
    if isinstance(exc, httpx.TimeoutException):
        return JobsError("timeout", f"{url} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return JobsError("unreachable", f"cannot reach {url}: {exc}")
    return JobsError("connection_lost", f"{url}: {type(exc).__name__}: {exc}")


class JobsClient:
    """The job routes of the service at ``url``, as ``api_key`` (None: an open service)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=self._timeout(), transport=transport
        )
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the routes ---------------------------------------------------------------------

    def submit(
        self,
        path: Path,
        options: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        webhook_events: str | None = None,
    ) -> dict:
        """``POST /v1/jobs``: the file as the raw body typed by its name, the options as
        query parameters; 503 with ``Retry-After`` is waited out ``SUBMIT_RETRIES`` times."""
        params = {name: _query_value(v) for name, v in (options or {}).items() if v is not None}
        if webhook is not None:
            params["webhook"] = webhook
        if webhook_events is not None:
            params["webhook_events"] = webhook_events
        headers = {"Content-Type": media_type_of(path)}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        retries = 0
        while True:
            with path.open("rb") as body:  # streamed, and read again for a retry
                try:
                    return self._json(
                        "POST", "/v1/jobs", params=params, headers=headers, content=body
                    )
                except JobsError as error:
                    retries += 1
                    busy = error.status == 503 and error.retry_after_s is not None
                    if not busy or retries > SUBMIT_RETRIES:
                        raise
                    wait_s = min(error.retry_after_s, MAX_RETRY_WAIT_S)
                    logger.warning(
                        "%s; sending it again in %g s (%d of %d)",
                        error,
                        wait_s,
                        retries,
                        SUBMIT_RETRIES,
                    )
            self._sleep(wait_s)

    def list_page(
        self, state: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> dict:
        """``GET /v1/jobs``: one page, ``{"jobs": [...], "next_cursor"}``, newest first."""
        params = {"state": state, "cursor": cursor, "limit": limit}
        given = {name: value for name, value in params.items() if value is not None}
        return self._json("GET", "/v1/jobs", params=given)

    def iter_jobs(self, state: str | None = None, limit: int | None = None) -> Iterator[dict]:
        """Every job of every page, following ``next_cursor`` to the end."""
        cursor, seen = None, set()
        while True:
            page = self.list_page(state, cursor, limit)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if cursor is None:
                return
            if cursor in seen:
                raise JobsError("bad_cursor", f"the service gave the cursor {cursor!r} twice")
            seen.add(cursor)

    def get(self, job_id: str) -> dict:
        return self._json("GET", _job_path(job_id))

    def cancel(self, job_id: str) -> dict:
        return self._json("DELETE", _job_path(job_id))

    def download_result(self, job_id: str, target: Path) -> Download:
        """The finished job's output, streamed to a file beside ``target`` and renamed to
        it once whole: ``target`` is never left half-written."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        written = 0
        try:
            with (
                partial.open("xb") as file,
                self._stream(f"{_job_path(job_id)}/result", headers={"Accept": "*/*"}) as answer,
            ):
                for chunk in answer.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    written += len(chunk)
                file.flush()
                os.fsync(file.fileno())
                media_type = answer.headers.get("content-type", UNKNOWN_MEDIA_TYPE)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return Download(target, written, media_type)

    def events(self, job_id: str, read_timeout_s: float = EVENTS_READ_TIMEOUT_S) -> Iterator[dict]:
        """``GET /v1/jobs/{id}/events``: the job at each change, as the service sends it,
        to the end of the stream."""
        timeout = self._timeout(read_s=read_timeout_s)
        path = f"{_job_path(job_id)}/events"
        with self._stream(path, headers={"Accept": "text/event-stream"}, timeout=timeout) as answer:
            for event in parse_sse(answer.iter_lines()):
                try:
                    job = json.loads(event.data)
                except ValueError:
                    raise JobsError(
                        "bad_event", f"an event that is not JSON: {event.data[:80]!r}"
                    ) from None
                if not isinstance(job, dict) or "state" not in job:
                    raise JobsError("bad_event", f"an event that is not a job: {event.data[:80]!r}")
                yield job

    def follow(self, job_id: str, wait_s: float | None = None) -> Iterator[dict]:
        """The job at each change to its end (or for ``wait_s``): its events, or its record
        polled every ``poll_interval_s`` once the stream breaks off or fails. A refusal
        (4xx: no such job, not yours) is raised, not polled."""
        deadline = None if wait_s is None else self._clock() + wait_s
        last = None
        events = self.events(job_id, self._read_timeout_s(deadline))
        try:
            for job in events:
                last = job
                yield job
                if job["state"] in TERMINAL_STATES or self._past(deadline):
                    return
            reason = "the event stream ended before the job did"
        except JobsError as error:
            if error.refused:
                raise
            reason = f"the event stream broke ({error})"
        finally:
            events.close()
        if self._past(deadline):
            return
        logger.warning("job %s: %s; polling every %g s", job_id, reason, self.poll_interval_s)
        while True:
            job = self.get(job_id)
            if last is None or _changed(last, job):
                yield job
            last = job
            if job["state"] in TERMINAL_STATES or self._past(deadline):
                return
            self._sleep(self._time_left(deadline, self.poll_interval_s))

    # --- plumbing -----------------------------------------------------------------------

    def _json(self, method: str, path: str, **request: Any) -> dict:
        try:
            response = self._http.request(method, path, **request)
        except httpx.HTTPError as exc:
            raise _no_answer(self.url, exc) from None
        if response.is_error:
            raise error_of(response)
        try:
            return response.json()
        except ValueError:
            raise JobsError(
                "bad_response", f"{method} {path}: not JSON", response.status_code
            ) from None

    @contextlib.contextmanager
    def _stream(self, path: str, **request: Any) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives; an error status or a broken connection
        (before or while the body is read) raises ``JobsError``."""
        try:
            with self._http.stream("GET", path, **request) as response:
                if response.is_error:
                    response.read()
                    raise error_of(response)
                yield response
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise _no_answer(self.url, exc) from None

    def _timeout(self, read_s: float | None = None) -> httpx.Timeout:
        seconds = self._timeout_s
        return httpx.Timeout(seconds, connect=min(seconds, 10.0), read=read_s or seconds)

    def _past(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock() >= deadline

    def _time_left(self, deadline: float | None, most_s: float) -> float:
        return most_s if deadline is None else max(0.0, min(most_s, deadline - self._clock()))

    def _read_timeout_s(self, deadline: float | None) -> float:
        """The stream's read timeout: a dead stream's, or the wait's end when sooner."""
        return max(0.1, self._time_left(deadline, EVENTS_READ_TIMEOUT_S))


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _changed(before: dict, after: dict) -> bool:
    """A polled job worth showing: its state or progress moved (``elapsed_s`` always does)."""
    fields = ("state", "progress", "frames_done", "updated_at")
    return any(before.get(name) != after.get(name) for name in fields)
