"""Frames alike enough to share a picture (``media/likeness.py``), and a video job that
reuses them: real H.264 videos of the sample photos, the real generator on random
weights, no Ray."""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from serve_app.media import ends, probe
from serve_app.media.frames import MediaJob
from serve_app.media.gate import ModelGate
from serve_app.media.likeness import MIN_TILE_PSNR_DB, TILE, Anchor, worst_tile_mse
from serve_app.model import tensors
from serve_app.model.generator import StyleModel, random_generator, select_runtime
from serve_app.model.identity import StylizedArray
from tests.support.media import make_photo_video
from tests.support.media_jobs import CONFIG, IDENTITY, DictCache, FakeModel, options, run_job
from tests.support.pictures import sample_photos

REUSED_MIN_PSNR_DB = 40.0
SOURCE = (192, 128)  # the test videos' frames, px
SIZE = 96  # the jobs' size: the frames the model sees are 96×64
_WRITE = ends.VideoSink.write  # the writer's own, which the recording one wraps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def tile_mse_by_hand(a: np.ndarray, b: np.ndarray, tile: int) -> float:
    """Every square's mean squared error, one square at a time."""

    def edges(length: int) -> list[int]:
        count = max(length // tile, 1)
        return [index * tile for index in range(count)] + [length]

    rows, cols = edges(a.shape[0]), edges(a.shape[1])
    squared = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    return max(
        squared[top:bottom, left:right].mean()
        for top, bottom in itertools.pairwise(rows)
        for left, right in itertools.pairwise(cols)
    )


# --- the measure -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 96, 3), (288, 512, 3), (70, 100, 3), (20, 40, 3)])
def test_worst_tile_mse_counts_every_pixel(shape):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, shape, np.uint8)
    b = np.clip(a + rng.normal(0, 3, shape), 0, 255).astype(np.uint8)
    b[-3:, -2:] = 255 - b[-3:, -2:]  # the corner: in the last (remainder) square
    assert worst_tile_mse(a, b) == pytest.approx(tile_mse_by_hand(a, b, TILE))
    assert worst_tile_mse(a, a) == 0
    with pytest.raises(ValueError, match="shape"):
        worst_tile_mse(a, b[:-1])


def test_a_local_change_is_not_alike_though_the_whole_frame_barely_moves():
    rng = np.random.default_rng(1)
    frame = rng.integers(60, 200, (288, 512, 3), np.uint8)
    changed = frame.copy()
    changed[100:103, 200:203] = 255  # a small light switched on: 9 of 147 456 pixels
    assert psnr(frame, changed) > MIN_TILE_PSNR_DB  # the whole frame alone would reuse
    anchor = Anchor()
    assert not anchor.alike(frame)  # the first frame is computed
    assert not anchor.alike(changed)


def test_frames_are_compared_with_the_last_computed_one_so_drift_does_not_add_up():
    rng = np.random.default_rng(2)
    base = rng.integers(40, 180, (64, 96, 3)).astype(np.int16)
    # Each frame one level brighter than the one before: alike its neighbour (48 dB),
    # never alike a frame several levels away.
    frames = [(base + level).astype(np.uint8) for level in range(30)]
    anchor, computed = Anchor(), []
    for index, frame in enumerate(frames):
        if not anchor.alike(frame):
            computed.append(index)
    assert computed[0] == 0 and len(computed) >= 4
    # Every reused frame is within the bound of the computed frame it reuses.
    bound = 255**2 / 10 ** (MIN_TILE_PSNR_DB / 10)
    for index in range(30):
        reused = max(c for c in computed if c <= index)
        assert worst_tile_mse(frames[reused], frames[index]) <= bound


def test_a_frame_of_another_shape_is_computed():
    anchor = Anchor()
    assert not anchor.alike(np.zeros((64, 96, 3), np.uint8))
    assert not anchor.alike(np.zeros((96, 64, 3), np.uint8))


# --- a video job -------------------------------------------------------------------------


def photo_views(photo, moving: int, still: int, sigma: float, pan_px: int = 8) -> list:
    """A real photo panned ``pan_px`` a frame for ``moving`` frames, then held for ``still``
    frames, each with fresh Gaussian noise of ``sigma`` levels (a phone's sensor)."""
    rng = np.random.default_rng(0)
    width, height = SOURCE
    with Image.open(photo) as image:
        wide = width + moving * pan_px
        tall = round(image.height * wide / image.width)
        strip = np.asarray(image.convert("RGB").resize((wide, tall), Image.Resampling.LANCZOS))
    top = (tall - height) // 2
    strip = strip[top : top + height]
    views = [strip[:, k * pan_px : k * pan_px + width] for k in range(moving)]
    held = views[-1].astype(np.float64)
    for _ in range(still):
        views.append(np.clip(held + rng.normal(0, sigma, held.shape), 0, 255).astype(np.uint8))
    return views


