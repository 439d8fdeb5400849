"""A media job's thread owns its PyAV/Pillow objects: they are opened, used and closed in
it, and a cancelled, failed, timed-out or shut-down job closes them there, after the call
in flight has returned (closing a demuxer another thread still reads crashes FFmpeg).

Real videos decoded and encoded by PyAV; the hooks only pause the job's thread at chosen
moments (inside the reader, while the model computes, while encoding, while finishing)
until the job's cancellation has been asked for. No Ray.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serve_app.config import AppConfig
from serve_app.errors import UndecodableMedia
from serve_app.media import ends, frames, probe
from serve_app.media.reader import MediaReader
from serve_app.media.service import OUTPUT_PREFIX, MediaService
from serve_app.media.worker import THREAD_NAME, MediaThread
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import resolve_options
from tests.support import media as samples

IDENTITY = ModelIdentity("weights", "runtime")
PAUSE_LIMIT_S = 60  # a paused thread gives up after this (a broken test, not a pass)


def media_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


class Journal:
    """What happened in which thread, in order (appended from any thread)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def add(self, event: str) -> None:
        with self._lock:
            self.events.append((event, threading.get_ident()))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def threads(self, prefix: str) -> set[int]:
        return {ident for name, ident in self.events if name.startswith(prefix)}

    def index(self, name: str) -> int:
        return self.names().index(name)


class Pause:
    """Pauses whichever thread reaches it (once) until ``until()`` holds."""

    def __init__(self, journal: Journal, name: str) -> None:
        self.journal, self.name = journal, name
        self.reached = threading.Event()
        self.until: Callable[[], bool] = lambda: True
        self._used = False

    def __call__(self) -> None:
        if self._used:
            return
        self._used = True
        self.journal.add(f"{self.name} paused")
        self.reached.set()
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not self.until():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the test never let go")
            time.sleep(0.002)
        self.journal.add(f"{self.name} resumed")

    async def wait_reached(self) -> None:
        await asyncio.to_thread(self.reached.wait, PAUSE_LIMIT_S)
        assert self.reached.is_set(), f"{self.name} was never reached"


class RecordingReader(MediaReader):
    """The real reader, recording where it is opened, reads and is closed."""

    journal: Journal | None = None
    inside: Callable[[int], None] = staticmethod(lambda index: None)

    def __init__(self, *args, **kwargs) -> None:
        self.journal.add("reader open")
        super().__init__(*args, **kwargs)

    def _video_frame(self, decoded, index):
        self.journal.add(f"read {index}")
        self.inside(index)  # between FFmpeg's demuxer reads: the reader is mid-stream
        return super()._video_frame(decoded, index)

    def close(self) -> None:
        if self._container is not None or self._image is not None:
            self.journal.add("reader close")
        super().close()


@pytest.fixture()
def journal(monkeypatch) -> Journal:
    journal = Journal()
    monkeypatch.setattr(RecordingReader, "journal", journal)
    monkeypatch.setattr(frames, "MediaReader", RecordingReader)
    return journal


@pytest.fixture()
def video(tmp_path_factory) -> Path:
    return samples.make_h264_aac_mp4(tmp_path_factory.mktemp("v") / "in.mp4", seconds=2.0)


class EchoModel:
    """Answers each frame with itself; ``pause`` (awaited) holds the first call."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.hold = False

    async def __call__(self, batch: list[np.ndarray], style: str) -> list[StylizedArray]:
        if self.hold:
            self.hold = False
            self.reached.set()
            await asyncio.Event().wait()  # until cancelled
        return [StylizedArray(frame, IDENTITY, 0.0, 1.0, len(batch)) for frame in batch]


class NoCache:
    async def get(self, key):
        return None

    async def put(self, key, value):
        return None


def service(model) -> MediaService:
    config = AppConfig.model_validate(
        {
            "styles": [{"name": "s", "weights": "random"}],
            # The held model call never ends by itself: the job stops waiting for it soon.
            "media": {"frames_in_flight": 8, "frame_batch": 4, "stop_grace_s": 0.5},
        }
    )
    return MediaService(config, NoCache(), model, lambda style: IDENTITY)


def job_options(media: MediaService):
    return resolve_options(media._config, size=64, synchronous=False)


def outputs(directory: Path) -> list[Path]:
    return list(directory.glob(f"{OUTPUT_PREFIX}*"))


@pytest.fixture()
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The service's temporary outputs land here, so a test sees what is left over."""
    directory = tmp_path / "temp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


