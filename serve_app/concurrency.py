"""Running work off the request: detached tasks, threads that are waited for, memory budgets.

Generic asyncio helpers the pipeline, media and jobs share; nothing of the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


def trim_heap() -> None:
    """glibc's malloc_trim(0); nothing where the C library has no such call."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def run_detached(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """A task that carries none of the current request's context variables."""
    return contextvars.Context().run(asyncio.ensure_future, coroutine)


class MemoryBudget:
    """An async semaphore counted in bytes: decodes reserve their peak memory from it.

    One reservation larger than the whole budget is let through alone, so no upload
    within the limits waits forever.
    """

    def __init__(self, total: int) -> None:
        self._total = total
        self._free = total
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, amount: int) -> AsyncIterator[None]:
        amount = min(amount, self._total)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= amount)
            self._free -= amount
        try:
            yield
        finally:
            async with self._changed:
                self._free += amount
                self._changed.notify_all()


class Backoff:
    """The waits between a retried call's tries: ``first_s``, then twice as long each
    time, never more than ``most_s``."""

    def __init__(self, first_s: float = 0.5, most_s: float = 5.0) -> None:
        self.next_s = first_s
        self._most_s = most_s

    async def wait(self) -> None:
        await asyncio.sleep(self.next_s)
        self.next_s = min(self.next_s * 2, self._most_s)


async def run_to_completion(function, *args):
    """``asyncio.to_thread``, except that a cancelled caller still waits for the thread:
    whatever the thread was doing (a forward pass) has ended when the cancellation
    arrives, so the locks it ran under are not released while it still runs."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


async def run_in_to_completion(executor: Executor, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on ``executor``; a cancelled caller still waits for it to end
    (a write in progress lands before whatever cleans up after the cancellation)."""
    future = asyncio.get_running_loop().run_in_executor(executor, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


async def in_thread(executor: Executor | None, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on ``executor`` (None: the loop's default threads)."""
    return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop. A loop that awaits the redis
    client calls it each time round: the client's reads can swallow a cancellation that
    races their own timeout (they return or raise something else), while the task still
    counts the request; without this the loop would run on forever, and whoever waits
    for the task with it. Checked by the loops, not inside the store's calls: a cancelled
    job run's cleanup still reads and writes the store while its task is cancelling."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``awaitable``'s result, or ``asyncio.TimeoutError`` after ``timeout_s`` (and the
    awaitable cancelled). Unlike ``asyncio.wait_for`` before Python 3.12, a cancellation of
    the caller that arrives just as the awaitable finishes is never lost: wait_for then
    returns the result, and a loop around it carries on as if nobody had cancelled it.
    Either way the awaitable has ended when this returns or raises: a generator's step is
    over, so the caller may close the generator."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        await cancel_and_wait(task)
        raise
    if not done:
        await cancel_and_wait(task)
        raise asyncio.TimeoutError
    return task.result()


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait until it has ended, however often the caller is cancelled
    meanwhile (the caller raises its own cancellation); what the task raised is dropped,
    since nobody waits for its result any more."""
    task.cancel()
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


async def next_within(items: AsyncIterator[T], timeout_s: float) -> T:
    """``items``' next item, or ``asyncio.TimeoutError`` after ``timeout_s`` (the step
    cancelled); ``StopAsyncIteration`` at its end. Where Python has ``asyncio.timeout``
    (3.11) the step runs in the caller's task, so an upload's chunks cost no task each."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        return await within(anext(items), timeout_s)
    async with timeout(timeout_s):
        return await anext(items)
