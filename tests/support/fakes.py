"""Stand-ins for the Ray-backed parts the service is composed over (unit tests only):
a model that inverts pictures (at once, or when a test lets it), and a result cache in
this process."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.config import AppConfig
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.pipeline.lru import ByteBoundedLRU, CachedImage
from serve_app.service.service import AnimeService

RANDOM_WEIGHTS = "random-seed-0:align_corners=True"
FAKE_RUNTIME = "cpu/fake"


class InvertingModel:
    """The ``Model`` port: each picture's negative, at once; counts its calls."""

    def __init__(self, styles: list[str], weights: str = RANDOM_WEIGHTS) -> None:
        self.identity = ModelIdentity(weights, FAKE_RUNTIME)
        self.styles = styles
        self.pictures = 0
        self.frame_calls = 0

    async def stylize(self, rgb: np.ndarray, style: str, on_progress=None) -> StylizedArray:
        self.pictures += 1
        return StylizedArray(255 - rgb, self.identity, 0.0, 1.0, 1)

    async def stylize_frames(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        self.frame_calls += 1
        return [StylizedArray(255 - rgb, self.identity, 0.0, 1.0, len(frames)) for rgb in frames]

    async def identities(self) -> dict[str, ModelIdentity]:
        return {style: self.identity for style in self.styles}

    async def stats(self) -> dict | None:
        return None


class HeldModel(InvertingModel):
    """An ``InvertingModel`` whose pictures wait until ``release`` is set (from the
    service's own event loop)."""

    def __init__(self, styles: list[str]) -> None:
        super().__init__(styles)
        self.release = asyncio.Event()

    async def stylize(self, rgb: np.ndarray, style: str, on_progress=None) -> StylizedArray:
        await self.release.wait()
        return await super().stylize(rgb, style, on_progress)


class LocalCache:
    """The result cache's interface over one in-process LRU, with its figures."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.shared = ByteBoundedLRU(max_bytes)

    async def get(self, key: str) -> CachedImage | None:
        return self.shared.get(key)

    async def put(self, key: str, value: CachedImage) -> None:
        self.shared.put(key, value)

    async def stats(self) -> dict:
        figures = self.shared.stats().to_dict()
        return {"shared": figures, "local": figures, "errors": 0, "shards": 1, "shards_answered": 1}


def small_service(jobs_dir: str, model: InvertingModel | None = None, **settings) -> AnimeService:
    """The whole service over the stand-ins: one style ("alpha"), 64 px by default, its
    jobs in ``jobs_dir``; ``settings``: more of the app's configuration."""
    config = AppConfig.model_validate(
        {
            "styles": [{"name": "alpha", "weights": "random"}],
            "default_size": 64,
            "jobs": {"store_url": jobs_dir},
            **settings,
        }
    )
    model = model or InvertingModel(["alpha"])
    return AnimeService(config, model, LocalCache(), {"alpha": RANDOM_WEIGHTS})
