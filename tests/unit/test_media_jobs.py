"""A video or animation through MediaJob with a fake model and an in-memory cache: real
media files (made with PyAV and Pillow), real decoding and encoding, no Ray."""

from __future__ import annotations

import asyncio
import io
import os
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from serve_app.config import MediaConfig
from serve_app.errors import MediaTooLarge, Unavailable, UndecodableMedia
from serve_app.imaging.pixels import target_dimensions
from serve_app.media import probe
from serve_app.media.frames import (
    MODEL_ATTEMPTS,
    MediaJob,
    frame_key,
    sync_animation_budget_error,
)
from serve_app.media.gate import ModelGate
from serve_app.media.reader import MediaReader
from serve_app.model.identity import ModelIdentity
from tests.support.media import (
    audio_packets,
    decoded_frames,
    display_rotation,
    frame_count,
    make_animation,
    make_edit_list_mp4,
    make_h264_aac_mp4,
    make_recorded_webm,
    make_rotated_mp4,
    make_size_changing_webm,
    make_video,
    make_vp9_opus_webm,
    video_timestamps,
)
from tests.support.media_jobs import (
    CONFIG,
    IDENTITY,
    BatchingCache,
    DictCache,
    FakeModel,
    options,
    run_job,
)


def test_a_video_keeps_frames_timestamps_and_audio(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=2.0, fps=10)
    model = FakeModel()
    job, output = run_job(source, tmp_path / "out.mp4", model)
    assert output.media_type == "video/mp4"
    assert output.frames == frame_count(source) == frame_count(output.path) == 20
    assert video_timestamps(output.path) == video_timestamps(source)
    assert audio_packets(output.path) == audio_packets(source)
    assert (output.width, output.height) == (96, 56)
    assert model.frames == job.counts.model == 20
    assert max(model.batch_sizes) == CONFIG.frame_batch
    # the model's picture, not the input: every frame inverted (up to the codec's loss)
    before = decoded_frames(source)[5].astype(float).mean()
    after = decoded_frames(output.path)[5].astype(float).mean()
    assert abs(after - (255 - before)) < 12


def test_webm_stays_webm_with_opus_copied(tmp_path):
    source = make_vp9_opus_webm(tmp_path / "in.webm", seconds=1.0)
    _, output = run_job(source, tmp_path / "out.webm", FakeModel())
    assert output.media_type == "video/webm"
    assert audio_packets(output.path) == audio_packets(source)
    assert frame_count(output.path) == frame_count(source)


def test_rotation_is_kept(tmp_path):
    source = make_rotated_mp4(tmp_path / "in.mp4", rotation=90, seconds=1.0)
    _, output = run_job(source, tmp_path / "out.mp4", FakeModel())
    assert display_rotation(output.path) == display_rotation(source) == 90


def test_an_anamorphic_video_comes_out_as_shown_in_square_pixels(tmp_path):
    """Stored 120x96 with 4:3 pixels (HDV, DVD rips), shown 160x96: the output is sized
    from what is shown, its pixels square, not squashed to the stored shape."""
    source = tmp_path / "in.mp4"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 120, 96, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for index in range(5):
            picture = np.full((96, 120, 3), index * 40, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))
    info = probe.probe(source, CONFIG)
    assert (info.width, info.height, info.display_size) == (120, 96, (160, 96))
    _, output = run_job(source, tmp_path / "out.mp4", FakeModel(), size=96)
    assert (output.width, output.height) == target_dimensions(160, 96, 96) == (96, 56)
    with av.open(str(output.path)) as written:
        stream = written.streams.video[0]
        assert (stream.width, stream.height) == (96, 56)
        assert stream.sample_aspect_ratio in (None, Fraction(0), Fraction(1))


def test_the_output_says_its_colours_and_keeps_them(tmp_path):
    """Encoded as BT.709 (limited range) and tagged so: untagged, a player guesses the
    matrix from the size and an HD output's colours shift."""
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=0.5, fps=10)
    _, output = run_job(source, tmp_path / "out.mp4", FakeModel())
    with av.open(str(output.path)) as written:
        context = written.streams.video[0].codec_context
        tags = (context.color_primaries, context.color_trc, context.colorspace)
        assert tags == (1, 1, 1) and context.color_range == 1  # BT.709, limited
    # Read back by the tags: the model's picture (inverted), up to the codec's loss.
    before = decoded_frames(source)[2].astype(float).mean(axis=(0, 1))
    after = decoded_frames(output.path)[2].astype(float).mean(axis=(0, 1))
    assert np.abs(after - (255 - before)).max() < 8