class RandomGenerator:
    """The real generator on random weights, as the job's frame model; counts frames."""

    def __init__(self) -> None:
        self._model = StyleModel(random_generator(0), select_runtime("cpu", "fp32"))
        self.frames = 0

    def pictures(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return tensors.from_model_batch(self._model(tensors.to_model_batch(frames)))

    async def __call__(self, frames, style):
        self.frames += len(frames)
        return [StylizedArray(p, IDENTITY, 0.0, 1.0, len(frames)) for p in self.pictures(frames)]


def run_recorded(path, dest, model, monkeypatch, **option_changes):
    """The job, and every (frame, picture) its writer was given, in order."""
    written: list[tuple[ends.Decoded, np.ndarray]] = []

    def recording(sink, frames):
        written.extend(frames)
        _WRITE(sink, frames)

    monkeypatch.setattr(ends.VideoSink, "write", recording)
    info = probe.probe(path, CONFIG)
    job = MediaJob(
        info,
        options(size=SIZE, **option_changes),
        CONFIG,
        model,
        DictCache(),
        lambda style: IDENTITY,
        ModelGate(3, 1, 1.0),
    )
    asyncio.run(job.run(path, dest))
    return job, written


@pytest.mark.slow
def test_a_still_shot_with_sensor_noise_reuses_pictures_close_to_its_own(tmp_path, monkeypatch):
    # 20 frames panning across a photo, then 20 of the last view with fresh noise.
    views = photo_views(sample_photos()[0], moving=20, still=20, sigma=2)
    source = make_photo_video(tmp_path / "in.mp4", views)
    exact, _ = run_recorded(
        source, tmp_path / "exact.mp4", FakeModel(), monkeypatch, exact_frames=True
    )
    assert exact.counts.model == 40 and exact.counts.similar == 0  # no two frames identical

    generator = RandomGenerator()
    job, written = run_recorded(source, tmp_path / "out.mp4", generator, monkeypatch)
    print(f"model passes: {exact.counts.model} with exact_frames, {job.counts.model} without")
    assert job.counts.model == generator.frames <= 0.55 * 40
    assert job.counts.model + job.counts.job + job.counts.similar == 40
    assert job.counts.similar >= 18
    # The panning frames are all computed; the held ones reuse.
    assert not any(decoded.alike for decoded, _ in written[:20])
    reused = [(decoded, picture) for decoded, picture in written if decoded.alike]
    assert len(reused) == job.counts.similar
    own = generator.pictures([decoded.photo for decoded, _ in reused])
    worst = min(psnr(picture, mine) for (_, picture), mine in zip(reused, own, strict=True))
    print(f"reused pictures: at worst {worst:.1f} dB from computing them")
    assert worst >= REUSED_MIN_PSNR_DB


def test_a_moving_video_and_a_cut_are_computed(tmp_path, monkeypatch):
    photos = sample_photos()
    # Panning, then a cut to another photo held still, noisy.
    views = photo_views(photos[0], moving=10, still=0, sigma=0)
    views += photo_views(photos[2], moving=1, still=9, sigma=2)
    source = make_photo_video(tmp_path / "in.mp4", views)
    job, written = run_recorded(source, tmp_path / "out.mp4", FakeModel(), monkeypatch)
    alike = [decoded.alike for decoded, _ in written]
    assert alike[:11] == [False] * 11  # every panning frame, and the first after the cut
    assert job.counts.model == 11 and job.counts.similar == 9


@pytest.mark.parametrize(("exact_frames", "passes"), [(True, 8), (False, 3)])
def test_an_animation_reuses_alike_frames_too_unless_asked_not_to(tmp_path, exact_frames, passes):
    # Lossless WebP: the frames as made, a photo panned then held with fresh noise.
    views = photo_views(sample_photos()[1], moving=3, still=5, sigma=2)
    pictures = [Image.fromarray(view) for view in views]
    source = tmp_path / "in.webp"
    pictures[0].save(source, save_all=True, append_images=pictures[1:], duration=100, lossless=True)
    job, output = run_job(source, None, FakeModel(), size=SIZE, exact_frames=exact_frames)
    assert output.frames == 8 and output.duration_s == pytest.approx(0.8)
    assert job.counts.model == passes and job.counts.similar == 8 - passes
