"""``within``: a timeout that never loses its caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.concurrency import within


def test_within_answers_or_times_out_and_cancels():
    async def scenario():
        assert await within(asyncio.sleep(0, result="done"), 5) == "done"
        never = asyncio.get_running_loop().create_future()
        with pytest.raises(asyncio.TimeoutError):
            await within(never, 0.01)
        return never

    assert asyncio.run(scenario()).cancelled()


def test_a_cancellation_that_arrives_as_the_awaited_thing_finishes_is_kept():
    """The caller is cancelled in the same turn of the loop in which what it waits for
    finishes: it must end cancelled, not carry on with the result (``asyncio.wait_for``
    before Python 3.12 carries on)."""

    async def scenario():
        answer = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(within(answer, 10))
        await asyncio.sleep(0)  # the caller now waits
        answer.set_result("late")
        waiting.cancel()
        await asyncio.wait([waiting])
        return waiting

    assert asyncio.run(scenario()).cancelled()
