"""serve_app.media: probing, limits, streaming decode, and re-encoding round trips."""

from __future__ import annotations

import inspect
import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from serve_app.config import MediaConfig
from serve_app.errors import (
    InvalidVideoOptions,
    MediaTooLarge,
    UndecodableMedia,
    UnsupportedCodec,
)
from serve_app.media import probe, writers
from serve_app.media.reader import Frame, MediaReader
from tests.support import media as samples
from tests.support.media_jobs import FakeModel, run_job

CONFIG = MediaConfig()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every sample made once for the module (encoding is the slow part)."""
    root = tmp_path_factory.mktemp("media")
    return {
        "mp4": samples.make_h264_aac_mp4(root / "a.mp4"),
        "webm": samples.make_vp9_opus_webm(root / "a.webm"),
        "rotated": samples.make_rotated_mp4(root / "r.mp4"),
        "still": samples.make_h264_aac_mp4(root / "s.mp4", still_after_s=1.0),
        "faststart": samples.make_h264_aac_mp4(root / "f.mp4", faststart=True),
        "gif": samples.make_animation(root / "a.gif", "gif", durations=[100, 200] * 3, loop=2),
        "webp": samples.make_animation(root / "a.webp", "webp", durations=[40, 80] * 3),
        "apng": samples.make_animation(root / "a.png", "apng", durations=[30, 60] * 3, loop=5),
    }


def _copy(reader: MediaReader, dest: Path, container: str, size=None) -> None:
    width, height = size or (reader.info.width, reader.info.height)
    with writers.VideoWriter(dest, reader, width, height, container, 20) as writer:
        for item in reader:
            if isinstance(item, Frame):
                rgb = item.rgb
                if size is not None:
                    rgb = np.asarray(Image.fromarray(rgb).resize((width, height)))
                writer.write_frame(rgb, item)
            else:
                writer.write_packet(item)


def _round_trip(source: Path, dest: Path, requested: str = "same", size=None) -> probe.MediaInfo:
    info = probe.probe(source, CONFIG)
    container, _, _ = writers.output_container(info, requested)
    with MediaReader(source, info) as reader:
        _copy(reader, dest, container, size)
    return probe.probe(dest, CONFIG)


# --- sniffing and probing --------------------------------------------------------------


def test_sniff_video(files: dict[str, Path]) -> None:
    assert probe.sniff_video(files["mp4"].read_bytes()[:16])
    assert probe.sniff_video(files["webm"].read_bytes()[:16])
    assert not probe.sniff_video(files["gif"].read_bytes()[:16])
    assert not probe.sniff_video(b"\x89PNG\r\n\x1a\n" + bytes(8))
    assert not probe.sniff_video(b"\x00\x00\x00\x1cftypheic" + bytes(8))  # a HEIF photo
    assert not probe.sniff_video(b"\x00\x00\x00\x1cftypavif" + bytes(8))


def test_probe_still_picture(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGBA", (30, 20)).save(path)
    info = probe.probe(path, CONFIG)
    assert (info.kind, info.container, info.media_type) == ("still", "png", "image/png")
    assert (info.width, info.height, info.frames, info.has_alpha) == (30, 20, 1, True)


def test_probe_not_media(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, not a picture")
    with pytest.raises(UnsupportedCodec):
        probe.probe(path, CONFIG)


def test_is_animated_picture(files: dict[str, Path], tmp_path: Path) -> None:
    assert probe.is_animated_picture(files["gif"])
    assert probe.is_animated_picture(files["webp"].read_bytes())
    still = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(still)
    assert not probe.is_animated_picture(still)
    assert not probe.is_animated_picture(b"not a picture")


def test_may_move_is_false_only_for_formats_of_one_picture(files: dict[str, Path]) -> None:
    for name in ("mp4", "webm", "gif", "webp", "apng"):
        assert probe.may_move(files[name].read_bytes()[:16]), name
    for fmt in ("JPEG", "BMP", "TIFF", "PNG"):
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, format=fmt)
        # A still PNG may be an APNG as far as its first bytes tell.
        assert probe.may_move(out.getvalue()[:16]) == (fmt == "PNG"), fmt
    assert probe.may_move(b"") and probe.may_move(b"not a picture")


def test_probe_h264_aac_mp4(files: dict[str, Path]) -> None:
    info = probe.probe(files["mp4"], CONFIG)
    assert (info.kind, info.container, info.media_type) == ("video", "mp4", "video/mp4")
    assert (info.width, info.height, info.frames, info.rotation) == (160, 96, 20, 0)
    assert (info.video_codec, info.audio_codecs, info.loop) == ("h264", ("aac",), None)
    assert info.fps == pytest.approx(10)
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.to_dict()["audio_codecs"] == ["aac"]


def test_probe_vp9_opus_webm_from_file_object(files: dict[str, Path]) -> None:
    with open(files["webm"], "rb") as file:
        info = probe.probe(file, CONFIG)
    assert (info.container, info.media_type) == ("webm", "video/webm")
    assert (info.video_codec, info.audio_codecs, info.frames) == ("vp9", ("opus",), 20)


def test_probe_rotated_mp4(files: dict[str, Path]) -> None:
    info = probe.probe(files["rotated"], CONFIG)
    assert (info.rotation, info.width, info.height) == (90, 160, 96)


@pytest.mark.parametrize(
    ("name", "fmt", "media_type", "durations", "loop"),
    [
        ("gif", "gif", "image/gif", [100, 200] * 3, 2),
        ("webp", "webp", "image/webp", [40, 80] * 3, 0),
        ("apng", "apng", "image/apng", [30, 60] * 3, 5),
    ],
)
def test_probe_animations(files, name, fmt, media_type, durations, loop) -> None:
    info = probe.probe(files[name], CONFIG)
    assert (info.kind, info.container, info.media_type) == ("animation", fmt, media_type)
    assert (info.frames, info.loop, info.width, info.height) == (6, loop, 64, 48)
    assert info.duration_s == pytest.approx(sum(durations) / 1000)
    with MediaReader(files[name], info) as reader:
        assert [f.duration_ms for f in reader] == durations


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "name", "words"),
    [
        ({"max_duration_s": 1.5}, "mp4", "duration"),
        ({"max_frames": 19}, "mp4", "frame count"),
        ({"max_frames": 19}, "webm", "frame count"),  # counted by demuxing
        ({"max_frame_pixels": 160 * 96 - 1}, "mp4", "frame size"),
        ({"max_frame_pixels": 64 * 48 - 1}, "gif", "frame size"),
        ({"max_animation_frames": 5}, "apng", "animation frame count"),
    ],
)
def test_limits_refused(files, limits, name, words) -> None:
    with pytest.raises(MediaTooLarge, match=words):
        probe.probe(files[name], MediaConfig(**limits))


def test_a_matroska_duration_shorter_than_its_frames_is_no_way_past_the_limit(tmp_path):
    """30 frames at 1 fps whose Duration element says 1 s: the frames' times count."""
    path = samples.make_video(
        tmp_path / "long.mkv", container="matroska", fps=1, seconds=30, audio_codec=None
    )
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")  # the Segment's Duration element, in ms
    size = data[at + 2] & 0x7F
    data[at + 3 : at + 3 + size] = struct.pack(">d" if size == 8 else ">f", 1000.0)
    lying = tmp_path / "lying.mkv"
    lying.write_bytes(bytes(data))
    with pytest.raises(MediaTooLarge, match="duration"):
        probe.probe(lying, MediaConfig(max_duration_s=10))


