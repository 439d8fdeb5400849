"""What the sync and async clients share: requests as data, answers read.

The service's routes as ``Call`` values (method, path, query, headers), uploads as bodies,
the stylize options checked against the server's own declaration (``option_fields``), an
error answer read into the service's own exception class, ``Retry-After`` read and
bounded, Server-Sent Events parsed. No sockets and no sleeping here: ``sync.Client``
and ``aio.AsyncClient`` send the calls and wait, each in its own way.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import mimetypes
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from serve_app.errors import NoAnswer, ServiceError, error_from_answer
from serve_app.options import option_fields

URL_ENV = "ANIMEGAN_URL"
API_KEY_ENV = "ANIMEGAN_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
# The service takes a raw body typed image/* or video/*, or this for a file whose type its
# name does not tell (it finds out what the bytes are itself).
UNKNOWN_MEDIA_TYPE = "application/octet-stream"
RETRIES = 3  # times a call answered 503 or 429 with Retry-After is sent again
MAX_RETRY_WAIT_S = 30.0  # the longest wait before one, whatever Retry-After asks
RETRIED_STATUSES = (429, 503)
POLL_INTERVAL_S = 1.0  # following a job without its event stream
# The service sends a keep-alive comment every 15 s: this long without a line, the event
# stream is dead.
EVENTS_READ_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK_BYTES = 1 << 20

Upload = bytes | Path | str | IO[bytes]  # bytes, a file's path, or a file open for reading
ProgressCallback = Callable[[dict], None]  # hears a followed job at each change


@dataclass(frozen=True)
class Picture:
    """A stylized picture (or animation) as the service answered it."""

    data: bytes
    media_type: str
    cache: str | None = None  # hit, miss or coalesced
    style: str | None = None
    width: int | None = None  # told by a batch's answer
    height: int | None = None


@dataclass(frozen=True)
class BatchOutcome:
    """One picture of a batch: its ``picture``, or the ``error`` it alone would have had."""

    index: int
    picture: Picture | None = None
    error: ServiceError | None = None


@dataclass(frozen=True)
class Download:
    path: Path
    bytes: int
    media_type: str


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


@dataclass(frozen=True)
class Call:
    """One request, before it is sent."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Where the service is, how it is asked, and how long an answer may take."""

    url: str
    api_key: str | None = field(repr=False)
    timeout_s: float

    @classmethod
    def resolve(cls, url: str | None, api_key: str | None, timeout_s: float) -> Settings:
        """The arguments given, else ``ANIMEGAN_URL`` / ``ANIMEGAN_API_KEY``, else the
        defaults (a local service, no key)."""
        url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        return cls(url, key or None, timeout_s)

    def http_client_args(self) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "headers": base_headers(self.api_key),
            "timeout": self.timeout(),
        }

    def timeout(self, read_s: float | None = None) -> httpx.Timeout:
        seconds = self.timeout_s
        return httpx.Timeout(seconds, connect=min(seconds, 10.0), read=read_s or seconds)


# --- requests --------------------------------------------------------------------------


