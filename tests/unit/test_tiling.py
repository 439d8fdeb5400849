"""serve_app.tiling: tile geometry, the blend, and tiled-vs-whole fidelity on real weights."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from serve_app.model import tensors
from serve_app.model.generator import StyleModel, load_generator, select_runtime
from serve_app.model.tiling import (
    ALIGN,
    TiledGenerator,
    TileSettings,
    _upsample_axis,
    plan_axis,
    plan_tiles,
    shrink,
    step_count,
)
from tests.support.pictures import sample_photos

FIXTURE = Path(__file__).parents[1] / "fixtures" / "generator_parity.pt"
MIN_PSNR_DB = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [16, 256, 260, 512, 516, 768, 1000, 1364, 2048, 4096])
@pytest.mark.parametrize(("tile", "overlap"), [(256, 64), (512, 64), (128, 32), (64, 0)])
def test_axis_covers_every_pixel_with_equal_aligned_tiles(length, tile, overlap):
    axis = plan_axis(length, tile, overlap)
    assert axis.tile == min(tile, length)
    assert axis.positions[0] == 0
    assert axis.positions[-1] + axis.tile == length  # the edge tile ends at the edge
    assert all(position % ALIGN == 0 for position in axis.positions)
    assert axis.tile % ALIGN == 0
    for previous, current in itertools.pairwise(axis.positions):
        assert current - previous > 0
        assert previous + axis.tile - current >= overlap  # at least the asked overlap
    # The cells partition the axis, each inside its own tile, on the 4-px grid.
    assert axis.cells[0][0] == 0 and axis.cells[-1][1] == length
    for (_, end), (start, _) in itertools.pairwise(axis.cells):
        assert end == start and start % ALIGN == 0
    for position, (start, end) in zip(axis.positions, axis.cells, strict=True):
        assert position <= start < end <= position + axis.tile


@pytest.mark.parametrize("feather", [0, 16, 32])
@pytest.mark.parametrize("length", [256, 516, 1000, 2048])
def test_weights_sum_to_one_and_ramp_only_inside_overlaps(length, feather):
    axis = plan_axis(length, 256, 64)
    total = np.zeros(length)
    for position, weight in zip(axis.positions, axis.weights(length, feather), strict=True):
        assert weight.shape == (axis.tile,) and weight.min() >= 0 and weight.max() <= 1
        total[position : position + axis.tile] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # Away from the boundaries a pixel is its own cell's tile's alone (exactly 1).
    for position, weight, (start, end) in zip(
        axis.positions, axis.weights(length, feather), axis.cells, strict=True
    ):
        inner = weight[start - position + feather : end - position - feather]
        assert (inner == 1.0).all()


def test_plan_tiles_counts_and_cells():
    plan = plan_tiles(1364, 2048, 512, 64)
    assert plan.tile_shape == (512, 512)
    assert plan.count == len(plan.rows.positions) * len(plan.cols.positions) == 3 * 5
    covered = np.zeros((1364, 2048), np.int32)
    for row, col, top, left in plan.tiles():
        y0, y1, x0, x1 = plan.cell(row, col)
        covered[top + y0 : top + y1, left + x0 : left + x1] += 1
    assert (covered == 1).all()  # the cells count every pixel exactly once


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(258, 256, 64), (256, 254, 64), (512, 256, 130), (512, 256, 6), (1020, 512, 4)],
)
def test_bad_geometry_is_refused(length, tile, overlap):
    with pytest.raises(ValueError):
        plan_axis(length, tile, overlap)


def test_shrink_box_filters_to_the_pixel_budget():
    rgb = np.random.default_rng(0).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)
    small = shrink(rgb, 100_000)
    factor = math.ceil(math.sqrt(1000 * 1500 / 100_000))
    assert small.shape == (1000 // factor // 4 * 4, 1500 // factor // 4 * 4, 3)
    assert small.shape[0] * small.shape[1] <= 100_000
    expected = rgb[:factor, :factor].astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_allclose(small[0, 0], np.rint(expected), atol=0.5)
    assert shrink(rgb, 1500 * 1000) is rgb


# --- the blend -------------------------------------------------------------------------------


def _offset_tiles(feather: int) -> tuple[np.ndarray, np.ndarray]:
    """A picture through an affine 'model' whose every tile is off by its own constant (as
    tiles that disagree are): the output and the same picture without the offsets."""
    module = nn.Sequential(nn.GroupNorm(1, 3))
    tiled = TiledGenerator(module)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (384, 640, 3), dtype=np.uint8)
    offsets = itertools.cycle([-0.2, 0.2, 0.05, -0.1, 0.15])
    state = {"offset": True}

    def forward(batch: torch.Tensor) -> torch.Tensor:
        out = tiled.module(batch)
        if state["offset"] and batch.shape[-1] == 256:  # only the output pass's tiles
            out = out + torch.tensor([next(offsets) for _ in range(len(out))]).view(-1, 1, 1, 1)
        return out

    def decode(batch: torch.Tensor) -> list[np.ndarray]:
        return [array.permute(1, 2, 0).numpy() for array in batch]

    def run() -> np.ndarray:
        out = np.zeros(rgb.shape, np.float32)
        settings = TileSettings(tile=256, overlap=64, feather=feather, stats_pixels=64 * 64)
        for _ in tiled.steps(rgb, forward, tensors.to_model_batch, decode, settings, out):
            pass
        return out

    shifted = run()
    state["offset"] = False
    return shifted, run()


def test_blend_turns_tile_disagreement_into_a_ramp_where_hard_cuts_show_seams():
    """Remove the blend (a hard cut at the cell boundary) and the seam is the full step
    between two tiles' outputs; the ramp spreads it over `feather` px."""
    plan = plan_tiles(384, 640, 256, 64)
    cuts = [start for start, _ in plan.cols.cells[1:]]

    def worst_seam(feather: int) -> float:
        shifted, clean = _offset_tiles(feather)
        error = (shifted - clean)[..., 0]
        jumps = np.abs(np.diff(error, axis=1))
        return float(
            max(jumps[:, cut - feather // 2 - 1 : cut + feather // 2 + 1].max() for cut in cuts)
        )

    hard, blended = worst_seam(0), worst_seam(32)
    assert hard >= 0.1  # neighbouring tiles differ by 0.1..0.4
    assert blended <= hard / 16  # the same step over 32 px


def test_weights_of_agreeing_tiles_reproduce_the_picture():
    module = nn.Sequential(nn.GroupNorm(1, 3))
    tiled = TiledGenerator(module)
    rgb = np.random.default_rng(2).integers(0, 256, (296, 516, 3), dtype=np.uint8)
    out = np.zeros_like(rgb)
    settings = TileSettings(tile=128, overlap=32, stats_pixels=rgb.shape[0] * rgb.shape[1])
    steps = tiled.steps(
        rgb, tiled.module, tensors.to_model_batch, tensors.from_model_batch, settings, out
    )
    assert sum(1 for _ in steps) == 1 + plan_tiles(296, 516, 128, 32).count
    assert step_count(296, 516, settings) == 1 + plan_tiles(296, 516, 128, 32).count


@pytest.mark.parametrize("batch", [1, 3, 4])  # 4: 6 columns make 2 output steps a row
def test_step_count_matches_the_steps_taken_with_a_shrunk_copy(batch):
    module = nn.Sequential(nn.GroupNorm(1, 3))
    tiled = TiledGenerator(module)
    rgb = np.random.default_rng(3).integers(0, 256, (300, 520, 3), dtype=np.uint8)
    out = np.zeros_like(rgb)
    settings = TileSettings(tile=128, overlap=32, batch=batch, stats_pixels=64 * 64)
    steps = tiled.steps(
        rgb, tiled.module, tensors.to_model_batch, tensors.from_model_batch, settings, out
    )
    assert sum(1 for _ in steps) == step_count(300, 520, settings)
    whole = tensors.from_model_batch(module(tensors.to_model_batch([rgb])))[0]
    assert np.abs(out.astype(int) - whole).max() <= 1


# --- fidelity on real weights and a real photo --------------------------------------------------


@pytest.fixture(scope="module")
def parity_state() -> dict[str, torch.Tensor]:
    data = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in data["state_dict"].items()}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(sample_photos()[0]) as image:
        return np.asarray(image.convert("RGB").resize((768, 512), Image.Resampling.LANCZOS))


@pytest.mark.parametrize("align_corners", [True, False])
def test_tiled_matches_whole_on_real_weights(parity_state, photo, align_corners):
    runtime = select_runtime("cpu", "fp32")
    generator = load_generator(parity_state, align_corners=align_corners)
    whole = tensors.from_model_batch(
        StyleModel(generator, runtime)(tensors.to_model_batch([photo]))
    )[0]
    tiled = TiledGenerator(generator)
    model = StyleModel(tiled.module, runtime)
    out = np.zeros_like(photo)
    # The statistics proxy at half the sides, as a 2048 px picture's would be at 1024.
    settings = TileSettings(tile=256, overlap=64, stats_pixels=384 * 256)
    for _ in tiled.steps(
        photo, model, tensors.to_model_batch, tensors.from_model_batch, settings, out
    ):
        pass
    assert out.shape == whole.shape
    assert psnr(out, whole) >= MIN_PSNR_DB


def test_the_picture_upsample_works_on_the_activations_device():
    """Its positions are worked out on the CPU; on a GPU the activations are not there (a
    face style's tiled picture failed on every CUDA run). Torch's meta device stands in."""
    x = torch.zeros(1, 3, 8, 8, device="meta")
    assert _upsample_axis(x, 2, 0, 16, 32).shape == (1, 3, 16, 8)
