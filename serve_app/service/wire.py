"""JSON wire shapes of the service's answers (the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.config import OutputFormat
from serve_app.errors import ErrorDetail
from serve_app.pipeline.results import CacheStatus


class StyleInfo(BaseModel):
    name: str
    description: str
    random_weights: bool = Field(description="untrained weights: meaningless pictures")


class LiveLimits(BaseModel):
    default_size: int = Field(description="a live stream's frame size unless it asks")
    max_size: int = Field(description="the largest `size` a live stream may ask for")
    max_frame_bytes: int = Field(description="the largest frame message")


class StylesResponse(BaseModel):
    default_style: str
    default_size: int
    min_size: int
    max_size: int = Field(description="largest size a job makes")
    max_sync_size: int = Field(
        description="largest size /v1/stylize makes while the caller waits; above: /v1/jobs"
    )
    default_format: OutputFormat
    formats: list[OutputFormat]
    max_bytes: int
    max_pixels: int
    max_media_bytes: int = Field(description="largest video or animation a job takes")
    max_batch_images: int
    live: LiveLimits = Field(description="the live camera's sizes (`/v1/live`)")
    styles: list[StyleInfo]


class BatchItem(BaseModel):
    index: int
    status: int = Field(description="200, or the status the picture alone would have had")
    media_type: str | None = None
    cache: CacheStatus | None = None
    style: str | None = Field(default=None, description="as `X-Style` on `/v1/stylize`")
    etag: str | None = Field(default=None, description="as `ETag` on `/v1/stylize`")
    random_weights: bool | None = Field(
        default=None,
        description="true: the style runs on untrained weights (`X-Weights: random`)",
    )
    width: int | None = None
    height: int | None = None
    data: str | None = Field(default=None, description="the picture, base64")
    error: ErrorDetail | None = None
    retry_after_s: int | None = Field(
        default=None, description="an error worth retrying: after this many seconds"
    )


class BatchResponse(BaseModel):
    results: list[BatchItem]


# The figures below come from the cache and the model replicas; fields added there later
# pass through (extra="allow") rather than being dropped from the answer.


class CacheFigures(BaseModel, extra="allow"):
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int = Field(description="entries the byte bound forced out")
    expirations: int = Field(default=0, description="entries whose TTL ran out")
    hit_ratio: float


class CacheReport(BaseModel, extra="allow"):
    shared: CacheFigures = Field(description="the shared cache, all shards summed")
    local: CacheFigures = Field(description="this ingress replica's in-process LRU")
    errors: int = Field(description="failed calls to the shared cache")
    shards: int
    shards_answered: int
    coalesced: int = Field(description="requests that awaited the same work in flight")


class ModelReport(BaseModel, extra="allow"):
    replica: str
    loads: int
    images: int
    batches: int = Field(description="forward passes")
    batch_sizes: dict[int, int] = Field(description="pictures per pass -> passes of that size")
    inference_s: dict[str, float] = Field(description="style -> seconds of forward passes")


class JobFigures(BaseModel):
    running: int = Field(description="jobs this ingress replica is running now")
    queued: int = Field(description="jobs waiting for a place on this ingress replica")
    followers: int = Field(description="event streams open on this ingress replica")


class StatsResponse(BaseModel):
    cache: CacheReport
    requests: dict[str, int] = Field(description="this ingress replica's answers by cache status")
    in_flight: int = Field(description="misses this ingress replica is computing now")
    model: ModelReport | None = Field(
        description="one model replica's own report; null if none answered"
    )
    jobs: JobFigures
    job_records: dict[str, int] = Field(
        description="this ingress replica's calls to the job record store since it started, "
        "by operation",
    )
    live_streams: int = Field(description="live streams open on this ingress replica")


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    examples_warm: int = Field(description="(example, style) results warmed at start")


class ExampleInfo(BaseModel):
    name: str = Field(description="the file name, e.g. `4.jpg`")
    url: str = Field(description="where the photo's bytes are (public, like the page)")
    media_type: str
    width: int
    height: int
    warm: dict[str, bool] = Field(
        description="style -> this ingress replica stylized the photo for it at start, at "
        "the response's `size` and `format` and the other controls' defaults; the shared "
        "cache may have evicted a result since (it is then computed again)"
    )


class ExamplesResponse(BaseModel):
    size: int = Field(description="the output size the examples are warm for")
    format: OutputFormat = Field(description="the output format the examples are warm for")
    warming: bool = Field(description="the start-up warming is still running")
    examples: list[ExampleInfo]
