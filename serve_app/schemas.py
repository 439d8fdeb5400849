"""The shapes of the API: options in, results out (HTTP and Python handles alike), and
what a model replica answers. Light on purpose: the ingress imports it, never torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from serve_app.config import MIN_SIDE, AppConfig, OutputFormat
from serve_app.errors import (
    InvalidBackground,
    InvalidFormat,
    InvalidNoFace,
    InvalidPortrait,
    InvalidQuality,
    InvalidSize,
    InvalidStrength,
    InvalidVideoOptions,
    UnknownStyle,
    UseJobs,
)
from serve_app.imaging import MEDIA_TYPES

CacheStatus = Literal["hit", "miss", "coalesced"]
STRENGTH_DECIMALS = 3
PortraitMode = Literal["off", "crop", "paste"]
NoFaceMode = Literal["error", "whole"]
PORTRAIT_MODES: tuple[PortraitMode, ...] = ("off", "crop", "paste")
NO_FACE_MODES: tuple[NoFaceMode, ...] = ("error", "whole")
OUTPUT_CONTAINERS = ("same", "mp4", "webm", "matroska", "mov")
MAX_FPS = 240.0
BACKGROUND_PHOTO = "photo"  # `background`: leave the picture around the faces as it is


# --- what a model replica answers --------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What computed a result. A result is cached only under the key of its identity."""

    weights: str  # digest of the weights and the upsampling mode
    runtime: str  # device, precision and library versions, e.g. "cpu/eager-bf16/nhwc/torch-2.13.0"


@dataclass(frozen=True)
class StylizedArray:
    rgb: np.ndarray  # (H, W, 3) uint8
    identity: ModelIdentity
    queue_ms: float  # arrival at the replica -> start of its batch
    inference_ms: float  # the forward pass that computed it
    batch_size: int  # requests in that batch


# --- options in, results out -----------------------------------------------------------


@dataclass(frozen=True)
class StylizeOptions:
    style: str
    size: int
    format: OutputFormat
    quality: int | None  # None for png
    strength: float = 1.0  # 0: the photo, 1: the style's full effect
    preserve_color: bool = False  # keep the photo's colours, take the style's lightness
    portrait: PortraitMode = "off"  # crop: the largest face; paste: every face, pasted back
    background: str = BACKGROUND_PHOTO  # paste: "photo", or the style of the rest
    no_face: NoFaceMode = "error"  # portrait found no face: 422, or the whole picture
    container: str = "same"  # videos: the output container ("same": the input's family)
    max_fps: float | None = None  # videos: at most this many frames a second


@dataclass(frozen=True)
class StylizeResult:
    """What a stylize call returns, over HTTP and to Python handle callers alike."""

    data: bytes
    media_type: str
    cache: CacheStatus
    style: str
    width: int
    height: int
    key: str  # the cache key, also the HTTP ETag
    random_weights: bool  # the style runs on untrained weights: a meaningless picture
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, queue, inference, encode

    def headers(self) -> dict[str, str]:
        headers = {"X-Cache": self.cache, "X-Style": self.style, "ETag": f'"{self.key}"'}
        if self.random_weights:
            headers["X-Weights"] = "random"
        return headers


