"""One live stream: frames in, stylized frames out, the latest frame winning.

Two tasks share a stream. The reader takes every message the client sends as it comes:
a frame waits in a single slot, and a newer frame replaces a waiting one (the replaced
frame is *skipped* and counted). The worker takes whatever waits in the slot once the
frame before it is answered, so a stream has at most one frame at the model and one
waiting, whatever rate its client sends at: its latency stays about one model pass plus
transport, and a fast sender takes no more of the model than a slow one.

Plain asyncio over a small transport interface (the HTTP route adapts a WebSocket; unit
tests hand in a fake).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.concurrency import within
from serve_app.config import LiveConfig
from serve_app.errors import (
    InternalError,
    InvalidParameters,
    PayloadTooLarge,
    ServiceError,
    StreamIdle,
    StreamStalled,
)
from serve_app.options import StylizeOptions

logger = logging.getLogger(__name__)


class ClientLeft(Exception):
    """Raised by a transport's send once the client is gone."""


class LiveTransport(Protocol):
    """The stream's connection, as the stream sees it."""

    async def receive(self) -> bytes | str | None:
        """The next message: bytes (a frame), text (a control message), None once closed."""

    async def send_text(self, text: str) -> None:
        """Raises ClientLeft once the client is gone (as ``send_bytes``)."""

    async def send_bytes(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class FrameAnswer:
    """A frame stylized: the encoded picture and what the client is told about it."""

    data: bytes
    width: int
    height: int
    timings_ms: dict[str, float]


@dataclass
class Frame:
    seq: int
    data: bytes
    options: StylizeOptions
    received_at: float = field(default_factory=time.monotonic)


class StreamMetrics(Protocol):
    def frame(self, outcome: str) -> None:
        """A frame ``received``, ``processed``, ``skipped`` or ``failed``."""

    def latency(self, ms: float) -> None:
        """A processed frame's time from its arrival to its answer being sent."""


StylizeFrame = Callable[[bytes, StylizeOptions], Awaitable[FrameAnswer]]
ChangeOptions = Callable[[StylizeOptions, dict[str, Any]], StylizeOptions]
Slot = Callable[[], AbstractAsyncContextManager[None]]


class LiveStream:
    """One client's stream; ``run`` returns when it ends."""

    def __init__(
        self,
        transport: LiveTransport,
        options: StylizeOptions,
        config: LiveConfig,
        stylize_frame: StylizeFrame,
        change_options: ChangeOptions,
        metrics: StreamMetrics,
        slot: Slot | None = None,
    ) -> None:
        """``stylize_frame``: a frame's bytes -> its answer (raises ServiceError for a bad
        frame). ``change_options``: the options after a control message (raises 422).
        ``slot``: a place at the model, shared by the streams (held while a frame is made)."""
        self._transport = transport
        self._options = options
        self._config = config
        self._stylize_frame = stylize_frame
        self._change_options = change_options
        self._metrics = metrics
        self._slot = slot or _no_bound
        self._waiting: Frame | None = None
        self._frame_arrived = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self.received = 0
        self.processed = 0
        self.skipped = 0
        self.failed = 0

    async def run(self) -> ServiceError | None:
        """Until the client leaves (None) or the stream must end (the error to close with:
        idle, stalled)."""
        reader = asyncio.ensure_future(self._read())
        worker = asyncio.ensure_future(self._work())
        try:
            done, _ = await asyncio.wait((reader, worker), return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in (reader, worker):
                task.cancel()
            # The worker's model call ends with it; nothing of the stream outlives run().
            await asyncio.gather(reader, worker, return_exceptions=True)

    # --- the reader --------------------------------------------------------------------

    async def _read(self) -> ServiceError | None:
        while True:
            try:
                message = await within(self._transport.receive(), self._config.idle_timeout_s)
            except asyncio.TimeoutError:
                return StreamIdle(f"nothing received for {self._config.idle_timeout_s:g} s")
            if message is None:
                return None
            try:
                if isinstance(message, str):
                    await self._control(message)
                else:
                    await self._arrived(message)
            except StreamStalled as stalled:
                return stalled
            except ClientLeft:
                return None

    async def _arrived(self, data: bytes) -> None:
        seq = self.received
        self.received += 1
        self._metrics.frame("received")
        if len(data) > self._config.max_frame_bytes:
            self._failed()
            await self._send_error(
                PayloadTooLarge(
                    f"a frame is at most {self._config.max_frame_bytes} bytes; "
                    f"this one has {len(data)}"
                ),
                seq,
            )
            return
        if self._waiting is not None:  # the newer frame wins
            self.skipped += 1
            self._metrics.frame("skipped")
        self._waiting = Frame(seq, data, self._options)
        self._frame_arrived.set()

    async def _control(self, text: str) -> None:
        """A control message: a JSON object of options to change (``{"style": "hayao"}``),
        acknowledged with the options now in force; frames already received keep theirs."""
        if len(text) > MAX_CONTROL_CHARS:  # not parsed: a few options fit many times over
            await self._send_error(
                PayloadTooLarge(
                    f"a text message is at most {MAX_CONTROL_CHARS} characters; "
                    f"this one has {len(text)}"
                )
            )
            return
        try:
            changes = json.loads(text, object_pairs_hook=_without_repeats)
            if not isinstance(changes, dict):
                raise ValueError("not an object")
        except _Repeated as repeated:
            await self._send_error(InvalidParameters(f"option {repeated} sent more than once"))
            return
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            await self._send_error(
                InvalidParameters('a text message is a JSON object of options, e.g. {"style": ...}')
            )
            return
        try:
            self._options = self._change_options(self._options, changes)
        except ServiceError as error:
            await self._send_error(error)
            return
        await self._send({"options": options_view(self._options)})

    # --- the worker --------------------------------------------------------------------

    async def _work(self) -> ServiceError | None:
        while True:
            await self._frame_arrived.wait()
            # The frame is taken only once a place at the model is free: meanwhile newer
            # frames replace the waiting one, so the frame made is the newest there is. The
            # place is given back before the answer goes out, for the next stream's frame.
            async with self._slot():
                self._frame_arrived.clear()
                frame, self._waiting = self._waiting, None
                if frame is None:
                    continue
                started = time.monotonic()
                try:
                    made: FrameAnswer | ServiceError = await self._stylize_frame(
                        frame.data, frame.options
                    )
                except ServiceError as error:
                    made = error
                except Exception:  # the model failed (a bug, out of memory): this frame only
                    logger.exception("live frame %d failed", frame.seq)
                    made = InternalError("the frame could not be made; the next one may be")
            try:
                await self._answer(frame, made, started)
            except StreamStalled as stalled:
                return stalled
            except ClientLeft:
                return None

    async def _answer(self, frame: Frame, made: FrameAnswer | ServiceError, started: float):
        if isinstance(made, ServiceError):
            self._failed()
            await self._send_error(made, frame.seq)
            return
        header = {
            "seq": frame.seq,
            "skipped": self.skipped,
            "style": frame.options.style,
            "width": made.width,
            "height": made.height,
            "timings_ms": {
                "wait": round((started - frame.received_at) * 1e3, 1),
                **{stage: round(ms, 1) for stage, ms in made.timings_ms.items()},
            },
        }
        async with self._send_lock:
            await self._bounded(self._transport.send_text(json.dumps(header)))
            await self._bounded(self._transport.send_bytes(made.data))
        self.processed += 1
        self._metrics.frame("processed")
        self._metrics.latency((time.monotonic() - frame.received_at) * 1e3)

    # --- sending -----------------------------------------------------------------------

    def _failed(self) -> None:
        self.failed += 1
        self._metrics.frame("failed")

    async def _send_error(self, error: ServiceError, seq: int | None = None) -> None:
        """A frame or a control message that went wrong: reported, and the stream goes on."""
        message: dict[str, Any] = {} if seq is None else {"seq": seq, "skipped": self.skipped}
        await self._send({**message, **error.to_dict()})

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._bounded(self._transport.send_text(json.dumps(message)))

    async def _bounded(self, sending: Awaitable[None]) -> None:
        """A send the client does not take within ``send_timeout_s`` ends the stream."""
        try:
            await within(sending, self._config.send_timeout_s)
        except asyncio.TimeoutError:
            raise StreamStalled(
                f"the client read nothing for {self._config.send_timeout_s:g} s"
            ) from None


@contextlib.asynccontextmanager
async def _no_bound() -> AsyncIterator[None]:
    yield


def options_view(options: StylizeOptions) -> dict[str, Any]:
    """The options a live stream's client may set, as it sees them."""
    return {name: getattr(options, name) for name in LIVE_OPTIONS}


# The subprotocol a live client speaks (offered beside ``bearer.<key>``).
LIVE_PROTOCOL = "animegan.live.v1"
MAX_CONTROL_CHARS = 4096  # a control message: a JSON object of the few live options


class _Repeated(Exception):
    """A control message names an option twice (JSON would keep the last silently)."""


def _without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in pairs:  # one pass: a message may hold many names
        if name in options:
            raise _Repeated(repr(name))
        options[name] = value
    return options


# What a live stream may set (at the start as query parameters, later by control message):
# the picture's look and size. Its format follows each frame's, and there are no faces.
LIVE_OPTIONS = ("style", "size", "strength", "preserve_color", "quality")
