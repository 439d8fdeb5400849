"""Streaming decode of a video or animated picture: one frame at a time, in order.

For videos, audio packets pass through untouched (the writer copies them). Only the
current frame is held, so a job's memory is bounded by the frames it keeps in flight.
PyAV objects are not thread-safe: a reader is opened, iterated and closed by one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from serve_app.errors import UndecodableMedia
from serve_app.media.boundary import media_error, media_errors
from serve_app.media.probe import (
    PILLOW_ANIMATIONS,
    MediaInfo,
    Source,
    hidden_frames,
    open_video,
    rewound,
)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame in stored orientation (the display rotation is not applied)."""

    index: int
    rgb: np.ndarray
    alpha: np.ndarray | None = None
    pts: int | None = None
    time_base: Fraction | None = None
    duration_ms: int | None = None


class MediaReader:
    """Decodes frames one at a time, in order; for videos, passes audio packets through.

    Iterating yields :class:`Frame` and (videos) ``av.Packet`` items in demux order.
    Only the current frame is held; a file that breaks off raises UndecodableMedia.
    """

    def __init__(self, source: Source, info: MediaInfo) -> None:
        self.info = info
        self._image: Image.Image | None = None
        self._container: av.container.InputContainer | None = None
        self.audio_streams: tuple[av.audio.stream.AudioStream, ...] = ()
        try:
            if info.kind == "video":
                with media_errors("the video cannot be read"):
                    self._container = open_video(source)
                    self.video_stream = self._container.streams.video[0]
                    self.video_stream.codec_context.thread_type = "AUTO"
                    self.audio_streams = tuple(self._container.streams.audio)
            else:
                with media_errors("the animation cannot be read"):
                    self._image = Image.open(rewound(source), formats=tuple(PILLOW_ANIMATIONS))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._image is not None:
            self._image.close()
            self._image = None

    def __iter__(self) -> Iterator[Frame | av.Packet]:
        if self.info.kind == "video":
            return self._video_items()
        return self._animation_frames()

    def _video_items(self) -> Iterator[Frame | av.Packet]:
        assert self._container is not None
        index = discarded = packets = 0
        demuxed = self._container.demux(self.video_stream, *self.audio_streams)
        try:
            for packet in demuxed:
                if packet.stream.type != "video":
                    if packet.size:  # the demuxer's end-of-stream packets carry nothing
                        yield packet
                    continue
                # A frame an edit list leaves out (a clip cut without re-encoding starts
                # before its first shown frame): decoded for the frames after it, never
                # shown, and counted in the header's frames all the same.
                discarded += bool(packet.size and packet.is_discard)
                packets += bool(packet.size)
                for decoded in self.video_stream.decode(packet):
                    yield self._video_frame(decoded, index)
                    index += 1
        except Exception as exc:  # FFmpeg's errors, or what PyAV makes of an odd frame
            error = media_error(exc, f"the video breaks off at frame {index}")
            if error is exc:
                raise
            raise error from exc
        # A cut file stops short of the frames probed; a clip cut without re-encoding that
        # starts between keyframes has them all, but the decoder drops the packets before
        # its first keyframe (they need one): those frames are not in the output.
        self._check_count(max(index + discarded, packets))

    def _video_frame(self, decoded: av.VideoFrame, index: int) -> Frame:
        if index >= self.info.frames:
            raise UndecodableMedia(f"the video has more frames than the {self.info.frames} probed")
        if (decoded.width, decoded.height) != (self.info.width, self.info.height):
            # Its header's size is what the limits were checked on (a stream may change
            # size mid-way: 64x64 to 16kx16k), and what the output is written at.
            raise UndecodableMedia(
                f"the video changes its frame size at frame {index} ({decoded.width}x"
                f"{decoded.height}, its header says {self.info.width}x{self.info.height}): "
                "one size throughout is taken"
            )
        rgb = decoded.to_ndarray(format="rgb24")
        return Frame(index=index, rgb=rgb, pts=decoded.pts, time_base=decoded.time_base)

    def _animation_frames(self) -> Iterator[Frame]:
        assert self._image is not None
        first = hidden_frames(self._image)  # an APNG's default image is not one of them
        for index in range(self.info.frames):
            with media_errors(f"the animation breaks off at frame {index}"):
                self._image.seek(first + index)
                frame = self._animation_frame(self._image, index)
            yield frame

    def _animation_frame(self, image: Image.Image, index: int) -> Frame:
        # Converting loads the frame; WebP reports its duration only once loaded.
        converted = image.convert("RGBA" if self.info.has_alpha else "RGB")
        canvas = (self.info.width, self.info.height)
        if converted.size != canvas:
            # A GIF frame reaching past the canvas makes Pillow enlarge the picture;
            # browsers show the canvas only, and so does every output frame.
            converted = converted.crop((0, 0, *canvas))
        converted = np.asarray(converted)
        duration = round(image.info.get("duration", 0) or 0)
        if not self.info.has_alpha:
            return Frame(index=index, rgb=converted, duration_ms=duration)
        return Frame(
            index=index,
            rgb=converted[..., :3].copy(),
            alpha=converted[..., 3].copy(),
            duration_ms=duration,
        )

    def _check_count(self, count: int) -> None:
        if count < self.info.frames:
            raise UndecodableMedia(
                f"the video breaks off at frame {count} of {self.info.frames} (truncated?)"
            )
