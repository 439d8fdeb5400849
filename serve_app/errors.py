"""Every way a request can fail, as one family of exceptions.

Each class carries its HTTP ``status`` and machine-readable ``code``; the API answers
any of them as ``{"error": {"code": ..., "message": ...}}`` with that status (one
handler in ``http/errors.py``). Python handle callers receive the same exceptions. This
module imports nothing of the project, Ray or web frameworks (pydantic describes the JSON
shape), so every layer can raise them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. `undecodable_image`")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


WS_CLOSE_OFFSET = 4000
"""A WebSocket the service closes for an error closes with 4000 + the error's status."""


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    status: int = 500
    code: str = "internal_error"
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(self, message: str = "internal error; see the server log") -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def __reduce__(self):  # keep the message across Ray's pickling
        return (type(self), (self.message,))


# --- 400: the bytes are not a usable picture or body ---------------------------------


class UndecodableImage(ServiceError):
    """Not an image, or a corrupt or truncated one."""

    status, code = 400, "undecodable_image"


class EmptyUpload(ServiceError):
    status, code = 400, "empty_upload"


class ImageTooSmall(ServiceError):
    """The shorter side would fall under the generator's minimum after resizing."""

    status, code = 400, "image_too_small"


class BadMultipart(ServiceError):
    status, code = 400, "bad_multipart"


class CorsRefused(ServiceError):
    """A browser's CORS preflight for an origin outside ``cors_origins``, for a method or
    request header that no route takes, or for access from a public page to a private
    network."""

    status, code = 400, "cors_refused"


class UndecodableMedia(ServiceError):
    """A video or animation the decoder cannot read, or one that breaks off mid-way."""

    status, code = 400, "undecodable_media"


# --- 401, 403, 404, 405 --------------------------------------------------------------


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class UnknownJob(ServiceError):
    """No such job (or it expired)."""

    status, code = 404, "unknown_job"


class JobExpired(ServiceError):
    """The job ended long enough ago that its record and output were deleted."""

    status, code = 404, "job_expired"


class OwnerRequired(ServiceError):
    """Listing jobs needs an API key: on an open service a job is reached by its id only."""

    status, code = 403, "owner_required"


class OriginRefused(ServiceError):
    """A WebSocket opened by a web page of another site: browsers send its ``Origin``, and
    CORS does not apply to WebSockets, so the service refuses it itself."""

    status, code = 403, "origin_refused"


class JobNotDone(ServiceError):
    """The job's result was asked for before it finished (or after it failed)."""

    status, code = 409, "job_not_done"


# --- 413, 415: too much, or the wrong kind ------------------------------------------


class ImageTooLarge(ServiceError):
    """Too many bytes or too many pixels in one picture."""

    status, code = 413, "image_too_large"


class PayloadTooLarge(ServiceError):
    """The request body (or its number of parts) is over the limit."""

    status, code = 413, "payload_too_large"


class MediaTooLarge(ServiceError):
    """A video or animation over a limit: bytes, duration, frames or frame size."""

    status, code = 413, "media_too_large"


class UnsupportedCodec(ServiceError):
    """A video in a container or codec that is not accepted (or not in this decoder)."""

    status, code = 415, "unsupported_codec"


class UnsupportedFormat(ServiceError):
    """A valid picture in a format (or colour mode) that is not accepted."""

    status, code = 415, "unsupported_format"


class UnsupportedMediaType(ServiceError):
    """A body that is neither multipart nor an ``image/*`` type."""

    status, code = 415, "unsupported_media_type"


class RangeNotSatisfiable(ServiceError):
    """A ``Range`` outside the result's bytes; ``size``: the result's length, which the
    answer states in ``Content-Range: bytes */<size>`` (RFC 9110, 15.5.17)."""

    status, code = 416, "range_not_satisfiable"

    def __init__(self, message: str = "the range is outside the result", size: int | None = None):
        super().__init__(message)
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.size is None else {"Content-Range": f"bytes */{self.size}"}


# --- 422: the request's parameters ---------------------------------------------------


class UnknownStyle(ServiceError):
    status, code = 422, "unknown_style"


class InvalidSize(ServiceError):
    status, code = 422, "invalid_size"


class InvalidFormat(ServiceError):
    status, code = 422, "invalid_format"


class InvalidQuality(ServiceError):
    status, code = 422, "invalid_quality"


class InvalidStrength(ServiceError):
    status, code = 422, "invalid_strength"


class InvalidParameters(ServiceError):
    status, code = 422, "invalid_parameters"


class MissingImage(ServiceError):
    status, code = 422, "missing_image"


class InvalidPortrait(ServiceError):
    status, code = 422, "invalid_portrait"


class InvalidBackground(ServiceError):
    status, code = 422, "invalid_background"


class InvalidNoFace(ServiceError):
    status, code = 422, "invalid_no_face"


class NoFace(ServiceError):
    """Portrait mode found no face, and the request asked for an error then."""

    status, code = 422, "no_face"


class InvalidVideoOptions(ServiceError):
    """A video option out of range, an output container that cannot hold the audio, or an
    option a video or animation cannot be made with (portrait mode)."""

    status, code = 422, "invalid_video_options"


