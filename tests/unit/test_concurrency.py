"""``within``: a timeout that never loses its caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.concurrency import next_within, within


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


def test_a_cancelled_caller_may_close_the_generator_it_was_stepping():
    """The caller of ``within(anext(gen), ...)`` is cancelled mid-step: by the time the
    cancellation reaches it the step has ended, so closing the generator works (it raised
    "asynchronous generator is already running", and the step's own clean-up was cut)."""
    cleaned = []

    async def changes():
        try:
            await asyncio.sleep(10)
            yield "change"
        finally:
            await asyncio.sleep(0.01)  # the step's own clean-up takes a moment
            cleaned.append(True)

    async def scenario():
        follow = changes()

        async def waiter():
            try:
                await within(anext(follow), 5)
            finally:
                await follow.aclose()

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait([task])
        return task

    task = asyncio.run(scenario())
    assert task.cancelled() and cleaned == [True]


@pytest.mark.parametrize("with_asyncio_timeout", [True, False])
def test_next_within_gives_items_then_the_end_or_times_out(monkeypatch, with_asyncio_timeout):
    """The same with Python 3.11's ``asyncio.timeout`` and without it (3.10: ``within``)."""
    if not with_asyncio_timeout:
        monkeypatch.delattr(asyncio, "timeout", raising=False)

    async def items(stall: bool):
        yield "a"
        if stall:
            await asyncio.sleep(10)
        yield "b"

    async def scenario():
        quick = items(stall=False)
        got = [await next_within(quick, 1), await next_within(quick, 1)]
        with pytest.raises(StopAsyncIteration):
            await next_within(quick, 1)
        stalled = items(stall=True)
        got.append(await next_within(stalled, 1))
        with pytest.raises(asyncio.TimeoutError):
            await next_within(stalled, 0.05)
        await stalled.aclose()
        return got

    assert asyncio.run(scenario()) == ["a", "b", "a"]