def test_audio_longer_than_the_video_counts_against_the_duration_limit(tmp_path):
    """The audio is copied whole into the output: a second of video beside 12 s of sound
    is 12 s."""
    path = tmp_path / "long-audio.mp4"
    with av.open(str(path), "w") as out:
        video = samples._add_video(out, "libx264", 10, (64, 48), lossless=False)
        audio = out.add_stream("aac", rate=8000)
        audio.layout = "mono"
        picture = np.zeros((48, 64, 3), np.uint8)
        for _ in range(10):
            out.mux(video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(video.encode(None))
        for start in range(0, 8000 * 12, 1024):
            sound = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            for plane in sound.planes:
                plane.update(bytes(plane.buffer_size))
            sound.sample_rate, sound.pts, sound.time_base = 8000, start, Fraction(1, 8000)
            out.mux(audio.encode(sound))
        out.mux(audio.encode(None))
    assert probe.probe(path, CONFIG).duration_s == pytest.approx(1.0, abs=0.2)  # the video's
    with pytest.raises(MediaTooLarge, match="duration"):
        probe.probe(path, MediaConfig(max_duration_s=10))


def test_unsupported_video_codec(tmp_path: Path) -> None:
    path = samples.make_video(tmp_path / "m.mp4", video_codec="mpeg4", audio_codec=None)
    with pytest.raises(UnsupportedCodec, match="mpeg4"):
        probe.probe(path, CONFIG)


def test_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = samples._add_audio(out, "aac")
        for frame in samples._audio_frames(stream, 0.2):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(UnsupportedCodec, match="no video stream"):
        probe.probe(path, CONFIG)


def test_unsupported_container(tmp_path: Path) -> None:
    path = tmp_path / "clip.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        stream = samples._add_video(out, "libx264", 10, (64, 48), lossless=False)
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(samples._picture(index, (64, 48)), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(UnsupportedCodec):
        probe.probe(path, CONFIG)


def test_truncated_mp4_refused_at_probe(files: dict[str, Path], tmp_path: Path) -> None:
    # Index (moov) at the end, as most muxers write it: the cut file has no header.
    cut = samples.truncate(files["mp4"], tmp_path / "cut.mp4")
    with pytest.raises(UndecodableMedia):
        probe.probe(cut, CONFIG)


@pytest.mark.parametrize("keep", [0.55, 0.6, 2 / 3])
def test_an_mp4_cut_inside_its_index_is_undecodable(tmp_path: Path, keep: float) -> None:
    """Ten flat frames: a small mdat, then the moov. Cut inside the moov, the file opens
    with no stream, or with one whose kind could not be read: cut off (400), not a file
    without video (415)."""
    whole = tmp_path / "flat.mp4"
    with av.open(str(whole), "w", format="mp4") as out:
        stream = samples._add_video(out, "libx264", 10, (160, 96), lossless=False)
        for index in range(10):
            picture = np.full((96, 160, 3), index * 20, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    with pytest.raises(UndecodableMedia):
        probe.probe(samples.truncate(whole, tmp_path / "cut.mp4", keep=keep), CONFIG)


def test_truncated_faststart_mp4_refused_mid_read(files: dict[str, Path], tmp_path: Path) -> None:
    cut = samples.truncate(files["faststart"], tmp_path / "cut.mp4")
    info = probe.probe(cut, CONFIG)
    assert info.frames == 20  # the header still promises every frame
    with MediaReader(cut, info) as reader, pytest.raises(UndecodableMedia, match="frame"):
        for _ in reader:
            pass


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_a_clip_cut_between_keyframes_is_read_from_its_first_keyframe(tmp_path, fmt):
    """Cut without re-encoding and without an edit list, a clip starts with packets the
    decoder drops (they need the keyframe before them): the frames from its first keyframe
    on are read, not the whole clip refused as cut off once every frame had been made."""
    whole = tmp_path / "gop.mp4"
    with av.open(str(whole), "w") as out:
        stream = samples._add_video(out, "libx264", 10, (160, 96), lossless=False)
        stream.options = {"g": "10", "bf": "0"}
        for index in range(30):
            picture = samples._picture(index, (160, 96))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    cut = tmp_path / f"cut.{fmt}"
    with av.open(str(whole)) as source, av.open(str(cut), "w", format=fmt) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        packets = [packet for packet in source.demux(video=0) if packet.size]
        for packet in packets[3:]:  # the first keyframe and two frames after it left out
            packet.stream = stream
            out.mux(packet)
    info = probe.probe(cut, CONFIG)
    with MediaReader(cut, info) as reader:
        frames = [item for item in reader if isinstance(item, Frame)]
    assert info.frames == 27 and 0 < len(frames) <= 20  # from the keyframe at 10 on
    _, output = run_job(cut, tmp_path / "out.mp4", FakeModel())
    assert output.frames == len(frames)


@pytest.mark.parametrize("container", ["webm", "matroska"])
def test_truncated_matroska_refused_at_probe(tmp_path: Path, container: str) -> None:
    # No frame count in the header: the Segment's size tells that bytes are missing.
    codec = "libvpx-vp9" if container == "webm" else "libx264"
    whole = samples.make_video(
        tmp_path / "a.mkv", container=container, video_codec=codec, audio_codec=None
    )
    with pytest.raises(UndecodableMedia, match="cut off"):
        probe.probe(samples.truncate(whole, tmp_path / "cut.mkv", keep=0.9), CONFIG)


# --- reading and writing videos --------------------------------------------------------


def test_reader_is_lazy(files: dict[str, Path]) -> None:
    info = probe.probe(files["mp4"], CONFIG)
    with MediaReader(files["mp4"], info) as reader:
        items = iter(reader)
        assert inspect.isgenerator(items)
        first = next(item for item in items if isinstance(item, Frame))
        assert first.index == 0 and first.rgb.shape == (96, 160, 3)
        assert reader.audio_streams[0].codec_context.name == "aac"


def test_mp4_round_trip_unchanged_frames(files: dict[str, Path], tmp_path: Path) -> None:
    source = files["rotated"]
    out_path = tmp_path / "out.mp4"
    out = _round_trip(source, out_path)
    assert (out.container, out.rotation, out.frames) == ("mp4", 90, 20)
    assert samples.video_timestamps(out_path) == samples.video_timestamps(source)
    assert samples.audio_packets(out_path) == samples.audio_packets(source)
    assert samples.display_rotation(out_path) == 90
    assert out.duration_s == pytest.approx(probe.probe(source, CONFIG).duration_s, abs=0.05)
    before, after = samples.decoded_frames(source), samples.decoded_frames(out_path)
    assert np.mean(np.abs(before[7].astype(int) - after[7].astype(int))) < 6


@pytest.mark.parametrize(("container", "suffix"), [("matroska", "mkv"), ("mov", "mov")])
def test_rotation_kept_across_containers(files, tmp_path: Path, container, suffix) -> None:
    out = _round_trip(files["rotated"], tmp_path / f"out.{suffix}", container)
    assert (out.container, out.rotation) == (container, 90)


def test_round_trip_resized(files: dict[str, Path], tmp_path: Path) -> None:
    out = _round_trip(files["rotated"], tmp_path / "small.mp4", size=(80, 48))
    assert (out.width, out.height, out.frames, out.rotation) == (80, 48, 20, 90)
    assert samples.video_timestamps(tmp_path / "small.mp4") == samples.video_timestamps(
        files["rotated"]
    )
    assert samples.audio_packets(tmp_path / "small.mp4") == samples.audio_packets(files["rotated"])


def test_webm_stays_webm_with_opus(files: dict[str, Path], tmp_path: Path) -> None:
    out = _round_trip(files["webm"], tmp_path / "out.webm")
    assert (out.container, out.video_codec, out.audio_codecs) == ("webm", "vp9", ("opus",))
    assert samples.video_timestamps(tmp_path / "out.webm") == samples.video_timestamps(
        files["webm"]
    )
    assert samples.audio_packets(tmp_path / "out.webm") == samples.audio_packets(files["webm"])


@pytest.mark.parametrize(("container", "suffix"), [("mp4", "mp4"), ("matroska", "mkv")])
def test_variable_frame_rate_kept(tmp_path: Path, container: str, suffix: str) -> None:
    source = samples.make_video(tmp_path / f"v.{suffix}", container=container, vfr=True)
    stamps = samples.video_timestamps(source)
    assert len(set(np.diff(stamps))) == 2  # really variable
    out = _round_trip(source, tmp_path / f"out.{suffix}")
    assert out.frames == 20
    assert samples.video_timestamps(tmp_path / f"out.{suffix}") == stamps


def test_cross_container_keeps_times(files: dict[str, Path], tmp_path: Path) -> None:
    # MKV counts milliseconds and MP4 1/10240 s here: the times match, not the integers.
    # MKV cannot start below zero, so the AAC priming delay (1024 samples, a negative
    # start in MP4) shifts every stream alike: compare times from the first frame.
    out = _round_trip(files["mp4"], tmp_path / "out.mkv", "matroska")
    assert (out.container, out.frames, out.audio_codecs) == ("matroska", 20, ("aac",))
    with av.open(str(tmp_path / "out.mkv")) as result, av.open(str(files["mp4"])) as source:
        times_out = sorted(float(p.pts * p.time_base) for p in result.demux(video=0) if p.size)
        times_in = sorted(float(p.pts * p.time_base) for p in source.demux(video=0) if p.size)
    shifted = [t - times_out[0] for t in times_out]
    assert shifted == pytest.approx([t - times_in[0] for t in times_in], abs=0.001)
    assert times_out[0] - times_in[0] == pytest.approx(1024 / samples.AUDIO_RATE, abs=0.002)
    assert samples.audio_packets(tmp_path / "out.mkv") == samples.audio_packets(files["mp4"])


def test_still_shot_decodes_identical(files: dict[str, Path]) -> None:
    frames = samples.decoded_frames(files["still"])
    assert all(np.array_equal(frames[10], f) for f in frames[11:])
    assert not np.array_equal(frames[8], frames[9])


def test_write_frame_checks_shape(files: dict[str, Path], tmp_path: Path) -> None:
    info = probe.probe(files["mp4"], CONFIG)
    with MediaReader(files["mp4"], info) as reader:
        writer = writers.VideoWriter(tmp_path / "x.mp4", reader, 80, 48, "mp4", 20)
        frame = next(i for i in reader if isinstance(i, Frame))
        with pytest.raises(ValueError, match="shape"):
            writer.write_frame(frame.rgb, frame)
        writer.close()


def test_output_container_rules(files: dict[str, Path]) -> None:
    mp4 = probe.probe(files["mp4"], CONFIG)
    webm = probe.probe(files["webm"], CONFIG)
    assert writers.output_container(mp4, "same") == ("mp4", "video/mp4", "mp4")
    assert writers.output_container(webm, "same") == ("webm", "video/webm", "webm")
    assert writers.output_container(mp4, "matroska") == ("matroska", "video/x-matroska", "mkv")
    assert writers.output_container(mp4, "mov") == ("mov", "video/quicktime", "mov")
    assert writers.output_container(webm, "mp4")[0] == "mp4"  # Opus goes into MP4
    with pytest.raises(InvalidVideoOptions, match="aac"):
        writers.output_container(mp4, "webm")
    with pytest.raises(InvalidVideoOptions, match="opus"):
        writers.output_container(webm, "mov")
    with pytest.raises(InvalidVideoOptions):
        writers.output_container(mp4, "avi")


# --- animations ------------------------------------------------------------------------


@pytest.mark.parametrize("loop", [None, 1, 0])
def test_a_gif_keeps_whether_and_how_often_it_loops(tmp_path: Path, loop) -> None:
    """No loop extension plays once; a loop count of 1 plays twice: both are kept."""
    source = samples.make_animation(tmp_path / "in.gif", "gif", frames=3, loop=loop)
    info = probe.probe(source, CONFIG)
    assert info.loop == loop
    writer = writers.AnimationWriter(info, quality=None)
    with MediaReader(source, info) as reader:
        for frame in reader:
            writer.add(frame.rgb, frame.alpha, frame.duration_ms)
    with Image.open(io.BytesIO(writer.finish())) as result:
        assert result.info.get("loop") == loop


@pytest.mark.parametrize("fmt", ["gif", "webp", "apng"])
def test_animation_round_trip(fmt: str, tmp_path: Path) -> None:
    durations = [70, 140, 210, 70]
    source = samples.make_animation(
        tmp_path / f"in.{fmt}", fmt, frames=4, durations=durations, loop=3, alpha=True
    )
    info = probe.probe(source, CONFIG)
    assert info.has_alpha
    writer = writers.AnimationWriter(info, quality=None)
    with MediaReader(source, info) as reader:
        for frame in reader:
            assert frame.alpha is not None and frame.alpha[0, -1] == 0 and frame.alpha[0, 0] == 255
            writer.add(frame.rgb, frame.alpha, frame.duration_ms)
    result = tmp_path / f"out.{fmt}"
    result.write_bytes(writer.finish())
    out = probe.probe(result, CONFIG)
    assert (out.container, out.frames, out.loop, out.has_alpha) == (fmt, 4, 3, True)
    with MediaReader(result, out) as reader:
        frames = list(reader)
    assert [f.duration_ms for f in frames] == durations
    assert all(f.alpha[0, -1] == 0 and f.alpha[0, 0] == 255 for f in frames)


def test_foreign_video_containers_are_told_apart_from_pictures():
    from serve_app.media.probe import sniff_foreign_video

    avi = b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(100)
    transport = bytearray(600)
    transport[0] = transport[188] = transport[376] = 0x47
    assert sniff_foreign_video(avi) == "AVI"
    assert sniff_foreign_video(bytes(transport)) == "MPEG-TS"
    camera = bytearray(600)  # .MTS: 192-byte packets, a 4-byte time code before each
    camera[4] = camera[196] = camera[388] = 0x47
    assert sniff_foreign_video(bytes(camera)) == "MPEG-TS (M2TS)"
    assert sniff_foreign_video(b"FLV\x01" + bytes(20)) == "FLV"
    assert sniff_foreign_video(b"OggS" + bytes(20)) == "Ogg"
    # A GIF whose bytes happen to look like transport-stream sync bytes is still a GIF.
    gif = bytearray(b"GIF89a" + bytes(600))
    gif[188] = gif[376] = 0x47
    assert sniff_foreign_video(bytes(gif)) is None
    assert sniff_foreign_video(b"\x89PNG\r\n\x1a\n" + bytes(600)) is None
