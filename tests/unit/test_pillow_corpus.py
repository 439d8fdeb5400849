"""Every picture in Pillow's own test-image folder through the entry points the routes
use, without Ray: each is made or refused with a 4xx, never a 5xx or a raw exception.

- ``POST /v1/stylize``: the pipeline (its size check, the animation check, the still
  decoder or the animation made while the caller waits) over a model that hands the
  picture back;
- ``POST /v1/jobs``: what a submission checks (``MediaService.inspect`` and ``check``)
  and, for a video or an animation, the whole job (``MediaService.run_job``: probe,
  decode, encode).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.config import AppConfig
from serve_app.errors import ServiceError
from serve_app.media.service import MediaService
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import resolve_options
from serve_app.pipeline.stylize import StylizePipeline
from tests.support.pillow_corpus import corpus_files, name

SIZE = 32
STYLE = "alpha"
IDENTITY = ModelIdentity("random-seed-0", "echo")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


class _Cache:
    """Remembers nothing, so every file is computed."""

    async def get(self, key):
        return None

    async def put(self, key, value):
        return None


async def _echo_picture(rgb: np.ndarray, style: str, **progress) -> StylizedArray:
    return StylizedArray(rgb, IDENTITY, 0.0, 1.0, 1)


async def _echo_frames(frames, style: str) -> list[StylizedArray]:
    return [StylizedArray(frame, IDENTITY, 0.0, 1.0, len(frames)) for frame in frames]


class Routes:
    """The service's two entry points for an upload, as the routes reach them."""

    def __init__(self) -> None:
        config = AppConfig.model_validate(
            {"styles": [{"name": STYLE, "weights": "random"}], "default_size": SIZE}
        )
        self.media = MediaService(config, _Cache(), _echo_frames, lambda style: IDENTITY)
        self.pipeline = StylizePipeline(
            config, _Cache(), _echo_picture, {STYLE: IDENTITY.weights}, animate=self.media.animation
        )
        self.now = resolve_options(config, size=SIZE, synchronous=True)
        self.later = resolve_options(config, size=SIZE, synchronous=False)

    async def stylize(self, path) -> None:
        await self.pipeline.stylize(path.read_bytes(), self.now)

    async def submit_and_run(self, path) -> None:
        data = path.read_bytes()
        info = await self.media.inspect(data)
        if info is None:  # a still picture: made as /v1/stylize makes it
            await self.pipeline.key_of(data, self.later)
            await self.pipeline.stylize(data, self.later)
            return
        self.media.check(info, self.later)
        output = await self.media.run_job(self.later, path, lambda counts: None)
        if output.path is not None:
            output.path.unlink()


async def _outcome(call) -> str | None:
    """None when it was made or refused with a 4xx; else what went wrong."""
    try:
        await call
    except ServiceError as error:
        if error.status >= 500:
            return f"{error.status} {error.code}: {error.message}"
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def test_every_pillow_test_image_is_made_or_refused_with_a_4xx():
    files = corpus_files()
    routes = Routes()

    async def run_all() -> list[str]:
        failures = []
        for path in files:
            for route, call in (("stylize", routes.stylize), ("jobs", routes.submit_and_run)):
                problem = await _outcome(call(path))
                if problem is not None:
                    failures.append(f"{route} {name(path)}: {problem}")
        return failures

    failures = asyncio.run(run_all())
    assert not failures, f"{len(failures)} of {2 * len(files)} answers were not 2xx/4xx:\n" + (
        "\n".join(failures)
    )