def test_a_still_shot_is_computed_once(tmp_path):
    source = make_video(tmp_path / "in.mp4", seconds=2.0, fps=10, still_after_s=1.0)
    model = FakeModel()
    job, output = run_job(source, tmp_path / "out.mp4", model)
    assert output.frames == 20
    assert job.counts.model == 11  # 10 moving frames, then the still one once
    assert job.counts.job == 9


def test_a_second_job_finds_every_frame_in_the_cache(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=1.0)
    cache = DictCache()
    run_job(source, tmp_path / "one.mp4", FakeModel(), cache)
    model = FakeModel()
    job, output = run_job(source, tmp_path / "two.mp4", model, cache, strength=0.5)
    assert model.frames == 0
    assert job.counts.cache == output.frames == 10


def test_a_job_reaches_the_cache_once_per_batch_not_once_per_frame(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=2.0)  # 20 distinct frames
    cache = BatchingCache()
    model = FakeModel()
    _, output = run_job(source, tmp_path / "one.mp4", model, cache)
    assert model.frames == output.frames == 20
    assert cache.put_calls == model.batch_sizes  # one put per model pass, its whole batch
    assert sum(cache.get_calls) == 20 and len(cache.get_calls) < 20

    again = BatchingCache()
    again.entries = dict(cache.entries)
    job, output = run_job(source, tmp_path / "two.mp4", FakeModel(), again)
    assert job.counts.cache == output.frames == 20 and again.put_calls == []
    assert len(again.get_calls) <= 20 // CONFIG.frame_batch + 2


def test_frame_keys_depend_on_what_computes_them():
    assert frame_key("d", "s", IDENTITY) != frame_key("d", "t", IDENTITY)
    assert frame_key("d", "s", IDENTITY) != frame_key("d", "s", ModelIdentity("w", "other"))
    assert frame_key("d", "s", IDENTITY) != frame_key("e", "s", IDENTITY)


def test_a_failed_replica_is_retried(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=1.0)
    model = FakeModel(failures=2)
    _, output = run_job(source, tmp_path / "out.mp4", model)
    assert output.frames == frame_count(output.path) == 10
    assert model.frames == 10  # only the failed batch ran again


def test_a_replica_that_keeps_failing_fails_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr("serve_app.media.frames.RETRY_FIRST_WAIT_S", 0.001)
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=1.0)
    with pytest.raises(Unavailable):
        run_job(source, tmp_path / "out.mp4", FakeModel(failures=100))


