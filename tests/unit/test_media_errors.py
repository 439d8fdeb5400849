"""The media path's error boundary: odd and broken uploads get the media errors (4xx with
a code), never Pillow's or PyAV's own exceptions. Real files, crafted byte by byte where
the odd part is the point; no Ray."""

from __future__ import annotations

import asyncio
import io
import struct
from pathlib import Path

import av
import pytest
from PIL import Image, UnidentifiedImageError

from serve_app.config import AppConfig, MediaConfig
from serve_app.errors import (
    MediaTooLarge,
    ServiceError,
    UndecodableMedia,
    UnsupportedCodec,
    UnsupportedFormat,
)
from serve_app.imaging import decode
from serve_app.media import probe
from serve_app.media.boundary import media_error
from serve_app.media.reader import MediaReader
from serve_app.media.service import MediaService
from serve_app.model.identity import ModelIdentity, StylizedArray
from tests.support import media as samples

CONFIG = MediaConfig()
IDENTITY = ModelIdentity("weights", "runtime")


# --- crafted files ----------------------------------------------------------------------


def dds_of_unknown_pixel_format() -> bytes:
    """A DDS file whose pixel format flags Pillow does not implement (it raises
    NotImplementedError on opening it)."""
    header = struct.pack("<3I", 0x1007, 16, 16) + bytes(12) + bytes(44)
    header += struct.pack("<4I", 32, 0x8, 0, 0)  # pixel format: size, flags=8 (unknown)
    header += bytes(120 - len(header))
    return b"DDS " + struct.pack("<I", 124) + header + bytes(16 * 16 * 4)


def _skip_sub_blocks(data: bytes, at: int) -> int:
    while data[at]:
        at += data[at] + 1
    return at + 1


def gif_frame_descriptors(data: bytes) -> list[int]:
    """Offsets of each frame's image descriptor fields (left, top, width, height)."""
    at = 13
    if data[10] & 0x80:  # a global colour table follows the screen descriptor
        at += 3 << ((data[10] & 7) + 1)
    found = []
    while at < len(data) and data[at] != 0x3B:
        if data[at] == 0x21:  # extension: label, then sub-blocks
            at = _skip_sub_blocks(data, at + 2)
            continue
        if data[at] != 0x2C:
            raise ValueError(f"unexpected GIF block {data[at]:#x} at {at}")
        found.append(at + 1)
        flags = data[at + 9]
        at += 10
        if flags & 0x80:
            at += 3 << ((flags & 7) + 1)
        at = _skip_sub_blocks(data, at + 1)  # past the LZW code size and the data
    return found


def gif_with_second_frame(tmp_path: Path, **fields: int) -> Path:
    """A 3-frame 64×48 GIF whose second frame's descriptor is changed (left, top, width,
    height): a frame that reaches past the canvas."""
    source = samples.make_animation(tmp_path / "plain.gif", "gif", frames=3, size=(64, 48))
    data = bytearray(source.read_bytes())
    at = gif_frame_descriptors(bytes(data))[1]
    names = ("left", "top", "width", "height")
    for index, name in enumerate(names):
        if name in fields:
            data[at + 2 * index : at + 2 * index + 2] = struct.pack("<H", fields[name])
    path = tmp_path / "odd.gif"
    path.write_bytes(bytes(data))
    return path


# --- a service over a model that answers with the frames themselves ----------------------


async def _echo_model(frames, style):
    return [StylizedArray(frame, IDENTITY, 0.0, 1.0, len(frames)) for frame in frames]


class _NoCache:
    async def get(self, key):
        return None

    async def put(self, key, value):
        return None


def media_service(**media) -> MediaService:
    config = AppConfig.model_validate(
        {"styles": [{"name": "s", "weights": "random"}], "default_size": 32, "media": media}
    )
    return MediaService(config, _NoCache(), _echo_model, lambda style: IDENTITY)


def job_options(service: MediaService, size: int = 32):
    from serve_app.options import resolve_options

    return resolve_options(service._config, size=size, synchronous=False)


# --- the boundary itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raised, expected",
    [
        (SyntaxError("APNG contains frame sequence errors"), UndecodableMedia),
        (NotImplementedError("Unknown pixel format flags 8"), UndecodableMedia),
        (struct.error("unpack requires a buffer of 4 bytes"), UndecodableMedia),
        (EOFError("no more images"), UndecodableMedia),
        (Image.DecompressionBombError("Image size (4307953225 pixels)"), MediaTooLarge),
        (UnidentifiedImageError("cannot identify image file"), UnsupportedCodec),
        (av.error.InvalidDataError(1094995529, "Invalid data found"), UndecodableMedia),
    ],
)
def test_what_a_decoder_raises_becomes_a_media_error(raised, expected):
    error = media_error(raised, "the animation cannot be read")
    assert isinstance(error, expected) and error.status < 500
    assert error.message.startswith("the animation cannot be read") or expected is UnsupportedCodec


def test_service_errors_and_memory_errors_pass_through():
    already = UnsupportedCodec("no")
    assert media_error(already, "reading") is already
    memory = MemoryError()
    assert media_error(memory, "reading") is memory


