"""What the pipeline, media and jobs need from outside: the model and the result cache.

Protocols (and the one shape ``Animate`` answers with) only: the service is composed over
them, so unit tests pass fakes and only the ingress deployment hands in the Ray-backed ones
(``model_client.py``, the cache client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import StylizeOptions
from serve_app.pipeline.lru import CachedImage

ProgressSink = Callable[[int, int], None]
"""(steps done, steps in all)"""


class ResultStore(Protocol):
    async def get(self, key: str) -> CachedImage | None: ...

    async def put(self, key: str, value: CachedImage) -> None: ...


class ManyAtOnce(ResultStore, Protocol):
    """A store that takes many keys in one call (a video's frames: one round trip per
    batch, not per frame)."""

    async def get_many(self, keys: Sequence[str]) -> list[CachedImage | None]: ...

    async def put_many(self, items: Sequence[tuple[str, CachedImage]]) -> None: ...


class _OneByOne:
    """``ManyAtOnce`` over a store that takes one key at a time."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    async def get(self, key: str) -> CachedImage | None:
        return await self._store.get(key)

    async def put(self, key: str, value: CachedImage) -> None:
        await self._store.put(key, value)

    async def get_many(self, keys: Sequence[str]) -> list[CachedImage | None]:
        return list(await asyncio.gather(*(self._store.get(key) for key in keys)))

    async def put_many(self, items: Sequence[tuple[str, CachedImage]]) -> None:
        await asyncio.gather(*(self._store.put(key, value) for key, value in items))


def many_at_once(store: ResultStore) -> ManyAtOnce:
    """``store`` itself where it takes many keys at once, else an adapter that sends one
    call per key."""
    if hasattr(store, "get_many") and hasattr(store, "put_many"):
        return store  # type: ignore[return-value]
    return _OneByOne(store)


class Model(Protocol):
    """The model deployment: pictures and frames through the generator."""

    async def stylize(
        self, rgb: np.ndarray, style: str, on_progress: ProgressSink | None = None
    ) -> StylizedArray:
        """One (H, W, 3) uint8 array; ``on_progress`` hears a tiled picture's steps.
        Raises ReplicaFailed when the replica died mid-call."""

    async def stylize_frames(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        """Frames of one shape, in order; raises ReplicaFailed as ``stylize`` does."""

    async def identities(self) -> dict[str, ModelIdentity]:
        """What the model runs for each style ({} when it cannot tell now)."""

    async def stats(self) -> dict | None:
        """One model replica's own report (None when none answers)."""


@dataclass(frozen=True)
class Animation:
    """A stylized animation, and how many of its frames a model replica made with weights
    other than the config's (one of the deploy before, still stopping): such an animation
    is its caller's, never cached."""

    image: CachedImage
    foreign_frames: int = 0


Animate = Callable[[bytes, StylizeOptions], Awaitable["Animation | None"]]
"""(upload, options) -> the stylized animation; None when the upload is a still picture."""
MayMove = Callable[[bytes], bool]
"""(an upload) -> False when its signature shows it can only be a still picture."""
StylizeArray = Callable[..., Awaitable[StylizedArray]]
"""(rgb, style) -> the stylized array; the keyword ``on_progress`` (a ProgressSink), when
given, hears how far the model is with a large picture."""