def resolve_options(
    config: AppConfig,
    style: str | None = None,
    size: int | None = None,
    fmt: str | None = None,
    quality: int | None = None,
    strength: float | None = None,
    preserve_color: bool | None = None,
    portrait: str | None = None,
    background: str | None = None,
    no_face: str | None = None,
    container: str | None = None,
    max_fps: float | None = None,
    *,
    synchronous: bool = True,
) -> StylizeOptions:
    """Fill defaults and check every option against the config; 422 on anything wrong.

    ``synchronous``: the caller waits for the picture, so sizes past
    ``limits.max_sync_size`` are refused (they are made as jobs).
    """
    style = style or config.default_style_name
    if config.style(style) is None:
        names = [s.name for s in config.styles]
        raise UnknownStyle(f"unknown style {style!r}; served: {names}")
    size = config.default_size if size is None else size
    if not MIN_SIDE <= size <= config.limits.max_size:
        raise InvalidSize(f"size must be {MIN_SIDE}..{config.limits.max_size} px, got {size}")
    if synchronous and size > config.limits.max_sync_size:
        raise UseJobs(
            f"size {size} is above the {config.limits.max_sync_size} px made while the caller "
            "waits; submit it to POST /v1/jobs and fetch the result when it is done"
        )
    fmt = (fmt or config.default_format).lower()
    if fmt not in MEDIA_TYPES:
        raise InvalidFormat(f"format must be one of {sorted(MEDIA_TYPES)}, got {fmt!r}")
    if quality is not None and not 1 <= quality <= 100:
        raise InvalidQuality(f"quality must be 1..100, got {quality}")
    if fmt == "png":
        quality = None
    elif quality is None:
        quality = config.default_quality
    strength = 1.0 if strength is None else strength
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise InvalidStrength(f"strength must be 0..1, got {strength}")
    portrait = (portrait or "off").lower()
    if portrait not in PORTRAIT_MODES:
        raise InvalidPortrait(f"portrait must be one of {list(PORTRAIT_MODES)}, got {portrait!r}")
    background = background or BACKGROUND_PHOTO
    if background != BACKGROUND_PHOTO and config.style(background) is None:
        names = [BACKGROUND_PHOTO, *(s.name for s in config.styles)]
        raise InvalidBackground(f"background must be one of {names}, got {background!r}")
    no_face = (no_face or "error").lower()
    if no_face not in NO_FACE_MODES:
        raise InvalidNoFace(f"no_face must be one of {list(NO_FACE_MODES)}, got {no_face!r}")
    # Options that change nothing in a mode take their default there, so requests that
    # differ only in them share one cache entry.
    if portrait != "paste":
        background = BACKGROUND_PHOTO
    if portrait == "off":
        no_face = "error"
    container = (container or "same").lower()
    if container not in OUTPUT_CONTAINERS:
        raise InvalidVideoOptions(
            f"container must be one of {list(OUTPUT_CONTAINERS)}, got {container!r}"
        )
    if max_fps is not None and not 0 < max_fps <= MAX_FPS:  # also refuses NaN
        raise InvalidVideoOptions(f"max_fps must be above 0 and at most {MAX_FPS}, got {max_fps}")
    return StylizeOptions(
        style=style,
        size=size,
        format=fmt,
        quality=quality,
        # Rounded so that 0.5 and 0.5000001 share one cache entry.
        strength=round(float(strength), STRENGTH_DECIMALS),
        preserve_color=bool(preserve_color),
        portrait=portrait,
        background=background,
        no_face=no_face,
        container=container,
        max_fps=None if max_fps is None else float(max_fps),
    )


# --- JSON wire shapes (the OpenAPI document is generated from these) ---------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. `undecodable_image`")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class StyleInfo(BaseModel):
    name: str
    description: str
    random_weights: bool = Field(description="untrained weights: meaningless pictures")


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
    styles: list[StyleInfo]


class BatchItem(BaseModel):
    index: int
    status: int = Field(description="200, or the status the picture alone would have had")
    media_type: str | None = None
    cache: CacheStatus | None = None
    width: int | None = None
    height: int | None = None
    data: str | None = Field(default=None, description="the picture, base64")
    error: ErrorDetail | None = None


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
    batches: int
    batch_sizes: dict[int, int] = Field(description="batch size -> batches of that size")
    inference_s: dict[str, float] = Field(description="style -> seconds of forward passes")


class StatsResponse(BaseModel):
    cache: CacheReport
    requests: dict[str, int] = Field(description="this ingress replica's answers by cache status")
    in_flight: int = Field(description="misses this ingress replica is computing now")
    model: ModelReport | None = Field(
        description="one model replica's own report; null if none answered"
    )


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ExampleInfo(BaseModel):
    name: str = Field(description="the file name, e.g. `4.jpg`")
    url: str = Field(description="where the photo's bytes are (public, like the page)")
    media_type: str
    width: int
    height: int
    warm: dict[str, bool] = Field(
        description="style -> this ingress replica stylised the photo for it at start, at "
        "the response's `size` and `format` and the other controls' defaults; the shared "
        "cache may have evicted a result since (it is then computed again)"
    )


class ExamplesResponse(BaseModel):
    size: int = Field(description="the output size the examples are warm for")
    format: OutputFormat = Field(description="the output format the examples are warm for")
    warming: bool = Field(description="the start-up warming is still running")
    examples: list[ExampleInfo]
