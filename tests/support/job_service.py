"""A job service without Ray: a fake stylize call and helpers to drive it (unit tests)."""

from __future__ import annotations

import asyncio
import time

from serve_app.errors import Overloaded
from serve_app.jobs.service import Submission
from serve_app.options import StylizeOptions
from serve_app.pipeline.results import StylizeResult

OPTIONS = StylizeOptions(style="alpha", size=32, format="png", quality=None)
ALICE, BOB = "a" * 32, "b" * 32


class FakeStylize:
    """Answers after ``delay`` s; counts calls; ``gate`` (if set) holds every call; the
    first ``overloads`` calls find the service at capacity."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None, overloads: int = 0):
        self.delay, self.error, self.overloads = delay, error, overloads
        self.calls = 0
        self.cancelled = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.configured_weights = True  # False: as a replica of the deploy before answers

    async def __call__(self, data: bytes, options: StylizeOptions, timeout_s: float):
        self.calls += 1
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        if self.overloads:
            self.overloads -= 1
            raise Overloaded("too many pictures in progress; retry shortly")
        return StylizeResult(
            data=b"picture:" + data,
            media_type="image/png",
            cache="miss",
            style=options.style,
            width=options.size,
            height=options.size,
            key="k",
            random_weights=True,
            configured_weights=self.configured_weights,
        )


def submission(data: bytes = b"photo", owner: str = ALICE, **fields) -> Submission:
    return Submission(
        data, fields.pop("options", OPTIONS), f"key-of-{data!r}", owner=owner, **fields
    )


async def until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
