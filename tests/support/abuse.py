"""What a hostile or merely busy world sends a service, for the tests that must survive
it: a steady stream of photos beside everything else, a crowd following one job over
Server-Sent Events and WebSockets, and tiny animations with very many frames."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.pictures import synthetic_jpeg

PHOTO_SIZE = 32  # the smallest pictures the model makes quickly: the stream is about answers


@dataclass(frozen=True)
class PhotoAnswer:
    """One photo request: its status (-1: no answer, the connection failed), its
    Retry-After header, what failed, and when (monotonic seconds) it was sent and answered."""

    status: int
    retry_after: str | None
    error: str | None
    sent_at: float
    answered_at: float


class PhotoStream:
    """A thread posting distinct tiny photos to ``/v1/stylize`` one after another, as
    long as it runs, and keeping every answer. Use as a context manager."""

    def __init__(self, base_url: str, seed: int, timeout_s: float = 120) -> None:
        self._base_url, self._timeout_s = base_url, timeout_s
        self._seeds = itertools.count(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answers: list[PhotoAnswer] = []
        self._thread = threading.Thread(target=self._run, name="photo-stream", daemon=True)

    def __enter__(self) -> PhotoStream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> list[PhotoAnswer]:
        self._stop.set()
        self._thread.join()
        return self.answers

    @property
    def answers(self) -> list[PhotoAnswer]:
        with self._lock:
            return list(self._answers)

    def wait_answers(self, count: int, since: float, timeout_s: float) -> list[PhotoAnswer]:
        """Waits until ``count`` photos sent after ``since`` were answered (or the time
        is up); returns those answered by then."""
        deadline = time.monotonic() + timeout_s
        while True:
            later = [a for a in self.answers if a.sent_at >= since]
            if len(later) >= count or time.monotonic() > deadline:
                return later
            time.sleep(0.05)

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=self._timeout_s) as client:
            while not self._stop.is_set():
                photo = synthetic_jpeg(48, 32, seed=next(self._seeds), quality=80)
                sent = time.monotonic()
                try:
                    response = client.post(
                        "/v1/stylize",
                        params={"size": PHOTO_SIZE},
                        files={"image": ("p.jpg", photo, "image/jpeg")},
                    )
                    answer = PhotoAnswer(
                        response.status_code,
                        response.headers.get("retry-after"),
                        None if response.status_code == 200 else response.text[:300],
                        sent,
                        time.monotonic(),
                    )
                except httpx.HTTPError as error:
                    answer = PhotoAnswer(-1, None, repr(error), sent, time.monotonic())
                with self._lock:
                    self._answers.append(answer)


def bad_photo_answers(answers: list[PhotoAnswer]) -> list[PhotoAnswer]:
    """Answers the service documents no reason for: anything but a 200, or a 503 with
    Retry-After (at capacity)."""
    return [a for a in answers if not (a.status == 200 or (a.status == 503 and a.retry_after))]


# --- a crowd following one job -------------------------------------------------------------


@dataclass
class Follower:
    """One follower's view: the states of the events it got, in order, and how it ended."""

    kind: str  # "sse" or "ws"
    states: list[str] = field(default_factory=list)
    first_at: float | None = None  # monotonic seconds of its first event
    status: int | None = None  # the HTTP status (SSE) of the stream
    close_code: int | None = None  # the WebSocket close code
    error: str | None = None


class Crowd:
    """``sse`` Server-Sent-Event streams and ``ws`` WebSockets following one job's events
    at once, from one asyncio loop in a thread of their own."""

    def __init__(self, base_url: str, job_id: str, sse: int, ws: int, timeout_s: float = 300):
        self._url = f"{base_url}/v1/jobs/{job_id}/events"
        self._timeout_s = timeout_s
        self.followers = [Follower("sse") for _ in range(sse)] + [Follower("ws") for _ in range(ws)]
        self._lock = threading.Lock()
        self._attached = 0
        self._all_attached = threading.Event()
        self._thread = threading.Thread(target=self._main, name="crowd", daemon=True)
        self._thread.start()

    @property
    def attached(self) -> int:
        """Followers that got their first event."""
        with self._lock:
            return self._attached

    def wait_attached(self, timeout_s: float) -> int:
        """Waits until every follower got its first event (or the time is up)."""
        self._all_attached.wait(timeout_s)
        return self.attached

    def join(self, timeout_s: float) -> list[Follower]:
        self._thread.join(timeout_s)
        return self.followers

    def _first_event(self, follower: Follower) -> None:
        follower.first_at = time.monotonic()
        with self._lock:
            self._attached += 1
            if self._attached == len(self.followers):
                self._all_attached.set()

    def _main(self) -> None:
        asyncio.run(self._follow_all())

    async def _follow_all(self) -> None:
        sse = [f for f in self.followers if f.kind == "sse"]
        limits = httpx.Limits(max_connections=len(sse) + 1, max_keepalive_connections=0)
        timeout = httpx.Timeout(self._timeout_s, connect=60)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            await asyncio.gather(
                *(self._sse(client, f) for f in sse),
                *(self._ws(f) for f in self.followers if f.kind == "ws"),
            )

    async def _sse(self, client: httpx.AsyncClient, follower: Follower) -> None:
        try:
            async with client.stream("GET", self._url) as response:
                follower.status = response.status_code
                if response.status_code != 200:
                    follower.error = (await response.aread()).decode(errors="replace")[:300]
                    return
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        if not follower.states:
                            self._first_event(follower)
                        follower.states.append(line.removeprefix("event: "))
        except httpx.HTTPError as error:
            follower.error = repr(error)

    async def _ws(self, follower: Follower) -> None:
        url = self._url.replace("http://", "ws://", 1)
        try:
            async with ws_connect(url, open_timeout=60) as socket:
                try:
                    while True:
                        message = json.loads(await socket.recv())
                        if not follower.states:
                            self._first_event(follower)
                        follower.states.append(message["event"])
                except ConnectionClosed as closed:
                    follower.close_code = closed.rcvd.code if closed.rcvd else None
        except (OSError, asyncio.TimeoutError, ConnectionClosed) as error:
            follower.error = repr(error)


def distinct_states(states: list[str]) -> list[str]:
    """The states in the order they came, each run of one state once (progress events
    repeat the state they belong to)."""
    return [state for state, _ in itertools.groupby(states)]


# --- media ------------------------------------------------------------------------------


def make_flicker_gif(path: str | Path, frames: int, side: int = 16) -> Path:
    """A GIF of ``frames`` tiny frames flickering between two pictures: every frame stays
    in the file (Pillow merges only equal neighbours), yet it is a few KB."""
    path = Path(path)
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    first = np.stack([np.tile(ramp, (side, 1))] * 3, axis=-1)
    second = 255 - first
    pictures = [Image.fromarray(first if i % 2 == 0 else second) for i in range(frames)]
    pictures[0].save(
        path, format="GIF", save_all=True, append_images=pictures[1:], duration=40, loop=0
    )
    return path


def gif_frame_count(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as picture:
        return picture.n_frames


def files_under(folder: Path) -> list[Path]:
    """Every file (not folder) under ``folder``; none when it does not exist."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
