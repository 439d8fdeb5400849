"""Writing stylized frames: videos re-encoded with the input's timestamps and audio
copied, animations in the input's format with its durations and loop count."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from serve_app.errors import InvalidVideoOptions
from serve_app.media.probe import CONTAINER_MEDIA_TYPES, MediaInfo
from serve_app.media.reader import Frame, MediaReader
from serve_app.options import OUTPUT_CONTAINERS

_BT709 = 1  # ITU-T H.273's code for BT.709 primaries, transfer and matrix alike
_EXTENSIONS = {"mp4": "mp4", "mov": "mov", "matroska": "mkv", "webm": "webm"}


# What each output container can carry without re-encoding the audio. WebM allows only
# Opus and Vorbis; FFmpeg's MP4 muxer takes Opus and FLAC, QuickTime's does not.
_AUDIO_ALLOWED: dict[str, frozenset[str] | None] = {
    "webm": frozenset({"opus", "vorbis"}),
    "mp4": frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}),
    "mov": frozenset({"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le"}),
    "matroska": None,  # anything
}


def output_container(info: MediaInfo, requested: str) -> tuple[str, str, str]:
    """(container, media type, file extension without dot) for a requested output."""
    if requested not in OUTPUT_CONTAINERS:
        raise InvalidVideoOptions(
            f"container {requested!r} is not one of {', '.join(OUTPUT_CONTAINERS)}"
        )
    container = info.container if requested == "same" else requested
    if container not in _EXTENSIONS:
        raise InvalidVideoOptions(f"a {info.container} input cannot be written as a video")
    allowed = _AUDIO_ALLOWED[container]
    refused = [c for c in info.audio_codecs if allowed is not None and c not in allowed]
    if refused:
        raise InvalidVideoOptions(
            f"{container} cannot hold {', '.join(sorted(set(refused)))} audio "
            f"(it takes {', '.join(sorted(allowed or ()))}); choose another container"
        )
    return container, CONTAINER_MEDIA_TYPES[container], _EXTENSIONS[container]


class VideoWriter:
    """Encodes frames with the input's timestamps and copies its audio packets unchanged.

    H.264 (libx264, yuv420p) for MP4/MOV/MKV, VP9 (libvpx-vp9, CRF + 12) for WebM. The
    display rotation is written as the stream's display matrix, so the output plays the
    same way up as the input.
    """

    def __init__(
        self,
        dest: str | Path,
        reader: MediaReader,
        width: int,
        height: int,
        container: str,
        crf: int,
    ) -> None:
        self.width, self.height = width, height
        self._info = reader.info
        self._out = av.open(str(dest), "w", format=container)
        try:
            self._video = self._add_video(reader, container, crf)
            self._audio = {
                source.index: self._out.add_stream_from_template(source)
                for source in reader.audio_streams
            }
        except Exception:
            self._out.close()
            raise

    def _add_video(self, reader: MediaReader, container: str, crf: int):
        source = reader.video_stream
        rate = source.average_rate or source.guessed_rate or Fraction(round(self._info.fps) or 25)
        if container == "webm":
            stream = self._out.add_stream("libvpx-vp9", rate=rate)
            stream.options = {"crf": str(min(crf + 12, 63)), "b": "0", "row-mt": "1"}
        else:
            stream = self._out.add_stream("libx264", rate=rate)
            stream.options = {"crf": str(crf)}
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        # BT.709, limited range, said in the stream: untagged, players guess the matrix
        # from the size (BT.601 below 720 lines), and the colours shift.
        context = stream.codec_context
        context.color_primaries = context.color_trc = context.colorspace = _BT709
        context.color_range = ColorRange.MPEG
        # The input's time base, so every frame keeps its exact timestamp (VFR included).
        stream.time_base = stream.codec_context.time_base = source.time_base
        if self._info.rotation:
            stream.set_display_rotation(-self._info.rotation)  # counter-clockwise
        return stream

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._out.close()  # an error is on its way up; the file is discarded anyway

    def write_frame(self, rgb: np.ndarray, like: Frame) -> None:
        """Encode ``rgb`` (height, width, 3 uint8) at ``like``'s timestamp."""
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(
                f"frame of shape {rgb.shape}, expected ({self.height}, {self.width}, 3)"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, np.uint8), format="rgb24")
        frame = frame.reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        if like.pts is not None and like.time_base is not None:
            frame.pts, frame.time_base = like.pts, like.time_base
        else:
            frame.pts, frame.time_base = like.index, 1 / Fraction(self._video.average_rate or 25)
        self._out.mux(self._video.encode(frame))

    def write_packet(self, packet: av.Packet) -> None:
        """Mux an input audio packet as it is (its bytes are not touched)."""
        packet.stream = self._audio[packet.stream.index]
        self._out.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        if self._out is None:
            return
        try:
            self._out.mux(self._video.encode(None))
        finally:
            self._out.close()
            self._out = None


class AnimationWriter:
    """Collects frames and writes them as the input's format, durations and loop count.

    Pillow writes animations whole, so every frame is held until :meth:`finish` (as a
    Pillow image: 4 bytes a pixel, RGB included), and the encoders then work on all of
    them at once: ``config.ANIMATION_BYTES_PER_PIXEL`` is the measured peak, which
    ``MediaConfig.max_animation_pixels`` bounds.
    """

    def __init__(self, info: MediaInfo, quality: int | None) -> None:
        if info.kind != "animation":
            raise ValueError(f"AnimationWriter writes animations, not a {info.kind}")
        self._info = info
        self._quality = quality
        self._frames: list[Image.Image] = []
        self._durations: list[int] = []

    def add(self, rgb: np.ndarray, alpha: np.ndarray | None, duration_ms: int) -> None:
        if alpha is not None and self._info.has_alpha:
            self._frames.append(Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA"))
        else:
            self._frames.append(Image.fromarray(np.asarray(rgb, np.uint8), "RGB"))
        self._durations.append(max(int(duration_ms), 0))

    def finish(self) -> bytes:
        if not self._frames:
            raise ValueError("no frames were added")
        out = io.BytesIO()
        first, rest = self._frames[0], self._frames[1:]
        first.save(
            out,
            save_all=True,
            append_images=rest,
            duration=self._durations,
            **self._format_options(),
        )
        self.discard()
        return out.getvalue()

    def discard(self) -> None:
        """Let go of the frames held (a job that will not finish)."""
        self._frames, self._durations = [], []

    def _format_options(self) -> dict[str, object]:
        loop = self._info.loop
        fmt = self._info.container
        if fmt == "gif":
            # Frames arrive composited, so each replaces the last (disposal 2), and a GIF
            # without a loop extension (played once) keeps none.
            options: dict[str, object] = {"format": "GIF", "disposal": 2}
            if loop is not None:
                options["loop"] = loop
            return options
        loop = 0 if loop is None else loop
        if fmt == "webp":
            quality = {"lossless": True} if self._quality is None else {"quality": self._quality}
            return {"format": "WEBP", "loop": loop, **quality}
        return {"format": "PNG", "loop": loop, "disposal": 0, "blend": 0}
