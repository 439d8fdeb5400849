"""The shapes of the API: options in, results out (HTTP and Python handles alike)."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Literal

from serve_app import imaging
from serve_app.config import AppConfig
from serve_app.errors import ApiError

logger = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss", "coalesced"]


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


@dataclass(frozen=True)
class StylizeOptions:
    style: str
    size: int
    format: imaging.OutputFormat
    quality: int | None  # None for png


def resolve_options(
    config: AppConfig,
    style: str | None,
    size: int | None,
    fmt: str | None,
    quality: int | None,
) -> StylizeOptions:
    """Fill defaults and check every option against the config; 422 on anything wrong."""
    style = style or config.default_style_name
    if config.style(style) is None:
        names = [s.name for s in config.styles]
        raise ApiError(422, "unknown_style", f"unknown style {style!r}; served: {names}")
    size = config.default_size if size is None else size
    if not 0 < size <= config.limits.max_size:
        raise ApiError(
            422, "invalid_size", f"size must be 1..{config.limits.max_size} px, got {size}"
        )
    fmt = (fmt or config.default_format).lower()
    if fmt not in imaging.MEDIA_TYPES:
        raise ApiError(
            422,
            "invalid_format",
            f"format must be one of {sorted(imaging.MEDIA_TYPES)}, got {fmt!r}",
        )
    if quality is not None and not 1 <= quality <= 100:
        raise ApiError(422, "invalid_quality", f"quality must be 1..100, got {quality}")
    if fmt == "png":
        quality = None
    elif quality is None:
        quality = config.default_quality
    return StylizeOptions(style=style, size=size, format=fmt, quality=quality)


def batch_item(index: int, outcome: StylizeResult | BaseException) -> dict:
    if isinstance(outcome, StylizeResult):
        return {
            "index": index,
            "status": 200,
            "media_type": outcome.media_type,
            "cache": outcome.cache,
            "width": outcome.width,
            "height": outcome.height,
            "data": base64.b64encode(outcome.data).decode("ascii"),
        }
    if isinstance(outcome, ApiError):
        error = {"code": outcome.code, "message": outcome.message}
        return {"index": index, "status": outcome.status, "error": error}
    logger.error("batch item %d failed", index, exc_info=outcome)
    error = {"code": "internal_error", "message": "internal error; see the server log"}
    return {"index": index, "status": 500, "error": error}
