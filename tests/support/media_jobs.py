"""A media job run without Ray (unit tests of the frame path): a fake model that inverts
frames and counts its calls, an in-memory frame cache, and ``run_job``."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.config import MediaConfig
from serve_app.errors import Overloaded, ReplicaFailed
from serve_app.media import probe
from serve_app.media.frames import MediaJob
from serve_app.media.gate import ModelGate
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import StylizeOptions

IDENTITY = ModelIdentity("weights", "runtime")
CONFIG = MediaConfig(frames_in_flight=8, frame_batch=4)


class FakeModel:
    """Inverts each frame; counts calls, frames and the most calls at once."""

    def __init__(
        self, failures: int = 0, delay_s: float = 0.0, detached: bool = False, overloads: int = 0
    ) -> None:
        self.calls = 0
        self.frames = 0
        self.running = 0
        self.most_running = 0
        self.batch_sizes: list[int] = []
        self._failures = failures
        self._overloads = overloads  # calls answered 503 overloaded (a full model queue)
        self._delay_s = delay_s
        # Like a Serve replica: a cancelled caller stops waiting, the pass goes on.
        self._detached = detached

    async def __call__(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        if self._detached:
            return await asyncio.shield(self._pass(frames))
        return await self._pass(frames)

    async def _pass(self, frames: list[np.ndarray]) -> list[StylizedArray]:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self._delay_s)
            if self._failures:
                self._failures -= 1
                raise ReplicaFailed("replica died")
            if self._overloads:
                self._overloads -= 1
                raise Overloaded("the service is at capacity; retry shortly")
            assert len({frame.shape for frame in frames}) == 1
            self.frames += len(frames)
            self.batch_sizes.append(len(frames))
            return [StylizedArray(255 - frame, IDENTITY, 0.0, 1.0, len(frames)) for frame in frames]
        finally:
            self.running -= 1


class DictCache:
    def __init__(self) -> None:
        self.entries: dict = {}

    async def get(self, key):
        return self.entries.get(key)

    async def put(self, key, value):
        self.entries[key] = value


class BatchingCache(DictCache):
    """A cache that takes many keys at once, as the cache client does; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.get_calls: list[int] = []  # keys per get_many call
        self.put_calls: list[int] = []

    async def get_many(self, keys):
        self.get_calls.append(len(keys))
        return [self.entries.get(key) for key in keys]

    async def put_many(self, items):
        self.put_calls.append(len(items))
        self.entries.update(items)


def options(**changes) -> StylizeOptions:
    base = {"style": "s", "size": 96, "format": "png", "quality": None}
    return StylizeOptions(**{**base, **changes})


def run_job(path, dest, model, cache=None, config=CONFIG, gate=None, **option_changes):
    info = probe.probe(path, config)
    job = MediaJob(
        info,
        options(**option_changes),
        config,
        model,
        cache if cache is not None else DictCache(),
        lambda style: IDENTITY,
        gate or ModelGate(3, 1, 1.0),
    )
    output = asyncio.run(job.run(path, dest))
    return job, output