def base_headers(api_key: str | None) -> dict[str, str]:
    """Every call's headers; the key goes in ``Authorization`` only, never in a URL or a
    message."""
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def query(options: Mapping[str, Any]) -> dict[str, str]:
    """The stylize options as query parameters. Names are the server's own options (a
    name it does not take is refused here, before anything is sent); values are checked
    by the service, which answers a wrong one with the option's own error."""
    known = {option.name for option in option_fields()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown stylize options {unknown}; the options are {sorted(known)}")
    return {name: _query_value(value) for name, value in options.items() if value is not None}


def media_type_of(path: Path | str | None) -> str:
    """What a file's name says it is, as the upload's Content-Type."""
    guessed, _ = mimetypes.guess_type(Path(path).name) if path else (None, None)
    return guessed or UNKNOWN_MEDIA_TYPE


def stylize_call(options: Mapping[str, Any], media_type: str) -> Call:
    return Call(
        "POST", "/v1/stylize", query(options), {"Content-Type": media_type, "Accept": "*/*"}
    )


def batch_call(options: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/stylize/batch", query(options))


def submit_call(
    options: Mapping[str, Any],
    media_type: str,
    idempotency_key: str | None = None,
    webhook: str | None = None,
    webhook_events: str | None = None,
    wait_s: float | None = None,
) -> Call:
    params = query(options)
    if webhook is not None:
        params["webhook"] = webhook
    if webhook_events is not None:
        params["webhook_events"] = webhook_events
    # A key of its own when the caller gives none: a retry of this call (after a 503 that
    # came when the job was already made, e.g. a proxy's) finds that job, not a second one.
    headers = {"Content-Type": media_type, "Idempotency-Key": idempotency_key or new_key()}
    if wait_s is not None:
        headers["Prefer"] = f"wait={max(0, round(wait_s))}"
    return Call("POST", "/v1/jobs", params, headers)


def new_key() -> str:
    """An idempotency key no other submission has."""
    return secrets.token_hex(16)


def list_call(state: str | None, cursor: str | None, limit: int | None) -> Call:
    given = {"state": state, "cursor": cursor, "limit": limit}
    return Call("GET", "/v1/jobs", {name: str(v) for name, v in given.items() if v is not None})


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def upload_name(upload: Upload) -> str | None:
    if isinstance(upload, (str, Path)):
        return Path(upload).name
    return None if isinstance(upload, bytes) else getattr(upload, "name", None)


def upload_body(upload: Upload, stream: bool = True) -> Any:
    """What is sent for an upload: its bytes, or (``stream``) its file opened for this send
    (the sender closes it); a file object given is read from its start each time."""
    if isinstance(upload, bytes):
        return upload
    if isinstance(upload, (str, Path)):
        path = Path(upload)
        return path.open("rb") if stream else path.read_bytes()
    upload.seek(0)
    return upload.read()


def batch_files(images: Sequence[Upload]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """A batch's pictures as multipart fields ``images``."""
    files = []
    for index, image in enumerate(images):
        name = upload_name(image)
        files.append(
            ("images", (name or f"{index}", upload_body(image, False), media_type_of(name)))
        )
    return files


class Deadline:
    """The end of a wait (``wait_s`` None: none), on ``clock``."""

    def __init__(self, clock: Callable[[], float], wait_s: float | None) -> None:
        self._clock = clock
        self._at = None if wait_s is None else clock() + wait_s

    def past(self) -> bool:
        return self._at is not None and self._clock() >= self._at

    def left(self, most_s: float) -> float:
        return most_s if self._at is None else max(0.0, min(most_s, self._at - self._clock()))

    def read_timeout_s(self) -> float:
        """An event stream's read timeout: a dead stream's, or the wait's end when sooner."""
        return max(0.1, self.left(EVENTS_READ_TIMEOUT_S))


def next_cursor(page: Mapping[str, Any], seen: set[str]) -> str | None:
    """The cursor of the page after ``page`` (None: it was the last); a cursor given twice
    is an error rather than a loop."""
    cursor = page.get("next_cursor")
    if cursor is not None:
        if cursor in seen:
            raise NoAnswer(f"the service gave the cursor {cursor!r} twice", "bad_cursor")
        seen.add(cursor)
    return cursor


# --- answers ---------------------------------------------------------------------------


def error_of(response: httpx.Response) -> ServiceError:
    """The service's error from a read response, as its own class; a body not in its form
    (a proxy's page) keeps its status, with ``http_<status>`` as the code. A redirect is
    an error too: the client follows none (a request's body and key are not sent on to
    wherever a proxy points), so it says where to send it instead."""
    if 300 <= response.status_code < 400:
        where = response.headers.get("location", "")
        return error_from_answer(
            f"http_{response.status_code}",
            f"the service's address moved ({where or 'no Location'}): use that URL",
            response.status_code,
        )
    return error_from_body(
        response.status_code, response.text, response.reason_phrase, response.headers
    )


def error_from_body(
    status: int, body: str, reason: str, headers: Mapping[str, str]
) -> ServiceError:
    """An error answer's status, body and headers, as the service's error class."""
    retry_after_s = retry_after_of(headers.get("retry-after"))
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code = f"http_{status}"
        message = " ".join(body.split())[:200] or reason
    return error_from_answer(code, message, status, retry_after_s)


def failed(response: httpx.Response) -> bool:
    """An answer that is no answer to the call: an error, or a redirect (not followed)."""
    return not response.is_success


def no_answer(url: str, exc: Exception) -> NoAnswer:
    if isinstance(exc, httpx.TimeoutException):
        return NoAnswer(f"{url} did not answer in time ({type(exc).__name__})", "no_answer_in_time")
    if isinstance(exc, httpx.ConnectError):
        return NoAnswer(f"cannot reach {url}: {exc}", "unreachable")
    return NoAnswer(f"{url}: {type(exc).__name__}: {exc}", "connection_lost")


def refused(error: ServiceError) -> bool:
    """The service refused the request (4xx): sending it again changes nothing."""
    return 400 <= error.status < 500


def describe(error: ServiceError) -> str:
    """One line for a person: status, code and message."""
    status = f"{error.status} " if error.status else ""
    return f"{status}{error.code}: {error.message}"


def retry_wait_s(error: ServiceError, retries_done: int) -> float | None:
    """How long to wait before sending a call again (None: do not): a 503 or 429 that says
    ``Retry-After``, at most ``RETRIES`` times, each wait at most ``MAX_RETRY_WAIT_S``."""
    if error.status not in RETRIED_STATUSES or error.retry_after_s is None:
        return None
    if retries_done >= RETRIES:
        return None
    return min(float(error.retry_after_s), MAX_RETRY_WAIT_S)


def retry_after_of(value: str | None) -> float | None:
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


def picture_of(response: httpx.Response) -> Picture:
    headers = response.headers
    return Picture(
        data=response.content,
        media_type=headers.get("content-type", UNKNOWN_MEDIA_TYPE),
        cache=headers.get("x-cache"),
        style=headers.get("x-style"),
    )


def batch_of(body: Mapping[str, Any], style: str | None) -> list[BatchOutcome]:
    """``/v1/stylize/batch``'s answer: each picture, or its own error."""
    outcomes = []
    for item in body["results"]:
        if item.get("error") is not None:
            error = error_from_answer(
                item["error"]["code"],
                item["error"]["message"],
                item["status"],
                item.get("retry_after_s"),
            )
            outcomes.append(BatchOutcome(item["index"], error=error))
            continue
        picture = Picture(
            data=base64.b64decode(item["data"]),
            media_type=item["media_type"],
            width=item.get("width"),
            height=item.get("height"),
            cache=item.get("cache"),
            style=item.get("style", style),
        )
        outcomes.append(BatchOutcome(item["index"], picture=picture))
    return outcomes


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from a stream's lines (line endings removed): comments (the
    service's ``: keep-alive``) skipped, ``data`` lines joined, an event dispatched at each
    blank line; an event cut off by the stream's end is dropped, as the standard says."""
    parser = SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def is_keep_alive(line: str) -> bool:
    """An SSE comment line: the service's keep-alive, sent while a job does not change."""
    return line.startswith(":")


class SseParser:
    """The same, one line at a time (the clients feed it as lines arrive)."""

    def __init__(self) -> None:
        self._event, self._data = "", []

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            event = (
                SseEvent(self._event or "message", "\n".join(self._data)) if self._data else None
            )
            self._event, self._data = "", []
            return event
        if is_keep_alive(line):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def job_of_event(event: SseEvent) -> dict:
    """An event's job (the service sends the whole job at each change)."""
    try:
        job = json.loads(event.data)
    except ValueError:
        raise NoAnswer(f"an event that is not JSON: {event.data[:80]!r}", "bad_event") from None
    if not isinstance(job, dict) or "state" not in job:
        raise NoAnswer(f"an event that is not a job: {event.data[:80]!r}", "bad_event")
    return job


def changed(before: dict, after: dict) -> bool:
    """A polled job worth showing: its state or progress moved (``elapsed_s`` always does)."""
    fields = ("state", "progress", "frames_done", "updated_at")
    return any(before.get(name) != after.get(name) for name in fields)


@contextlib.contextmanager
def written_whole(target: Path) -> Iterator[IO[bytes]]:
    """A file for ``target``'s bytes that becomes ``target`` only once whole: written
    beside it, flushed to disk, then renamed; on any failure nothing is left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with partial.open("xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