# --- the thread itself ---------------------------------------------------------------------


def test_calls_run_in_one_thread_in_order_and_stop_ends_it():
    async def main():
        seen = []
        async with MediaThread() as thread:
            for number in range(5):
                await thread.call(lambda n: seen.append((n, threading.get_ident())), number)
            assert await thread.call(sum, [1, 2, 3]) == 6
            with pytest.raises(ZeroDivisionError):
                await thread.call(lambda: 1 / 0)
        return seen, thread

    seen, thread = asyncio.run(main())
    assert [n for n, _ in seen] == [0, 1, 2, 3, 4]
    assert {ident for _, ident in seen} == {thread.ident} != {threading.get_ident()}
    assert not media_threads()


def test_a_cancelled_call_returns_only_after_the_thread_has():
    journal = Journal()
    pause = Pause(journal, "work")

    async def main():
        thread = MediaThread()
        task = asyncio.ensure_future(thread.call(pause))
        await pause.wait_reached()
        task.cancel()
        # asyncio.to_thread would let the cancellation through at once: wait for that.
        done, _ = await asyncio.wait([task], timeout=0.5)
        journal.add("task done" if done else "task still waiting")
        pause.until = lambda: True
        with pytest.raises(asyncio.CancelledError):
            await task
        journal.add("cancellation raised")
        await thread.stop()

    pause.until = lambda: False
    asyncio.run(main())
    assert journal.names() == [
        "work paused",
        "task still waiting",
        "work resumed",
        "cancellation raised",
    ]
    assert not media_threads()


# --- a job's objects close in its thread, after the call in flight --------------------------


def test_a_job_cancelled_while_its_thread_is_inside_the_reader_closes_it_after(
    journal, video, monkeypatch
):
    pause = Pause(journal, "decode")
    monkeypatch.setattr(RecordingReader, "inside", lambda self, index: index == 5 and pause())
    pause.until = lambda: False
    media = service(EchoModel())

    async def main():
        task = asyncio.ensure_future(media.run_job(job_options(media), video, lambda c: None))
        await pause.wait_reached()
        task.cancel()
        # Closing the reader now would pull the demuxer out from under the paused thread.
        done, _ = await asyncio.wait([task], timeout=0.5)
        journal.add("task done" if done else "task still waiting")
        pause.until = lambda: True
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    names = journal.names()
    assert names.index("task still waiting") < names.index("decode resumed")
    assert names.index("decode resumed") < names.index("reader close")
    # opened, read and closed by one thread: the job's own
    assert len(journal.threads("reader") | journal.threads("read ")) == 1
    assert threading.get_ident() not in journal.threads("reader")
    assert not media_threads()


MOMENTS = ["open", "probe", "decode", "model", "encode", "finish"]


def pause_at(moment: str, journal: Journal, monkeypatch, model: EchoModel) -> Pause | None:
    """Pause the job's thread at ``moment`` (None: the model is held instead)."""
    if moment == "model":
        model.hold = True
        return None
    pause = Pause(journal, moment)
    if moment == "decode":
        monkeypatch.setattr(RecordingReader, "inside", lambda self, index: index == 9 and pause())
        return pause

    def around(cls, name):
        original = getattr(cls, name)

        def paused(*args, **kwargs):
            if moment == "open":  # the reader is open, the writer not yet
                result = original(*args, **kwargs)
                pause()
                return result
            pause()
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, paused)

    where = {
        "open": (RecordingReader, "__init__"),
        "probe": (probe, "probe"),
        "encode": (ends.VideoSink, "write"),
        "finish": (ends.VideoSink, "finish"),
    }
    around(*where[moment])
    return pause


