"""Videos and animated pictures recognised and probed, before any real work.

Videos go through PyAV (FFmpeg), animated GIF/WebP/APNG through Pillow. Probing reads
headers (plus one decoded frame for the display rotation; a recording whose header names
no duration or frame count, its packets, undecoded) and refuses what is out of limits
before any real work; the reader yields one frame at a time, so a job's memory is
bounded by the frames it keeps in flight, not by the length of the video. Audio packets
are copied, never decoded, so the output's sound is byte-identical to the input's.

Longer than most modules, on purpose: every container, codec and limit check that turns a
refusal into a clear 4xx before any frame is decoded is here, in one place.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Literal

import av
from PIL import Image

from serve_app.config import MediaConfig
from serve_app.errors import (
    MediaTooLarge,
    UndecodableMedia,
    UnsupportedCodec,
)
from serve_app.imaging.pixels import target_dimensions
from serve_app.media.boundary import bombs_refused, media_errors

log = logging.getLogger(__name__)

MediaKind = Literal["still", "animation", "video"]
Source = str | Path | IO[bytes]

VIDEO_MEDIA_TYPES = frozenset({"video/mp4", "video/quicktime", "video/x-matroska", "video/webm"})
ANIMATION_MEDIA_TYPES = frozenset({"image/gif", "image/webp", "image/apng", "image/png"})

VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1"})
"""Input video codecs accepted (by FFmpeg descriptor name), if this build decodes them."""

CONTAINER_MEDIA_TYPES = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "matroska": "video/x-matroska",
    "webm": "video/webm",
    "gif": "image/gif",
    "webp": "image/webp",
    "apng": "image/apng",
}
_DEMUXERS = {"mov,mp4,m4a,3gp,3g2,mj2": "iso", "matroska,webm": "ebml"}
PILLOW_ANIMATIONS = {"GIF": "gif", "WEBP": "webp", "PNG": "apng"}
# Only these Pillow plugins ever parse an upload on the media path (as on the picture
# path, no decoder of a format the service never wanted sees it).
_ANIMATION_OPENERS = tuple(PILLOW_ANIMATIONS)


_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
# HEIF/AVIF pictures are ISO-BMFF files too; they belong to the still-image path.
_IMAGE_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)


@dataclass(frozen=True)
class MediaInfo:
    """What probing found; ``width``/``height`` are the stored (coded) frame size.

    ``rotation`` is the clockwise turn (0/90/180/270) a player applies on display, as in
    a phone video's legacy ``rotate`` tag. ``loop``: 0 forever, N as the file says; None
    for videos and for a GIF without a loop extension (played once, where a loop count of
    1 plays twice). ``pixel_aspect``: a stored
    pixel's width over its height (an anamorphic video's sample aspect ratio: 4/3 for
    HDV's 1440x1080 shown at 16:9); 1 for square pixels.
    """

    kind: MediaKind
    container: str
    media_type: str
    width: int
    height: int
    rotation: int
    frames: int
    duration_s: float
    fps: float
    video_codec: str | None
    audio_codecs: tuple[str, ...]
    loop: int | None
    has_alpha: bool
    pixel_aspect: float = 1.0

    @property
    def display_size(self) -> tuple[int, int]:
        """The frame's size as shown (before ``rotation``): what the output is sized from,
        in square pixels."""
        if self.pixel_aspect == 1.0:
            return self.width, self.height
        return max(1, round(self.width * self.pixel_aspect)), self.height

    def output_size(self, size: int) -> tuple[int, int]:
        """The (width, height) of each output frame at ``size`` (the longer side), in
        square pixels; raises ImageTooSmall as ``target_dimensions`` does."""
        return target_dimensions(*self.display_size, size)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["audio_codecs"] = list(self.audio_codecs)
        return data


# --- sniffing --------------------------------------------------------------------------


def sniff_video(head: bytes) -> bool:
    """True when ``head`` starts like an ISO-BMFF/QuickTime or a Matroska/WebM file."""
    if head.startswith(_EBML_MAGIC):
        return True
    return head[4:8] in _ISO_BOXES and not (head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS)


# Video containers this service does not take, by their signature: refused as such rather
# than handed to the picture decoder as a "still picture".
_FOREIGN_VIDEO_SIGNATURES = {
    "AVI": lambda head: head[:4] == b"RIFF" and head[8:12] == b"AVI ",
    "FLV": lambda head: head[:3] == b"FLV",
    "ASF/WMV": lambda head: head[:4] == b"\x30\x26\xb2\x75",
    "Ogg": lambda head: head[:4] == b"OggS",
    "MPEG-PS": lambda head: head[:4] == b"\x00\x00\x01\xba",
    # Three packets' sync bytes: one 0x47 (a GIF's "G") could be chance.
    "MPEG-TS": lambda head: (
        len(head) > 376
        and head[0] == head[188] == head[376] == 0x47
        and not head.startswith(b"GIF8")
    ),
    # A camera's .MTS/.M2TS: 192-byte packets, each a 4-byte time code then the packet.
    "MPEG-TS (M2TS)": lambda head: len(head) > 388 and head[4] == head[196] == head[388] == 0x47,
}


def sniff_foreign_video(head: bytes) -> str | None:
    """The name of a video container this service refuses, when ``head`` starts like one."""
    return next((name for name, test in _FOREIGN_VIDEO_SIGNATURES.items() if test(head)), None)


# Formats that hold one picture only (JPEG and MPO, BMP, TIFF), by their first bytes.
_STILL_ONLY_SIGNATURES = (b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def may_move(data: bytes) -> bool:
    """False only for an upload that can be neither a video nor an animation: one whose
    first bytes name a format holding one picture (only they are read). Anything else may
    move, a bad upload included (what a still picture's cache key may leave out rests on
    this)."""
    return not data.startswith(_STILL_ONLY_SIGNATURES)


def is_animated_picture(data_or_source: bytes | Source) -> bool:
    """True for a GIF, WebP or PNG with more than one frame (headers only).

    Never raises on a bad upload: whatever Pillow makes of it, it is then not an
    animation, and the picture path reports what it is.
    """
    source = io.BytesIO(data_or_source) if isinstance(data_or_source, bytes) else data_or_source
    try:
        with bombs_refused(), Image.open(rewound(source), formats=_ANIMATION_OPENERS) as image:
            return image.format in PILLOW_ANIMATIONS and getattr(image, "n_frames", 1) > 1
    except MemoryError:
        raise
    except Exception:  # each plugin raises its own types on odd input
        return False


def rewound(source: Source) -> Source:
    """Path sources as ``str``; file objects back at their start (probe and read share them)."""
    if isinstance(source, (str, Path)):
        return str(source)
    source.seek(0)
    return source


def _head(source: Source, size: int = 64) -> bytes:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as file:
            return file.read(size)
    source.seek(0)
    head = source.read(size)
    source.seek(0)
    return head


def _length(source: Source) -> int:
    if isinstance(source, (str, Path)):
        return Path(source).stat().st_size
    length = source.seek(0, io.SEEK_END)
    source.seek(0)
    return length


def _vint(data: bytes, at: int) -> tuple[int, int, int]:
    """An EBML variable-size integer at ``at``: (raw value, value bits, offset after it)."""
    width = 9 - data[at].bit_length() if at < len(data) else 0
    if not 1 <= width <= 8 or at + width > len(data):
        raise UndecodableMedia("the Matroska/WebM header is malformed")
    raw = int.from_bytes(data[at : at + width], "big")
    return raw, 7 * width, at + width


def _check_ebml_complete(source: Source) -> None:
    """Refuse a Matroska/WebM file shorter than its Segment says (a cut-off upload).

    Its header carries no frame count, so counting packets alone would take a truncated
    file for a shorter video. A Segment of unknown size (live recordings) is not checked.
    """
    head = _head(source, 256)
    _, _, at = _vint(head, 0)  # the EBML header's ID
    raw, bits, at = _vint(head, at)
    element, _, at = _vint(head, at + (raw & ((1 << bits) - 1)))
    raw, bits, at = _vint(head, at)
    size = raw & ((1 << bits) - 1)
    if element != 0x18538067 or size == (1 << bits) - 1:  # not a Segment, or size unknown
        return
    length = _length(source)
    if at + size > length:
        raise UndecodableMedia(
            f"the file is cut off: {length} of {at + size} bytes (truncated upload?)"
        )


# --- probing ---------------------------------------------------------------------------


def probe(source: Source, config: MediaConfig) -> MediaInfo:
    """Describe a video or animated picture and refuse it early if it is out of limits.

    Raises only the media errors (415, 413, 400), whatever the decoder makes of the file.
    An APNG whose animation is broken but whose default image decodes is a still picture,
    as browsers show it (``kind == "still"``).
    """
    if sniff_video(_head(source)):
        with media_errors("the video cannot be read"):
            return _probe_video(source, config)
    with media_errors("the animated picture cannot be read"), bombs_refused():
        return _probe_animation(source, config)


def _too_large(what: str, value: object, limit: object) -> MediaTooLarge:
    return MediaTooLarge(f"{what} is {value}, over the limit of {limit}")


def _check_frame_size(width: int, height: int, config: MediaConfig) -> None:
    if width * height > config.max_frame_pixels:
        raise _too_large(
            "frame size (width × height)", f"{width}×{height}", config.max_frame_pixels
        )


def open_video(source: Source) -> av.container.InputContainer:
    try:
        return av.open(rewound(source), "r")
    except av.FFmpegError as exc:
        raise UndecodableMedia(f"the video cannot be read: {exc}") from exc


def _container_name(family: str, head: bytes) -> str:
    if family == "iso":
        # QuickTime says so in its brand, or (older files) has no ftyp box at all.
        return "mp4" if head[4:8] == b"ftyp" and head[8:12] != b"qt  " else "mov"
    return "webm" if b"webm" in head[:64] else "matroska"  # the EBML DocType


def _video_codec(stream: av.video.stream.VideoStream) -> str:
    name = stream.codec_context.codec.canonical_name
    if name not in VIDEO_CODECS:
        allowed = ", ".join(sorted(VIDEO_CODECS))
        raise UnsupportedCodec(f"video codec {name!r} is not accepted (accepted: {allowed})")
    try:
        av.Codec(name, "r")
    except (av.FFmpegError, ValueError) as exc:
        raise UnsupportedCodec(f"video codec {name!r} has no decoder in this build") from exc
    return name


def _probe_video(source: Source, config: MediaConfig) -> MediaInfo:
    with open_video(source) as container:
        family = _DEMUXERS.get(container.format.name)
        if family is None:
            raise UnsupportedCodec(
                f"container {container.format.name!r} is not accepted (MP4, MOV, MKV, WebM)"
            )
        if not container.streams.video:
            if not container.streams.audio:
                # Nothing of a stream's description could be read: a file cut off before
                # its index (an MP4's moov), or damaged there.
                raise UndecodableMedia("the file has no readable stream (cut off or damaged?)")
            raise UnsupportedCodec("the file has no video stream")
        stream = container.streams.video[0]
        codec = _video_codec(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise UndecodableMedia("the video stream has no frame size")
        _check_frame_size(width, height, config)
        duration_s = _duration_s(container, stream)  # None: the header does not say
        # The audio is copied whole: a minute of it beside a second of video is a minute.
        _check_duration(_longest_s(container, duration_s), config)
        audio = tuple(a.codec_context.codec.canonical_name for a in container.streams.audio)
        rate = stream.average_rate or stream.guessed_rate
        pixel_aspect = _pixel_aspect(stream)
        header_frames = stream.frames
        rotation = _first_frame_rotation(container, stream)
    if family == "ebml":
        _check_ebml_complete(source)
    frames = header_frames
    if not frames or duration_s is None:  # a live recording's header (a browser's WebM)
        counted, measured_s = _scan_packets(source, config)
        frames = frames or counted
        # A header's duration can say less than its frames' times do (a Matroska Duration
        # written or edited apart from them); the limit holds for the longer.
        duration_s = measured_s if duration_s is None else max(duration_s, measured_s)
        _check_duration(duration_s, config)
    if frames > config.max_frames:
        raise _too_large("frame count", frames, config.max_frames)
    fps = float(rate) if rate else (frames / duration_s if duration_s else 0.0)
    name = _container_name(family, _head(source))
    return MediaInfo(
        kind="video",
        container=name,
        media_type=CONTAINER_MEDIA_TYPES[name],
        width=width,
        height=height,
        rotation=rotation,
        frames=frames,
        duration_s=duration_s,
        fps=fps,
        video_codec=codec,
        audio_codecs=audio,
        loop=None,
        has_alpha=False,
        pixel_aspect=pixel_aspect,
    )


# Sample aspect ratios outside these are a broken header, not a picture (real ones: 8/9
# to 2, e.g. NTSC DV, HDV, anamorphic DVD): read as square pixels.
_PIXEL_ASPECT_RANGE = (0.25, 4.0)


def _pixel_aspect(stream) -> float:
    """A stored pixel's width over its height (1.0 when unsaid or implausible)."""
    ratio = stream.codec_context.sample_aspect_ratio or stream.sample_aspect_ratio
    if not ratio or ratio <= 0:
        return 1.0
    aspect = float(ratio)
    low, high = _PIXEL_ASPECT_RANGE
    return aspect if low <= aspect <= high else 1.0