def test_a_full_model_is_waited_out_without_counting_as_failures(tmp_path, monkeypatch):
    monkeypatch.setattr("serve_app.media.frames.RETRY_FIRST_WAIT_S", 0.001)
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=1.0)
    model = FakeModel(overloads=MODEL_ATTEMPTS + 4)  # more than a failing replica is given
    _, output = run_job(source, tmp_path / "out.mp4", model)
    assert output.frames == frame_count(output.path) == 10
    batches = -(-10 // CONFIG.frame_batch)
    assert model.frames == 10 and model.calls == batches + MODEL_ATTEMPTS + 4


def test_a_clip_whose_edit_list_hides_its_first_frames_is_made_as_shown(tmp_path):
    """Its header counts 20 frames, its decoder shows 15: not a file cut off (the job
    failed at its end, "breaks off at frame 15 of 20")."""
    source = make_edit_list_mp4(tmp_path / "in.mp4", frames=20, hidden=5)
    _, output = run_job(source, tmp_path / "out.mp4", FakeModel())
    assert output.frames == frame_count(output.path) == len(decoded_frames(source)) == 15


def test_a_browser_recording_without_a_duration_is_measured_and_made(tmp_path):
    """MediaRecorder's WebM names no duration: it is measured from its frames' times, and
    bounded as any other (it was refused: "the video's duration is unknown")."""
    source = make_recorded_webm(tmp_path / "in.webm", frames=20, fps=10)
    info = probe.probe(source, CONFIG)
    assert (info.frames, info.duration_s) == (20, pytest.approx(2.0))
    _, output = run_job(source, tmp_path / "out.webm", FakeModel())
    assert output.frames == frame_count(output.path) == 20
    with pytest.raises(MediaTooLarge, match="duration"):
        probe.probe(source, MediaConfig(max_duration_s=1.5))


def test_an_apng_s_default_image_is_not_one_of_its_frames(tmp_path):
    """An APNG may carry a picture for viewers that do not animate, outside its animation:
    it was made the first frame (0 ms, flashing at every loop), and counted in the limits."""
    source = make_animation(tmp_path / "a.png", fmt="apng", frames=3, fallback=True)
    info = probe.probe(source, CONFIG)
    assert info.frames == 3 and info.duration_s == pytest.approx(0.1 + 0.12 + 0.14)
    _, output = run_job(source, None, FakeModel())
    with Image.open(io.BytesIO(output.data)) as made:
        assert made.n_frames == 3 and not made.info.get("default_image")
        made.seek(0)
        assert made.convert("RGB").getpixel((0, made.height - 1)) != (0, 0, 0)  # not white's


def test_a_video_that_changes_its_frame_size_mid_way_is_refused(tmp_path):
    """The limits were checked on the header's size, and the output is written at it: a
    stream that grows mid-way (64 px to 16k px) is refused at its first such frame."""
    source = make_size_changing_webm(tmp_path / "in.webm", first=64, then=128)
    with pytest.raises(UndecodableMedia, match="changes its frame size at frame 5"):
        run_job(source, tmp_path / "out.webm", FakeModel())


def test_model_calls_stay_within_the_gate(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=2.0)
    config = MediaConfig(frames_in_flight=16, frame_batch=2)
    model = FakeModel(delay_s=0.02)
    run_job(source, tmp_path / "out.mp4", model, config=config, gate=ModelGate(2, 1, 1.0))
    assert model.most_running == 2


def test_the_gate_steps_back_while_photos_ask():
    gate = ModelGate(idle=3, busy=1, quiet_s=60)
    assert gate.limit == 3
    gate.interactive()
    assert gate.limit == 1


def test_cancelling_a_job_stops_its_model_calls(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=3.0)
    model = FakeModel(delay_s=0.2)
    info = probe.probe(source, CONFIG)
    job = MediaJob(
        info, options(), CONFIG, model, DictCache(), lambda s: IDENTITY, ModelGate(3, 1, 1.0)
    )

    async def cancel_soon():
        task = asyncio.ensure_future(job.run(source, tmp_path / "out.mp4"))
        while model.calls == 0:  # the job is calling the model
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        calls = model.calls
        # Only a task of this loop can call the model: once every other one has ended,
        # nothing is left that could call it later.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.gather(*others, return_exceptions=True)
        return calls

    calls = asyncio.run(cancel_soon())
    assert model.calls == calls < 30 / CONFIG.frame_batch
    assert model.running == 0


def test_a_cancelled_job_ends_after_the_pass_the_model_is_running(tmp_path):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=3.0)
    model = FakeModel(delay_s=0.3, detached=True)
    info = probe.probe(source, CONFIG)
    job = MediaJob(
        info, options(), CONFIG, model, DictCache(), lambda s: IDENTITY, ModelGate(3, 1, 1.0)
    )

    async def cancel_during_a_pass():
        task = asyncio.ensure_future(job.run(source, tmp_path / "out.mp4"))
        while model.running == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return model.running, model.calls

    running_when_ended, calls = asyncio.run(cancel_during_a_pass())
    assert running_when_ended == 0  # no pass of its frames outlived the job's run
    assert model.calls == calls


@pytest.mark.parametrize("fmt", ["gif", "webp", "apng"])
def test_an_animation_keeps_its_frames_durations_and_loop(tmp_path, fmt):
    durations = [100, 200, 150, 120]
    source = make_animation(tmp_path / f"in.{fmt}", fmt=fmt, frames=4, durations=durations, loop=3)
    _, output = run_job(source, None, FakeModel(), size=64)
    assert Image.open(io.BytesIO(output.data)).format == Image.open(source).format
    info = probe.probe(io.BytesIO(output.data), CONFIG)
    assert (info.frames, info.loop) == (4, 3)
    with MediaReader(io.BytesIO(output.data), info) as reader:
        assert [frame.duration_ms for frame in reader] == durations
    assert output.duration_s == pytest.approx(sum(durations) / 1000)


@pytest.mark.parametrize("max_fps, kept", [(5.0, 10), (9.0, 18), (10.0, 20), (30.0, 20)])
def test_max_fps_keeps_at_most_that_many_frames_a_second(tmp_path, max_fps, kept):
    source = make_h264_aac_mp4(tmp_path / "in.mp4", seconds=2.0, fps=10)
    job, output = run_job(source, tmp_path / "out.mp4", FakeModel(), max_fps=max_fps)
    assert output.frames == frame_count(output.path) == kept == job.counts.total
    assert audio_packets(output.path) == audio_packets(source)