async def _reached(pause: Pause | None, model: EchoModel) -> None:
    if pause is None:
        await asyncio.wait_for(model.reached.wait(), PAUSE_LIMIT_S)
    else:
        await pause.wait_reached()


def _check_released(journal: Journal, pause: Pause | None, temp_dir: Path) -> None:
    names = journal.names()
    if "reader open" in names:
        assert names.count("reader close") == 1
        assert len(journal.threads("reader") | journal.threads("read ")) == 1
    if pause is not None and "reader close" in names:
        assert names.index(f"{pause.name} resumed") < names.index("reader close")
    assert not media_threads()
    assert not outputs(temp_dir)  # the half-written video is removed


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_job_cancelled_at_any_moment_releases_everything_in_its_thread(
    moment, journal, video, temp_dir, monkeypatch
):
    model = EchoModel()
    pause = pause_at(moment, journal, monkeypatch, model)
    media = service(model)

    async def main():
        task = asyncio.ensure_future(media.run_job(job_options(media), video, lambda c: None))
        if pause is not None:
            pause.until = lambda: task.cancelling() > 0
        await _reached(pause, model)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _check_released(journal, pause, temp_dir)


@pytest.mark.parametrize("moment", ["decode", "model", "encode"])
def test_a_job_past_its_deadline_releases_everything_in_its_thread(
    moment, journal, video, temp_dir, monkeypatch
):
    model = EchoModel()
    pause = pause_at(moment, journal, monkeypatch, model)
    media = service(model)

    async def main():
        job = asyncio.ensure_future(media.run_job(job_options(media), video, lambda c: None))
        if pause is not None:
            pause.until = lambda: job.cancelling() > 0
        deadline = asyncio.ensure_future(asyncio.wait_for(job, timeout=0.2))
        with pytest.raises(asyncio.TimeoutError):
            await deadline

    asyncio.run(main())
    _check_released(journal, pause, temp_dir)


@pytest.mark.parametrize("moment", ["decode", "model", "encode"])
def test_a_job_running_at_shutdown_releases_everything_in_its_thread(
    moment, journal, video, temp_dir, monkeypatch
):
    """asyncio.run cancels what is left when its main returns, as a stopping replica does."""
    model = EchoModel()
    pause = pause_at(moment, journal, monkeypatch, model)
    media = service(model)

    async def main():
        job = asyncio.ensure_future(media.run_job(job_options(media), video, lambda c: None))
        if pause is not None:
            pause.until = lambda: job.cancelling() > 0
        await _reached(pause, model)
        return job  # still running

    job = asyncio.run(main())
    assert job.cancelled()
    _check_released(journal, pause, temp_dir)


def test_a_job_that_fails_mid_read_closes_in_its_thread(journal, tmp_path, temp_dir):
    whole = samples.make_h264_aac_mp4(tmp_path / "f.mp4", faststart=True)
    cut = samples.truncate(whole, tmp_path / "cut.mp4")
    media = service(EchoModel())
    with pytest.raises(UndecodableMedia):
        asyncio.run(media.run_job(job_options(media), cut, lambda c: None))
    _check_released(journal, None, temp_dir)
    assert "reader close" in journal.names()


def test_many_cancellations_of_a_real_video_leave_no_thread_and_no_output(video, temp_dir):
    """Cancelled at once, after so many progress reports, and once it is done."""
    media = service(EchoModel())
    outcomes = []

    async def cancel_after(reports: int) -> str:
        seen = asyncio.Event()
        if reports == 0:
            seen.set()
        count = 0

        def on_progress(counts) -> None:
            nonlocal count
            count += 1
            if count >= reports:
                seen.set()

        task = asyncio.ensure_future(media.run_job(job_options(media), video, on_progress))
        waiter = asyncio.ensure_future(seen.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        task.cancel()
        try:
            output = await task
        except asyncio.CancelledError:
            return "cancelled"
        output.path.unlink()
        return "done"

    for reports in (0, 1, 2, 3, 5, 8, 10_000):
        outcomes.append(asyncio.run(cancel_after(reports)))
        assert not media_threads()
        assert not outputs(temp_dir)
    assert outcomes[0] == "cancelled" and outcomes[-1] == "done"