def _duration_s(container: av.container.InputContainer, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _longest_s(container: av.container.InputContainer, video_s: float | None) -> float | None:
    """The longest of the video's and the audio streams' durations, as far as said."""
    said = [video_s] + [
        float(audio.duration * audio.time_base)
        for audio in container.streams.audio
        if audio.duration is not None and audio.time_base is not None
    ]
    return max((seconds for seconds in said if seconds is not None), default=None)


def _check_duration(duration_s: float | None, config: MediaConfig) -> None:
    if duration_s is not None and duration_s > config.max_duration_s:
        raise _too_large("duration (s)", round(duration_s, 3), config.max_duration_s)


def _first_frame_rotation(container: av.container.InputContainer, stream) -> int:
    """The display rotation, clockwise; FFmpeg exposes the matrix on decoded frames only."""
    try:
        for frame in container.decode(stream):
            return round(-frame.rotation / 90) % 4 * 90  # players snap to right angles
    except av.FFmpegError as exc:
        raise UndecodableMedia(f"the video's first frame cannot be decoded: {exc}") from exc
    raise UndecodableMedia("the video has no decodable frame")


def _scan_packets(source: Source, config: MediaConfig) -> tuple[int, float]:
    """(frames, seconds) by demuxing without decoding, for a header that lacks either (a
    recording written as it went: MediaRecorder's WebM has no duration); the scan stops
    past ``max_frames``, already refused."""
    count, first, end = 0, None, None
    with open_video(source) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                count += 1
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    last = packet.pts + (packet.duration or 0)
                    end = last if end is None else max(end, last)
                if count > config.max_frames:
                    break  # already refused; no need to read the rest
        except av.FFmpegError as exc:
            raise UndecodableMedia(f"the video breaks off after {count} frames: {exc}") from exc
        time_base = stream.time_base
    if first is None or time_base is None:
        raise UndecodableMedia("the video's duration is unknown (no frame has a time)")
    return count, float((end - first) * time_base)


class _BrokenAnimation(Exception):
    """An APNG's animation chunks cannot be read (its default image may still be fine)."""


def _probe_animation(source: Source, config: MediaConfig) -> MediaInfo:
    try:
        with Image.open(rewound(source), formats=_ANIMATION_OPENERS) as image:
            return _animation_info(image, config)
    except _BrokenAnimation as broken:
        return _default_image_info(source, broken.__cause__)


def _default_image_info(source: Source, broken: BaseException | None) -> MediaInfo:
    """A broken APNG as browsers show it: its default image, when that decodes."""
    try:
        with Image.open(rewound(source), formats=_ANIMATION_OPENERS) as image:
            image.load()  # the default image only
            info = _still_info(image)
    except MemoryError:
        raise
    except Exception as exc:
        raise UndecodableMedia(
            f"the APNG's animation and default image are broken: {broken}"
        ) from exc
    log.info("APNG with a broken animation (%s): taken as its default image", broken)
    return info


def hidden_frames(image: Image.Image) -> int:
    """Frames before an animation's first (read on its opening): an APNG's default image
    that is not part of its animation (what a viewer that does not animate shows), which
    Pillow counts as frame 0."""
    return 1 if image.format == "PNG" and image.info.get("default_image") else 0


def _animation_info(image: Image.Image, config: MediaConfig) -> MediaInfo:
    fmt = PILLOW_ANIMATIONS.get(image.format or "")
    hidden = hidden_frames(image)
    frames = getattr(image, "n_frames", 1) - hidden
    if frames < 2:
        return _still_info(image)
    if fmt is None:
        raise UnsupportedCodec(f"animated {image.format} is not accepted (GIF, WebP, APNG)")
    width, height = image.size  # the canvas every frame is shown on, as browsers do
    _check_frame_size(width, height, config)
    if frames > config.max_animation_frames:
        raise _too_large("animation frame count", frames, config.max_animation_frames)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    loop = image.info.get("loop")  # None: a GIF without a loop extension, played once
    if fmt == "webp":
        durations = _webp_durations_ms(image.fp)
    else:
        durations = _durations_ms(image, range(hidden, hidden + frames), fmt, config)
    duration_s = sum(durations) / 1000
    return MediaInfo(
        kind="animation",
        container=fmt,
        media_type=CONTAINER_MEDIA_TYPES[fmt],
        width=width,
        height=height,
        rotation=0,
        frames=frames,
        duration_s=duration_s,
        fps=frames / duration_s if duration_s else 0.0,
        video_codec=None,
        audio_codecs=(),
        loop=None if loop is None else int(loop),
        has_alpha=has_alpha,
    )


def _still_info(image: Image.Image) -> MediaInfo:
    """A one-frame picture: the image pipeline applies its own limits to it."""
    fmt = (image.format or "unknown").lower()
    return MediaInfo(
        kind="still",
        container=fmt,
        media_type=image.get_format_mimetype() or f"image/{fmt}",
        width=image.width,
        height=image.height,
        rotation=0,
        frames=1,
        duration_s=0.0,
        fps=0.0,
        video_codec=None,
        audio_codecs=(),
        loop=None,
        has_alpha=image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info,
    )


def _durations_ms(image: Image.Image, frames: range, fmt: str, config: MediaConfig) -> list[int]:
    """Each frame's duration; Pillow reports it per frame, after seeking to it.

    A GIF frame may reach past the canvas, and Pillow then enlarges the picture it
    decodes into: that size is checked against the limit too (the output keeps the
    canvas, as browsers do). An APNG whose frames cannot be decoded is a _BrokenAnimation
    (Pillow decodes each frame before it seeks past it anyway, the last one is extra).
    """
    durations = []
    for index in frames:
        try:
            image.seek(index)
            if fmt == "apng":
                image.load()
        except (MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise
        except Exception as exc:
            if fmt == "apng":
                raise _BrokenAnimation from exc
            raise
        _check_frame_size(*image.size, config)
        durations.append(round(image.info.get("duration", 0) or 0))
    image.seek(0)
    return durations


def _webp_durations_ms(file: IO[bytes]) -> list[int]:
    """Frame durations from the ANMF chunk headers: Pillow only knows them after decoding."""
    durations = []
    file.seek(12)  # past "RIFF", the size and "WEBP"
    while len(header := file.read(8)) == 8:
        size = int.from_bytes(header[4:], "little")
        if header[:4] == b"ANMF":
            payload = file.read(16)
            durations.append(int.from_bytes(payload[12:15], "little"))
            size -= len(payload)
        file.seek(size + (size & 1), io.SEEK_CUR)  # chunks are padded to even sizes
    file.seek(0)
    return durations
