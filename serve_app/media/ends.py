"""A media job's two ends, both run in the job's own thread (``worker.MediaThread``):
where its frames come from (``FrameSource``, over the reader) and where the stylized
frames go (``VideoSink``, ``AnimationSink``, over the writers).

What the libraries raise on the upload's content (a broken stream, timestamps the muxer
refuses) comes out as the media errors (``boundary.media_errors``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.config import MediaConfig
from serve_app.imaging.pixels import DecodedImage, apply_controls, resize_to
from serve_app.media import probe, writers
from serve_app.media.boundary import media_errors
from serve_app.media.likeness import Anchor
from serve_app.media.reader import Frame, MediaReader
from serve_app.options import StylizeOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaOutput:
    """A finished video or animation: in ``path`` (videos) or ``data`` (animations)."""

    media_type: str
    width: int
    height: int
    frames: int
    duration_s: float
    path: Path | None = None
    data: bytes | None = None
    # Frames a model replica made with weights other than the config's (one of the deploy
    # before, still stopping): the output goes to its caller but is never shared.
    foreign_frames: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size


@dataclass(frozen=True)
class Decoded:
    """A frame as the decoder's side hands it over."""

    frame: Frame
    photo: np.ndarray  # resized to the job's size (the controls blend with it)
    alpha: np.ndarray | None
    digest: str  # of ``photo``
    # Within the likeness bound of the last frame not so marked: reuses its picture
    # (``likeness``; always False with ``exact_frames``).
    alike: bool = False


def frame_digest(rgb: np.ndarray) -> str:
    header = f"{rgb.shape[0]}x{rgb.shape[1]}:".encode()
    return hashlib.blake2b(header + rgb.tobytes(), digest_size=20).hexdigest()


Stylized = tuple[Decoded, np.ndarray]
"""A frame and the model's picture of it, (H, W, 3) uint8, ready to be written."""


