"""A job as stored and as the API shows it, its id, its owner, and the listing cursor.

A job's id is random (128 bits), never derived from what was submitted: knowing a
picture tells nothing of anyone's job, and only the id's holder (and, with API keys,
only the key that submitted it) can reach the job. What was submitted is kept apart as
the ``content_key`` (the result cache's key), so the same owner's resubmission finds its
job again and another owner's is answered from the caches, never through a shared id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Literal

from pydantic import BaseModel, Field

from serve_app.errors import ErrorDetail, InvalidParameters, ServiceError

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JobKind = Literal["still", "animation", "video"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ANONYMOUS = ""
"""The owner of every job on a service without API keys: whoever holds the id."""


def new_job_id() -> str:
    return secrets.token_hex(16)


def keyed_owner(owner: str) -> str | None:
    """``owner`` where it is an API key's, whose bounds are its own (streams, jobs, pictures
    in progress); None for the anonymous owner of a service without keys, where every
    caller is that one owner and only the service's own bounds apply."""
    return None if owner == ANONYMOUS else owner


def owner_of(api_key: str | bytes | None) -> str:
    """Who owns what a caller submits: a digest of its API key (the key itself is never
    stored), or ANONYMOUS on an open service."""
    if not api_key:
        return ANONYMOUS
    key = api_key.encode() if isinstance(api_key, str) else api_key
    return hashlib.sha256(b"animegan-owner:" + key).hexdigest()[:32]


class JobResultInfo(BaseModel):
    media_type: str
    width: int
    height: int
    bytes: int
    cache: str = Field(description="how the output was found: `hit`, `miss` or `coalesced`")
    frames: int | None = Field(default=None, description="videos and animations: frames out")
    duration_s: float | None = Field(default=None, description="videos and animations")


class WebhookDelivery(BaseModel):
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_status: int | None = Field(default=None, description="the receiver's HTTP status")
    last_error: str | None = None
    delivered_at: float | None = None


class WebhookInfo(BaseModel):
    url: str
    events: list[str]
    deliveries: list[WebhookDelivery] = Field(default_factory=list)


class JobFields(BaseModel):
    """What the API shows of a job (``GET /v1/jobs/{id}``, without the computed fields)."""

    id: str
    state: JobState
    kind: JobKind = "still"
    media: dict | None = Field(
        default=None, description="videos and animations: what the upload was found to be"
    )
    options: dict
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(default=None, description="when the record is deleted")
    updated_at: float | None = Field(
        default=None,
        description="Unix time of the record's last change (an event's data: when the change "
        "it reports was written)",
    )
    frames_done: int = 0
    frames_total: int = 1
    frames_model: int = Field(default=0, description="frames the model computed")
    frames_repeated: int = Field(default=0, description="frames repeating one earlier in the job")
    frames_cached: int = Field(default=0, description="frames found in the result cache")
    frames_similar: int = Field(
        default=0,
        description="frames all but identical to the last one computed, which reuse its "
        "picture (option `exact_frames`)",
    )
    progress: float = Field(default=0.0, description="0..1, from the model's own progress")
    upload_bytes: int = 0
    error: ErrorDetail | None = None
    result: JobResultInfo | None = None
    attempts: int = Field(default=0, description="runs started (a dead runner's job reruns)")
    webhook: WebhookInfo | None = None


class JobRecord(JobFields):
    """A job as stored: what the API shows, plus who may see it and who runs it."""

    owner: str = ANONYMOUS
    content_key: str = Field(default="", description="the result cache's key of the upload")
    idempotency_key: str | None = None
    runner: str | None = Field(default=None, description="the ingress replica running it")
    lease_until: float | None = Field(default=None, description="the runner's lease, Unix time")
    reserved_bytes: int = Field(default=0, description="store space held for it")
    result_name: str | None = Field(default=None, description="the result's blob name")
    shareable: bool = Field(
        default=True,
        description="its output may be copied for another owner's job of the same content: "
        "false when a model replica running other weights than the config's made part of it",
    )
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> JobRecord:
        return cls.model_validate_json(data)


class JobView(JobFields):
    """The wire shape: the record's public fields plus what is computed when it is read."""

    elapsed_s: float = Field(description="since submission; to the end once finished")
    eta_s: float | None = Field(description="expected seconds to the end; null when unknown")
    links: dict[str, str] = Field(description="`self`, `events`, `result`")


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="the caller's jobs, newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: done")


CURSOR = re.compile(r"^(\d{1,17})-([0-9a-f]{32})$")
MAX_IDEMPOTENCY_KEY_CHARS = 255
# Printable ASCII, neither starting nor ending with a space.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
"""Where a page ended: its last job's creation time (µs) and id. Any value of this form
is a valid position, so a client (or a fuzzer) can send nothing undecodable."""


def encode_cursor(record: JobRecord) -> str:
    return f"{round(record.created_at * 1e6)}-{record.id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    match = CURSOR.match(cursor)
    if match is None:
        raise InvalidParameters("cursor: not a cursor this service gave out")
    return int(match.group(1)) / 1e6, match.group(2)


def failed_changes(error: ServiceError, now: float, ttl_s: float) -> dict:
    """The record's fields for a job that ends ``failed`` with ``error`` at ``now``: kept
    ``ttl_s`` more, its reserved space freed."""
    return {
        "state": "failed",
        "finished_at": now,
        "expires_at": now + ttl_s,
        "error": ErrorDetail(code=error.code, message=error.message),
        "reserved_bytes": 0,
    }
