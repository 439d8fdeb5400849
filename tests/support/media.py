"""Tiny videos and animated pictures made on the fly, for unit and integration tests.

Everything is synthesised with PyAV and Pillow (no fixture files to keep in sync), and
kept small (160×96, a few seconds at 10 fps) so the tests stay fast on two cores.
Frames are visibly distinct (a moving gradient plus a bar code of the frame number), so a
test can tell frames apart after a lossy round trip.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

AUDIO_RATE = 48_000
"""Opus only takes 48 kHz; AAC gets the same so both paths look alike."""

_FORMATS = {"mp4": "mp4", "mov": "mov", "matroska": "matroska", "mkv": "matroska", "webm": "webm"}


def _picture(index: int, size: tuple[int, int]) -> np.ndarray:
    """A gradient that moves with ``index`` and a bar code of ``index`` on the top rows."""
    width, height = size
    xs = np.arange(width, dtype=np.int32)[None, :]
    ys = np.arange(height, dtype=np.int32)[:, None]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = ((xs * 255) // max(width - 1, 1) + index * 12) % 256
    rgb[..., 1] = ((ys * 255) // max(height - 1, 1) + index * 7) % 256
    rgb[..., 2] = (index * 37) % 256
    bar = max(width // 8, 2)
    for bit in range(8):  # big blocks survive lossy coding, unlike one-pixel detail
        rgb[: height // 4, bit * bar : (bit + 1) * bar] = 255 if index >> bit & 1 else 0
    return rgb


def _add_video(
    out: av.container.OutputContainer, codec: str, fps: int, size: tuple[int, int], lossless: bool
):
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    # Lossy coders keep refining a still picture for a few frames after it stops moving;
    # lossless coding makes every frame of a still shot decode byte-identical.
    if codec == "libvpx-vp9":
        quality = {"lossless": "1"} if lossless else {"crf": "32", "b": "0"}
        stream.options = {**quality, "deadline": "realtime", "cpu-used": "8"}
    elif codec == "libx264":
        stream.options = {"crf": "0" if lossless else "20", "preset": "veryfast"}
    return stream


def _add_audio(out: av.container.OutputContainer, codec: str):
    stream = out.add_stream(codec, rate=AUDIO_RATE)
    stream.layout = "mono"
    return stream


def _audio_frames(stream, seconds: float):
    """A 440 Hz tone cut into the encoder's frame size, with sample-count timestamps."""
    size = stream.codec_context.frame_size or 1024
    total = int(seconds * AUDIO_RATE)
    fmt = stream.codec_context.format.name
    for start in range(0, total, size):
        t = (np.arange(start, min(start + size, total)) / AUDIO_RATE).astype(np.float32)
        tone = (0.3 * np.sin(2 * math.pi * 440 * t))[None, :]
        tone = (tone * 32767).astype(np.int16) if fmt.startswith("s16") else tone.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone, format=fmt, layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, start
        frame.time_base = Fraction(1, AUDIO_RATE)
        yield frame


def make_video(
    path: str | Path,
    *,
    container: str = "mp4",
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (160, 96),
    rotation: int = 0,
    still_after_s: float | None = None,
    faststart: bool = False,
    vfr: bool = False,
) -> Path:
    """Write a test video; ``rotation`` is the clockwise display rotation, phone style.

    From ``still_after_s`` on the same picture repeats (a still shot). ``faststart`` puts
    an MP4's index first, so a truncated copy still opens and breaks off mid-way. ``vfr``
    leaves a gap after every second frame (a variable frame rate).
    """
    path = Path(path)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=_FORMATS[container], options=options) as out:
        video = _add_video(out, video_codec, fps, size, lossless=still_after_s is not None)
        if rotation:
            video.set_display_rotation(-rotation)  # the matrix counts counter-clockwise
        audio = _add_audio(out, audio_codec) if audio_codec else None
        count = round(seconds * fps)
        still_from = count if still_after_s is None else round(still_after_s * fps)
        for index in range(count):
            picture = _picture(min(index, still_from), size)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index + index // 2 if vfr else index
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            for frame in _audio_frames(audio, seconds):
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return path