class IdempotencyKeyReused(ServiceError):
    """An ``Idempotency-Key`` sent before with another upload or other options."""

    status, code = 422, "idempotency_key_reused"


class WebhookRefused(ServiceError):
    """A webhook URL outside the configured allow-list, or not an http(s) URL."""

    status, code = 422, "webhook_refused"


class UseJobs(ServiceError):
    """A size past the synchronous limit, a video, or an animation over the synchronous
    budget: made as a job instead."""

    status, code = 422, "use_jobs"


# --- live streams: answered as a WebSocket close code, 4000 + the status -----------------


class UpgradeRequired(ServiceError):
    """A plain HTTP request to a WebSocket route (``/v1/live``)."""

    status, code = 426, "upgrade_required"

    @property
    def headers(self) -> dict[str, str]:
        return {"Upgrade": "websocket"}


class TooManyJobs(ServiceError):
    """The API key has ``jobs.max_active_per_key`` jobs queued or running in the job store."""

    status, code, retry_after_s = 429, "too_many_jobs", 30


class TooManyPictures(ServiceError):
    """The API key has ``max_in_flight_per_key`` misses in progress on this ingress
    replica."""

    status, code, retry_after_s = 429, "too_many_pictures", 1


class TooManyStreams(ServiceError):
    """The API key holds ``live.max_streams_per_key`` live streams on the service's
    replicas (those that share the job record store)."""

    status, code = 429, "too_many_streams"


class UploadStalled(ServiceError):
    """No part of an upload arrived for ``limits.upload_idle_timeout_s``."""

    status, code = 408, "upload_stalled"


class StreamIdle(ServiceError):
    """A live stream sent nothing for ``live.idle_timeout_s``."""

    status, code = 408, "stream_idle"


class StreamStalled(ServiceError):
    """A live stream's client read no answer for ``live.send_timeout_s``."""

    status, code = 408, "stream_stalled"


class ClientClosedRequest(ServiceError):
    """The client hung up before its answer (nginx's 499): never sent, only logged and
    counted, so that a phone losing its signal is not counted as the server's error."""

    status, code = 499, "client_closed_request"


# --- 5xx: the service, not the request -------------------------------------------------


class InternalError(ServiceError):
    status, code = 500, "internal_error"


class Overloaded(ServiceError):
    """Too much work in progress; the caller should come back shortly."""

    status, code, retry_after_s = 503, "overloaded", 1


class Unavailable(ServiceError):
    """The model could not answer (a replica failed twice)."""

    status, code, retry_after_s = 503, "unavailable", 1


class LiveFull(ServiceError):
    """This ingress replica holds ``live.max_streams`` live streams."""

    status, code, retry_after_s = 503, "live_full", 5


class NotReady(ServiceError):
    """The replica cannot serve yet: no model replica has answered, or the examples are
    still warming (``/readyz``; ``/healthz`` answers meanwhile)."""

    status, code, retry_after_s = 503, "not_ready", 5


class QueueTimeout(ServiceError):
    """A job waited past ``jobs.queue_timeout_s`` for a place to run."""

    status, code, retry_after_s = 503, "queue_timeout", 30


class RunnerLost(ServiceError):
    """A job's runner died ``jobs.max_attempts`` times, or its upload was lost with it."""

    status, code = 503, "runner_lost"


class StoreFull(ServiceError):
    """The job store is at its byte bound: new jobs are refused up front."""

    status, code = 507, "store_full"


class StoreError(ServiceError):
    """The job store could not be read or written (permissions, an object store's error,
    the shared record server unreachable)."""

    status, code, retry_after_s = 503, "store_error", 5


class Timeout(ServiceError):
    """Not ready within the request's deadline; the work was cancelled."""

    status, code = 504, "timeout"


# --- no answer at all: raised by the client (``serve_app.client``), never answered ------


class NoAnswer(ServiceError):
    """The service did not answer: unreachable, too slow, or the connection broke off
    (``code`` says which). It has no HTTP status: ``status`` is 0."""

    status, code = 0, "no_answer"

    def __init__(self, message: str = "the service did not answer", code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    def __reduce__(self):
        return (type(self), (self.message, self.code))


def error_classes() -> list[type[ServiceError]]:
    """Every concrete error the API answers, in declaration order (docs/api.md's table
    lists the same)."""
    return [cls for cls in _subclasses(ServiceError) if cls is not ServiceError and cls.status]


def error_from_answer(
    code: str, message: str, status: int, retry_after_s: float | None = None
) -> ServiceError:
    """The error an answer reports, as its own class (a client raises what the service
    did); a code this version does not know (a proxy's page: ``http_<status>``) stays a
    ``ServiceError`` with that code and status."""
    known = {(cls.code, cls.status): cls for cls in error_classes()}.get((code, status))
    error = known(message) if known is not None else ServiceError(message)
    if known is None:
        error.code, error.status = code, status
    error.retry_after_s = retry_after_s
    return error


def _subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


class ReplicaFailed(Exception):
    """Raised by a model call when the model replica died mid-call (retryable). Not a
    ServiceError: callers retry it, and report Unavailable once they give up."""
