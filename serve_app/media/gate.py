"""The model's capacity shared between jobs and single photos on one ingress replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from serve_app.concurrency import within


class ModelGate:
    """Model calls of every job on one ingress replica: ``idle`` at once while no single
    photo came in the last ``quiet_s``, ``busy`` at once while photos do."""

    def __init__(self, idle: int, busy: int, quiet_s: float) -> None:
        self._idle, self._busy, self._quiet_s = idle, busy, quiet_s
        self._interactive_at = float("-inf")
        self._in_use = 0
        self._released = asyncio.Event()

    def interactive(self) -> None:
        """A single photo arrived: jobs step back for a while."""
        self._interactive_at = time.monotonic()

    @property
    def limit(self) -> int:
        quiet = time.monotonic() - self._interactive_at >= self._quiet_s
        return self._idle if quiet else self._busy

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        while self._in_use >= self.limit:
            self._released.clear()
            # The limit also rises by itself once photos stop: look again now and then.
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._released.wait(), self._quiet_s / 4)
        self._in_use += 1
        try:
            yield
        finally:
            self._in_use -= 1
            self._released.set()
