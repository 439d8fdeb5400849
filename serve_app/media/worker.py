"""One thread per media job: it opens, uses and closes the job's decoder and encoder.

PyAV (FFmpeg) and Pillow objects are not thread-safe, and FFmpeg crashes the whole
process (SIGSEGV in ``av_read_frame``) when a demuxer is closed while another thread
still reads it. ``asyncio.to_thread`` cannot stop its thread: a cancelled caller (a
``DELETE`` of the job, its deadline, a lost lease, shutdown) would run its ``finally``
and close what that thread still uses. So every call on a job's reader and writer runs
in the job's own thread, one at a time and in order, and a cancelled caller still waits
for the call in flight to return before its cancellation goes on; whatever closes them
runs in that same thread, after everything else. The job's media work also stays off the
event loop's shared thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

THREAD_NAME = "media-job"
"""Prefix of every media job thread's name (``media-job-<n>``)."""

_numbers = itertools.count(1)
_Call = tuple[concurrent.futures.Future, Callable[..., Any], tuple[Any, ...]]


class MediaThread:
    """The thread a media job's decoder and encoder live in, from open to close.

    Use as ``async with MediaThread() as thread: await thread.call(...)``: leaving the
    block ends the thread after the calls made before, and waits for it to end.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._ended: concurrent.futures.Future = concurrent.futures.Future()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._serve, name=f"{THREAD_NAME}-{next(_numbers)}", daemon=True
        )
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    async def __aenter__(self) -> MediaThread:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in this thread, after the calls before it. Cancelled, it
        still waits for the call to return before the cancellation goes on (the call's
        own outcome is then dropped), so nothing the call uses is released under it."""
        if self._stopping:
            raise RuntimeError("the media thread has been stopped")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((future, function, args))
        return await _through_cancellation(future)

    async def stop(self) -> None:
        """End the thread once the calls made before have run; waits until it has ended,
        even when cancelled meanwhile (the cancellation then goes on)."""
        if not self._stopping:
            self._stopping = True
            self._calls.put(None)
        await _through_cancellation(self._ended)
        self._thread.join()  # it has left its loop: a moment at most

    def _serve(self) -> None:
        try:
            while (call := self._calls.get()) is not None:
                _run(*call)
                del call  # its arguments (frames) go as soon as they are used
        finally:
            self._ended.set_result(None)


def _run(future: concurrent.futures.Future, function: Callable[..., Any], args: tuple) -> None:
    future.set_running_or_notify_cancel()
    try:
        result = function(*args)
    except BaseException as exc:  # handed to the caller, whatever it is
        future.set_exception(exc)
    else:
        future.set_result(result)


async def _through_cancellation(future: concurrent.futures.Future) -> Any:
    """The future's outcome; a cancellation meanwhile is raised only once it is done."""
    waiting = asyncio.wrap_future(future)
    cancelled: asyncio.CancelledError | None = None
    while not waiting.done():
        try:
            await asyncio.wait([waiting])  # unlike awaiting it, leaves it running
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if cancelled is not None:
        if not waiting.cancelled():
            waiting.exception()  # retrieved: the cancellation wins over the call's outcome
        raise cancelled
    return waiting.result()