def make_large_h264_mp4(
    path: str | Path,
    min_bytes: int,
    *,
    size: tuple[int, int] = (1920, 1080),
    fps: int = 10,
    max_frames: int = 1000,
    seed: int = 0,
) -> Path:
    """An H.264 MP4 of at least ``min_bytes``, in as few frames as that takes: noise
    frames coded at quantiser 1 cost about as much as raw pictures (~4 MiB a 1080p frame),
    so a large upload stays a short, cheap video. Raises if ``max_frames`` are not enough."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    written = 0
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "1", "preset": "ultrafast"}
        for index in range(max_frames):
            noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(noise, format="rgb24")
            frame.pts = index
            packets = stream.encode(frame)
            written += sum(packet.size for packet in packets)
            out.mux(packets)
            if written >= min_bytes:
                break
        out.mux(stream.encode(None))
    if path.stat().st_size < min_bytes:
        raise ValueError(f"{max_frames} frames of {size} made {path.stat().st_size} bytes")
    return path


def make_photo_video(
    path: str | Path,
    pictures: Sequence[np.ndarray],
    *,
    fps: int = 10,
    crf: int = 20,
) -> Path:
    """An H.264 MP4 (libx264, yuv420p, no audio) of ``pictures``, (H, W, 3) uint8 of even
    sides: for frames built from real photos, with the codec's own loss."""
    path = Path(path)
    height, width = pictures[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for index, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_h264_aac_mp4(path: str | Path, **kwargs) -> Path:
    return make_video(path, container="mp4", video_codec="libx264", audio_codec="aac", **kwargs)


def make_vp9_opus_webm(path: str | Path, **kwargs) -> Path:
    return make_video(
        path, container="webm", video_codec="libvpx-vp9", audio_codec="libopus", **kwargs
    )


def make_rotated_mp4(path: str | Path, rotation: int = 90, **kwargs) -> Path:
    return make_h264_aac_mp4(path, rotation=rotation, **kwargs)


def make_animation(
    path: str | Path,
    fmt: str = "gif",
    frames: int = 6,
    size: tuple[int, int] = (64, 48),
    durations: Sequence[int] | None = None,
    loop: int | None = 0,
    alpha: bool = False,
    fallback: bool = False,
) -> Path:
    """Write an animated GIF, WebP or APNG (``loop`` None: a GIF without a loop extension,
    played once); with ``alpha`` the right third is transparent;
    with ``fallback`` (APNG) a white default image that is not part of the animation comes
    first (what a viewer that does not animate shows)."""
    path = Path(path)
    durations = list(durations) if durations is not None else [100 + 20 * i for i in range(frames)]
    pictures = []
    for index in range(frames):
        rgb = _picture(index, size)
        if alpha:
            mask = np.full(rgb.shape[:2], 255, np.uint8)
            mask[:, size[0] * 2 // 3 :] = 0
            pictures.append(Image.fromarray(np.dstack([rgb, mask]), "RGBA"))
        else:
            pictures.append(Image.fromarray(rgb, "RGB"))
    save = {"gif": "GIF", "webp": "WEBP", "apng": "PNG"}[fmt]
    extra = {"lossless": True} if fmt == "webp" else {}
    if fallback:
        white = Image.new(pictures[0].mode, size, "white")
        pictures = [white, *pictures]  # durations: of the animation's frames only
        extra["default_image"] = True
    if fmt == "gif" and alpha:
        extra["disposal"] = 2  # each frame replaces the last, transparency included
    pictures[0].save(
        path,
        format=save,
        save_all=True,
        append_images=pictures[1:],
        duration=durations,
        **({} if loop is None else {"loop": loop}),
        **extra,
    )
    return path


def make_size_changing_webm(path: str | Path, first: int = 64, then: int = 128) -> Path:
    """A VP8 WebM whose header (and first 5 frames) say ``first`` px square and whose last
    5 frames are ``then`` px: two encodings' packets in one stream, as a stream that
    changes resolution mid-way (each VP8 key frame carries its own size)."""

    def packets(side: int, start: int) -> list[av.Packet]:
        encoder = av.CodecContext.create("libvpx", "w")
        encoder.width = encoder.height = side
        encoder.pix_fmt, encoder.time_base, encoder.framerate = "yuv420p", Fraction(1, 10), 10
        encoder.open()
        made = []
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(_picture(index, (side, side)), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            made += encoder.encode(frame)
        made += encoder.encode(None)
        for packet in made:
            packet.pts = packet.dts = packet.pts + start
        return made

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx", rate=10)
        stream.width = stream.height = first
        stream.pix_fmt = "yuv420p"
        for packet in packets(first, 0) + packets(then, 5):
            packet.stream, packet.time_base = stream, Fraction(1, 10)
            out.mux(packet)
    return Path(path)


def make_edit_list_mp4(path: str | Path, frames: int = 20, hidden: int = 5) -> Path:
    """An H.264 MP4 whose first ``hidden`` frames come before time 0, as a clip cut
    without re-encoding (`ffmpeg -ss ... -c copy`): the muxer writes an edit list that
    leaves them out, and its header still counts every frame."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 10)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(_picture(index, (64, 48)), format="rgb24")
            frame.pts, frame.time_base = index - hidden, Fraction(1, 10)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


class _Unseekable(io.RawIOBase):
    """A file written front to back only, as a browser's MediaRecorder writes its WebM."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self.data += bytes(data)
        return len(data)


def make_recorded_webm(path: str | Path, frames: int = 20, fps: int = 10) -> Path:
    """A VP8 WebM written as it was recorded: the muxer cannot go back, so the header has
    no duration (and no frame count), as MediaRecorder's files."""
    sink = _Unseekable()
    with av.open(sink, "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(_picture(index, (64, 48)), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    Path(path).write_bytes(sink.data)
    return Path(path)


def truncate(path: str | Path, dest: str | Path, keep: float = 0.6) -> Path:
    """Copy the first ``keep`` fraction of ``path``'s bytes to ``dest``."""
    data = Path(path).read_bytes()
    dest = Path(dest)
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def audio_packets(path: str | Path) -> list[bytes]:
    """The payload of every audio packet of every audio stream, in demux order."""
    with av.open(str(path)) as source:
        if not source.streams.audio:
            return []
        return [bytes(p) for p in source.demux(*source.streams.audio) if p.size]


def video_timestamps(path: str | Path) -> list[int]:
    """The presentation timestamps of the first video stream's packets, sorted."""
    with av.open(str(path)) as source:
        stream = source.streams.video[0]
        return sorted(p.pts for p in source.demux(stream) if p.size and p.pts is not None)


def frame_count(path: str | Path) -> int:
    """Frames decoded from the first video stream."""
    with av.open(str(path)) as source:
        return sum(1 for _ in source.decode(video=0))


def decoded_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of the first video stream as RGB (stored orientation)."""
    with av.open(str(path)) as source:
        return [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]


def display_rotation(path: str | Path) -> int:
    """The clockwise display rotation a player applies, read from the first frame."""
    with av.open(str(path)) as source:
        first = next(source.decode(video=0))
        return round(-first.rotation) % 360


def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of each PNG chunk."""
    at, chunks = 8, []
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        chunks.append((at, data[at + 4 : at + 8]))
        at += 12 + length
    return chunks


def apng_with_broken_animation(tmp_path: Path) -> Path:
    """A 3-frame APNG whose second frame's data chunk repeats a sequence number (Pillow:
    SyntaxError, "frame sequence errors"), its default image intact."""
    source = make_animation(tmp_path / "plain.png", "apng", frames=3, size=(64, 48))
    data = bytearray(source.read_bytes())
    at = next(at for at, kind in png_chunks(bytes(data)) if kind == b"fdAT")
    length = struct.unpack(">I", data[at : at + 4])[0]
    sequence = struct.unpack(">I", data[at + 8 : at + 12])[0]
    data[at + 8 : at + 12] = struct.pack(">I", sequence - 1)  # the fcTL's number again
    crc = zlib.crc32(bytes(data[at + 4 : at + 8 + length]))
    data[at + 8 + length : at + 12 + length] = struct.pack(">I", crc)
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    return path
