"""The model deployment, as `serve run` and `serve deploy` import it: no torch here.

Building the application (``serve_app.app``) imports this module in a process of its own
before any replica starts, so what it imports is on every deploy's critical path: torch
alone cost that step about 0.8 s. The replica imports the model
(``stylizer.ModelReplica``: torch, the generator, the runtimes) when it starts, and each
method hands its call over.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np
from ray import serve

from serve_app.config import AppConfig
from serve_app.model.choice_board import replica_choice_board
from serve_app.model.identity import ModelIdentity, StylizedArray

if TYPE_CHECKING:
    from serve_app.model.stylizer import ModelReplica


@serve.deployment(max_ongoing_requests=16)
class Stylizer:
    def __init__(self, config: AppConfig):
        board = replica_choice_board()
        if board is not None:
            # On a fresh cluster the board's process then starts during the import. Best
            # effort: a board that cannot be reached is met again, and said, at the
            # replica's first call to it, which then decides its runtime alone.
            with contextlib.suppress(Exception):
                board.open()
        from serve_app.model.stylizer import ModelReplica  # torch: in the replica only

        self._model: ModelReplica = ModelReplica(config, board)

    def reconfigure(self, user_config: dict) -> None:
        self._model.reconfigure(user_config)

    async def stylize(self, rgb: np.ndarray, style: str) -> StylizedArray:
        """One (H, W, 3) uint8 array -> its stylized twin. Raises ValueError for a bad item."""
        return await self._model.stylize(rgb, style)

    async def stylize_frames(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        """A job's frames (one shape) -> their stylized twins, in order."""
        return await self._model.stylize_frames(frames, style)

    async def stylize_with_progress(
        self, rgb: np.ndarray, style: str
    ) -> AsyncIterator[tuple[int, int] | StylizedArray]:
        """``stylize`` as a stream: (steps done, steps in all) after each forward pass of a
        tiled picture, then the stylized array."""
        async for item in self._model.stylize_with_progress(rgb, style):
            yield item

    def identities(self) -> dict[str, ModelIdentity]:
        return self._model.identities()

    def stats(self) -> dict:
        return self._model.stats()

    def check_health(self) -> None:
        self._model.check_health()