def test_the_synchronous_budget_counts_frames_times_output_pixels(tmp_path):
    source = make_animation(tmp_path / "in.gif", fmt="gif", frames=6, size=(64, 48))
    info = probe.probe(source, CONFIG)
    assert sync_animation_budget_error(info, 64, 6 * 64 * 48) is None
    assert "POST /v1/jobs" in sync_animation_budget_error(info, 64, 6 * 64 * 48 - 1)


def test_only_outputs_older_than_a_jobs_deadline_are_swept(tmp_path):
    from serve_app.media.service import OUTPUT_PREFIX, remove_abandoned_outputs

    abandoned = tmp_path / f"{OUTPUT_PREFIX}old.mp4"
    being_written = tmp_path / f"{OUTPUT_PREFIX}new.mp4"
    someone_elses = tmp_path / "other-old.mp4"
    for path in (abandoned, being_written, someone_elses):
        path.write_bytes(b"\0" * 48)
    two_hours_ago = time.time() - 7200
    for path in (abandoned, someone_elses):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert remove_abandoned_outputs(3600, tmp_path) == 1
    assert not abandoned.exists()
    assert being_written.exists() and someone_elses.exists()


# --- an animation's output is bounded: frames × output pixels, and each frame's size ------


def media_service(**media):
    from serve_app.config import AppConfig
    from serve_app.media.service import MediaService

    config = AppConfig.model_validate({"styles": [{"name": "s", "weights": "random"}], **media})
    return MediaService(config, DictCache(), FakeModel(), lambda style: IDENTITY)


def resolved(service, size, synchronous=False):
    from serve_app.options import resolve_options

    return resolve_options(service._config, size=size, synchronous=synchronous)


@pytest.fixture(scope="module")
def tiny_long_gif(tmp_path_factory):
    """1,000 frames of 16×16: about a megabyte (1 KB a frame, its own palette)."""
    path = tmp_path_factory.mktemp("gif") / "long.gif"
    return make_animation(path, "gif", frames=1000, size=(16, 16), durations=[20] * 1000)


def test_a_thousand_tiny_frames_at_the_largest_size_are_refused_at_submission(tiny_long_gif):
    from serve_app.errors import MediaTooLarge

    service = media_service()
    info = asyncio.run(service.inspect(tiny_long_gif.read_bytes()))
    largest = service._config.limits.max_size
    with pytest.raises(MediaTooLarge) as refused:
        service.check(info, resolved(service, largest))
    message = refused.value.message
    limit = service._config.media.max_animation_pixels
    assert "1000 frames" in message and f"{largest}x{largest}" in message
    assert str(limit) in message
    # the size it suggests fits, and the next one up does not
    suggested = int(message.split("size=")[1].split()[0])
    service.check(info, resolved(service, suggested))
    with pytest.raises(MediaTooLarge):
        service.check(info, resolved(service, suggested + 4))


@pytest.mark.slow  # Pillow's GIF quantizer: ~8 ms a frame
def test_a_thousand_tiny_frames_within_the_bound_are_made(tiny_long_gif, tmp_path):
    service = media_service()
    info = asyncio.run(service.inspect(tiny_long_gif.read_bytes()))
    size = 64
    options = resolved(service, size)
    service.check(info, options)
    output = asyncio.run(service.run_job(options, tiny_long_gif, lambda counts: None))
    assert (output.frames, output.width, output.height) == (1000, size, size)
    assert Image.open(io.BytesIO(output.data)).n_frames == 1000


def test_a_synchronous_animation_is_bounded_too(tmp_path):
    from serve_app.errors import MediaTooLarge

    source = make_animation(tmp_path / "in.gif", "gif", frames=6, size=(64, 48))
    # a bound below the synchronous budget: the bound answers, not "use jobs"
    service = media_service(media={"max_animation_pixels": 6 * 64 * 48 - 1})
    data = source.read_bytes()
    info = asyncio.run(service.inspect(data))
    with pytest.raises(MediaTooLarge):
        asyncio.run(service.animate(data, info, resolved(service, 64, synchronous=True)))
    service = media_service(media={"max_animation_pixels": 6 * 64 * 48})
    output = asyncio.run(service.animate(data, info, resolved(service, 64, synchronous=True)))
    assert output.frames == 6


def test_an_animations_frames_are_bounded_like_a_videos(tmp_path):
    from serve_app.errors import InvalidVideoOptions

    source = make_animation(tmp_path / "in.gif", "gif", frames=2, size=(64, 64))
    service = media_service(tiling={"max_whole_pixels": 128 * 128})
    info = asyncio.run(service.inspect(source.read_bytes()))
    service.check(info, resolved(service, 128))
    with pytest.raises(InvalidVideoOptions, match="132x132"):
        service.check(info, resolved(service, 132))
