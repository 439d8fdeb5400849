"""The model deployment as the service sees it: calls to the Stylizer over a Serve handle.

The service is Ray-free and talks to a :class:`serve_app.pipeline.stylize.Model`; this is
the one implementation that crosses into Ray: it turns a handle's calls into that
interface, follows a tiled picture's forward passes as a stream of steps, stops the work
on the replica when nobody waits any more, and maps Ray's failures to the service's own
(a replica that died: ``ReplicaFailed``, which callers retry; a full queue: 503).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app.errors import Overloaded, ReplicaFailed
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.pipeline.ports import ProgressSink

logger = logging.getLogger(__name__)

# A replica that dies mid-call: callers retry (stylizing is idempotent).
REPLICA_FAILURES = (ActorDiedError, ActorUnavailableError, RayActorError)
STATS_TIMEOUT_S = 1.0
IDENTITY_TIMEOUT_S = 30.0


class ModelClient:
    """The Stylizer deployment behind the service's ``Model`` interface."""

    def __init__(self, stylizer: DeploymentHandle, max_whole_pixels: int) -> None:
        """``max_whole_pixels``: past it a picture is tiled and its steps can be followed."""
        self._stylizer = stylizer
        self._max_whole_pixels = max_whole_pixels

    async def stylize(
        self, rgb: np.ndarray, style: str, on_progress: ProgressSink | None = None
    ) -> StylizedArray:
        """One array through the model; ``on_progress`` hears how far a tiled picture's
        forward passes are (a small picture is one pass: nothing to report)."""
        tiled = rgb.shape[0] * rgb.shape[1] > self._max_whole_pixels
        if on_progress is not None and tiled:
            stream = self._stylizer.options(stream=True).stylize_with_progress
            return await _call(stream.remote(rgb, style), on_progress)
        return await _call(self._stylizer.stylize.remote(rgb, style))

    async def stylize_frames(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        return await _call(self._stylizer.stylize_frames.remote(frames, style))

    async def identities(self) -> dict[str, ModelIdentity]:
        """What a model replica runs for each style; {} when none answers in time."""
        try:
            return await asyncio.wait_for(self._stylizer.identities.remote(), IDENTITY_TIMEOUT_S)
        except Exception as error:  # learnt from the first answer instead
            logger.warning("model identity unavailable: %s", error)
            return {}

    async def stats(self) -> dict | None:
        """One model replica's own report; None when none answers within a second."""
        try:
            return await asyncio.wait_for(self._stylizer.stats.remote(), STATS_TIMEOUT_S)
        except Exception as error:  # stats must answer even when the model cannot
            logger.warning("model replica stats unavailable: %s", error)
            return None


async def _call(response, on_progress: ProgressSink | None = None):
    try:
        if on_progress is None:
            return await response
        async for item in response:
            if isinstance(item, StylizedArray):
                return item
            on_progress(*item)
        raise ReplicaFailed("the model's stream ended without a picture")
    except asyncio.CancelledError:
        response.cancel()  # nobody waits any more: stop the work on the replica too
        raise
    except BackPressureError:
        raise Overloaded("the service is at capacity; retry shortly") from None
    except REPLICA_FAILURES as error:
        raise ReplicaFailed(str(error)[:200]) from error