# --- sniffing and probing odd files -----------------------------------------------------


def test_a_dds_of_an_unimplemented_pixel_format_is_no_animation_and_a_415_picture():
    data = dds_of_unknown_pixel_format()
    with pytest.raises(NotImplementedError):  # what Pillow itself does with it
        Image.open(io.BytesIO(data))
    assert probe.is_animated_picture(data) is False
    assert asyncio.run(media_service().inspect(data)) is None  # the still path answers
    with pytest.raises(UnsupportedFormat):
        decode.decode_resized(data, AppConfig.model_fields["limits"].default, 32)


def test_a_gif_frame_past_pillows_pixel_ceiling_is_413_not_a_bomb_error(tmp_path):
    path = gif_with_second_frame(tmp_path, width=65535, height=65535)
    with Image.open(path) as image, pytest.raises(Image.DecompressionBombError):
        image.seek(1)  # what Pillow does while probing the frames' durations
    data = path.read_bytes()
    with pytest.raises(MediaTooLarge, match="too large"):
        asyncio.run(media_service().inspect(data))


def test_a_gif_frame_past_the_frame_limit_is_413(tmp_path):
    path = gif_with_second_frame(tmp_path, left=4000, top=3000)
    with pytest.raises(MediaTooLarge, match="frame size"):
        probe.probe(path, CONFIG)


def test_a_gif_frame_reaching_past_its_canvas_keeps_the_canvas(tmp_path):
    path = gif_with_second_frame(tmp_path, left=32, top=24)  # 64×48 at (32, 24)
    with Image.open(path) as image:
        image.seek(1)
        assert image.size == (96, 72)  # Pillow enlarges the picture
    info = probe.probe(path, CONFIG)
    assert (info.width, info.height) == (64, 48)
    with MediaReader(path, info) as reader:
        assert [frame.rgb.shape for frame in reader] == [(48, 64, 3)] * 3
    service = media_service()
    output = asyncio.run(service.run_job(job_options(service, 64), path, lambda counts: None))
    assert (output.frames, output.width, output.height) == (3, 64, 48)


def test_an_apng_with_a_broken_animation_is_its_default_image(tmp_path):
    path = samples.apng_with_broken_animation(tmp_path)
    with Image.open(path) as image, pytest.raises(SyntaxError):
        for index in range(image.n_frames):
            image.seek(index)
            image.load()
    info = probe.probe(path, CONFIG)
    assert (info.kind, info.frames, info.width, info.height) == ("still", 1, 64, 48)
    data = path.read_bytes()
    assert asyncio.run(media_service().inspect(data)) is None  # served as a still picture
    still = decode.decode_resized(data, AppConfig.model_fields["limits"].default, 32)
    assert still.rgb.shape == (24, 32, 3)


def test_an_apng_whose_default_image_is_broken_too_is_400(tmp_path):
    path = samples.apng_with_broken_animation(tmp_path)
    data = bytearray(path.read_bytes())
    at = next(at for at, kind in samples.png_chunks(bytes(data)) if kind == b"IDAT")
    data[at + 10 : at + 30] = bytes(20)  # the default image's compressed data
    with pytest.raises(UndecodableMedia):
        asyncio.run(media_service().inspect(bytes(data)))


@pytest.mark.parametrize("fmt", ["gif", "webp", "apng"])
@pytest.mark.parametrize("keep", [0.2, 0.45, 0.7, 0.9, 0.99])
def test_a_cut_off_animation_is_refused_or_made_never_a_raw_error(tmp_path, fmt, keep):
    whole = samples.make_animation(tmp_path / f"a.{fmt}", fmt, frames=6, size=(64, 48))
    cut = samples.truncate(whole, tmp_path / f"cut.{fmt}", keep=keep)
    service = media_service()

    async def submit_and_run():
        info = await service.inspect(cut.read_bytes())
        if info is None:
            return None
        options = job_options(service)
        service.check(info, options)
        return await service.run_job(options, cut, lambda counts: None)

    try:
        asyncio.run(submit_and_run())
    except ServiceError as error:
        assert error.status < 500, error


def test_a_video_job_cancelled_as_its_thread_ends_leaves_no_output_behind(tmp_path, monkeypatch):
    """The run had finished when the cancellation came, while the job's thread was being
    let go: the output the caller never got was left in the temporary directory."""
    from serve_app.media import service as media_service_module
    from serve_app.media.worker import MediaThread

    monkeypatch.setattr(media_service_module.tempfile, "tempdir", str(tmp_path))
    let_go = MediaThread.__aexit__

    async def cancelled_while_letting_go(self, *exc_info):
        await let_go(self, *exc_info)
        raise asyncio.CancelledError

    monkeypatch.setattr(MediaThread, "__aexit__", cancelled_while_letting_go)
    clip = samples.make_h264_aac_mp4(tmp_path / "clip.mp4", seconds=0.5)
    service = media_service()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(service.run_job(job_options(service), clip, lambda counts: None))
    assert list(tmp_path.glob(f"{media_service_module.OUTPUT_PREFIX}*")) == []
