"""The shapes of the API: options in, results out (HTTP and Python handles alike), and
what a model replica answers. Light on purpose: the ingress imports it, never torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from serve_app.config import MIN_SIDE, AppConfig, OutputFormat
from serve_app.errors import (
    InvalidFormat,
    InvalidQuality,
    InvalidSize,
    InvalidStrength,
    UnknownStyle,
)
from serve_app.imaging import MEDIA_TYPES

CacheStatus = Literal["hit", "miss", "coalesced"]
STRENGTH_DECIMALS = 3


# --- what a model replica answers --------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What computed a result. A result is cached only under the key of its identity."""

    weights: str  # digest of the weights and the upsampling mode
    runtime: str  # device, precision and library versions, e.g. "cpu/bf16/torch-2.13.0"


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
) -> StylizeOptions:
    """Fill defaults and check every option against the config; 422 on anything wrong."""
    style = style or config.default_style_name
    if config.style(style) is None:
        names = [s.name for s in config.styles]
        raise UnknownStyle(f"unknown style {style!r}; served: {names}")
    size = config.default_size if size is None else size
    if not MIN_SIDE <= size <= config.limits.max_size:
        raise InvalidSize(f"size must be {MIN_SIDE}..{config.limits.max_size} px, got {size}")
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
    return StylizeOptions(
        style=style,
        size=size,
        format=fmt,
        quality=quality,
        # Rounded so that 0.5 and 0.5000001 share one cache entry.
        strength=round(float(strength), STRENGTH_DECIMALS),
        preserve_color=bool(preserve_color),
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
    max_size: int
    default_format: OutputFormat
    formats: list[OutputFormat]
    max_bytes: int
    max_pixels: int
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