class FrameSource:
    """The decoder's side: frames resized, ``max_fps`` applied, each hashed and compared
    with the last frame computed for itself (``likeness``), audio packets handed straight
    to the sink (the muxer interleaves them)."""

    def __init__(
        self,
        reader: MediaReader,
        sink: Sink,
        options: StylizeOptions,
        dimensions: tuple[int, int],
    ) -> None:
        self._items: Iterator[Any] = iter(reader)
        self._sink = sink
        self._dimensions = dimensions  # each frame's, as the sink writes them
        self._min_gap = None if options.max_fps is None else Fraction(1) / Fraction(options.max_fps)
        self._video = reader.info.kind == "video"
        self._first_time: Fraction | None = None
        self._next_time: Fraction | None = None
        self._anchor = None if options.exact_frames else Anchor()

    def pull(self, most: int) -> tuple[list[Decoded], bool]:
        """Up to ``most`` frames; True once the input is exhausted."""
        pulled: list[Decoded] = []
        while len(pulled) < most:
            item = next(self._items, None)
            if item is None:
                return pulled, True
            if not isinstance(item, Frame):
                self._sink.packet(item)
                continue
            if self._dropped(item):
                continue
            decoded = DecodedImage(np.ascontiguousarray(item.rgb), item.alpha, "frame")
            resized = resize_to(decoded, self._dimensions)
            rgb = resized.rgb
            alike = self._anchor is not None and self._anchor.alike(rgb)
            pulled.append(Decoded(item, rgb, resized.alpha, frame_digest(rgb), alike))
        return pulled, False

    def close(self) -> None:
        """Let go of the reader's frame iterator (in the thread that ran it)."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def _dropped(self, frame: Frame) -> bool:
        """``max_fps`` as steps of 1/max_fps from the first frame: a frame is kept when it
        reaches the next step, so a 10 fps video capped at 9 keeps 9 frames a second (a
        gap counted from each kept frame would keep 5)."""
        if self._min_gap is None or not self._video or frame.pts is None:
            return False
        at = frame.pts * (frame.time_base or Fraction(1))
        if self._first_time is None:
            self._first_time = at
        if self._next_time is not None and at < self._next_time:
            return True
        steps = (at - self._first_time) // self._min_gap
        self._next_time = self._first_time + (steps + 1) * self._min_gap
        return False


class Sink:
    """Where stylized frames go, in order."""

    def packet(self, packet: Any) -> None:  # audio, copied (videos only)
        raise NotImplementedError

    def write(self, frames: list[Stylized]) -> None:
        raise NotImplementedError

    def finish(self) -> MediaOutput:
        raise NotImplementedError

    def abandon(self) -> None:
        """Release what is open (after finish: nothing)."""


def open_sink(
    reader: MediaReader,
    dest: Path | None,
    width: int,
    height: int,
    options: StylizeOptions,
    config: MediaConfig,
) -> Sink:
    if reader.info.kind == "video":
        if dest is None:
            raise ValueError("a video needs a destination file")
        return VideoSink(reader, dest, width, height, options, config)
    return AnimationSink(reader.info, width, height, options)


def release(source: FrameSource | None, sink: Sink | None, reader: MediaReader | None) -> None:
    """Everything a job opened, let go in its thread after everything else: the frame
    iterator, the writer, then the reader. Never raises (an error may be on its way)."""
    for what, close in (
        ("frame source", source and source.close),
        ("writer", sink and sink.abandon),
        ("reader", reader and reader.close),
    ):
        if close:
            try:
                close()
            except Exception:
                logger.warning("closing a media job's %s failed", what, exc_info=True)


def _finished(options: StylizeOptions, decoded: Decoded, picture: np.ndarray) -> np.ndarray:
    return apply_controls(decoded.photo, picture, options.strength, options.preserve_color)


class VideoSink(Sink):
    def __init__(
        self,
        reader: MediaReader,
        dest: Path,
        width: int,
        height: int,
        options: StylizeOptions,
        config: MediaConfig,
    ) -> None:
        container, self._media_type, _ = writers.output_container(reader.info, options.container)
        with media_errors("the video cannot be written back"):
            self._writer = writers.VideoWriter(
                dest, reader, width, height, container, config.video_crf
            )
        self._dest, self._options = dest, options
        self._width, self._height = width, height
        self._frames, self._duration_s = 0, reader.info.duration_s

    def packet(self, packet: Any) -> None:
        with media_errors("the video's audio cannot be copied"):
            self._writer.write_packet(packet)

    def write(self, frames: list[Stylized]) -> None:
        for decoded, picture in frames:
            rgb = _finished(self._options, decoded, picture)
            with media_errors(f"the video cannot be written back at frame {self._frames}"):
                self._writer.write_frame(rgb, decoded.frame)
            self._frames += 1

    def finish(self) -> MediaOutput:
        with media_errors("the video cannot be written back"):
            self._writer.close()
        # Every frame keeps its timestamp: the output lasts as long as the input.
        duration = self._duration_s
        return MediaOutput(
            self._media_type, self._width, self._height, self._frames, duration, path=self._dest
        )

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


class AnimationSink(Sink):
    def __init__(
        self, info: probe.MediaInfo, width: int, height: int, options: StylizeOptions
    ) -> None:
        self._writer = writers.AnimationWriter(info, options.quality)
        self._info, self._options = info, options
        self._width, self._height = width, height
        self._frames, self._duration_ms = 0, 0

    def packet(self, packet: Any) -> None:
        raise ValueError("an animation has no audio")

    def write(self, frames: list[Stylized]) -> None:
        for decoded, picture in frames:
            duration = decoded.frame.duration_ms or 0
            self._writer.add(_finished(self._options, decoded, picture), decoded.alpha, duration)
            self._frames += 1
            self._duration_ms += duration

    def finish(self) -> MediaOutput:
        with media_errors("the animation cannot be written back"):
            data = self._writer.finish()
        return MediaOutput(
            self._info.media_type,
            self._width,
            self._height,
            self._frames,
            self._duration_ms / 1000,
            data=data,
        )

    def abandon(self) -> None:
        self._writer.discard()
