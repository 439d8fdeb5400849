"""The places where one replica runs jobs, handed to the waiting jobs' owners in turn.

A first-come semaphore lets one owner's hundred queued videos go before every other
owner's next job. Here a freed place goes to the waiting owner with the fewest jobs
running on this replica; among those, to the one given a place longest ago (an owner
with nothing running or waiting starts afresh, first in line), then to the one whose
waiting job came first. Each owner's own jobs start in the order they came. So owners
with backlogs take turns, and a service without API keys (one owner, everyone's jobs)
runs them first come, first served.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque


class FairSlots:
    """``places`` jobs run at once; the rest wait for a place, owner by owner."""

    def __init__(self, places: int) -> None:
        self._free = places
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._arrivals = itertools.count()
        self._grants = itertools.count()
        self._last_grant: dict[str, int] = {}  # owners with a job running or waiting only

    def running(self, owner: str) -> int:
        return self._running[owner]

    async def acquire_within(self, owner: str, timeout_s: float) -> bool:
        """A place for one of ``owner``'s jobs within ``timeout_s`` (False: none, and
        nothing held). A cancelled wait holds nothing either."""
        if self._free and not self._waiting:
            self._take(owner)
            return True
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._arrivals), granted)
        self._waiting.setdefault(owner, deque()).append(entry)
        try:
            # asyncio.wait, not wait_for: wait_for may swallow a cancel that comes as the
            # place does, and a stopped job would then run.
            done, _ = await asyncio.wait({granted}, timeout=max(timeout_s, 0.0))
        except asyncio.CancelledError:
            if self._leave(owner, entry):
                self.release(owner)  # handed a place just as the wait was cancelled
            raise
        return bool(done) or self._leave(owner, entry)

    def release(self, owner: str) -> None:
        """One of ``owner``'s jobs gives its place back."""
        self._running[owner] -= 1
        if self._running[owner] <= 0:
            del self._running[owner]
            self._forget_if_idle(owner)
        self._free += 1
        self._hand_out()

    def _take(self, owner: str) -> None:
        self._free -= 1
        self._running[owner] += 1
        self._last_grant[owner] = next(self._grants)

    def _forget_if_idle(self, owner: str) -> None:
        if owner not in self._running and owner not in self._waiting:
            self._last_grant.pop(owner, None)

    def _turn(self, owner: str) -> tuple[int, int, int]:
        return (self._running[owner], self._last_grant.get(owner, -1), self._waiting[owner][0][0])

    def _hand_out(self) -> None:
        while self._free and self._waiting:
            owner = min(self._waiting, key=self._turn)
            queue = self._waiting[owner]
            _, granted = queue.popleft()
            if not queue:
                del self._waiting[owner]
            self._take(owner)
            granted.set_result(None)

    def _leave(self, owner: str, entry: tuple[int, asyncio.Future[None]]) -> bool:
        """Stop waiting; True when a place was handed over already (then it is held)."""
        if entry[1].done():
            return True
        queue = self._waiting.get(owner)
        if queue is not None:
            queue.remove(entry)
            if not queue:
                del self._waiting[owner]
                self._forget_if_idle(owner)
        return False
