"""What a stylize call returns, over HTTP and to Python handle callers alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    # Made by the weights the config names (False: by a model replica of the deploy before,
    # still stopping; such a picture is its caller's and is never cached or shared).
    configured_weights: bool = True
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, queue, inference, encode

    def headers(self) -> dict[str, str]:
        headers = {"X-Cache": self.cache, "X-Style": self.style, "ETag": f'"{self.key}"'}
        if self.random_weights:
            headers["X-Weights"] = "random"
        return headers
