"""Tiled inference: a picture too large to run whole goes through the generator in tiles.

Pure torch and numpy: this module knows nothing of serving, weights files or image files.

The picture is cut into equal, overlapping tiles (so tiles batch as real batches), each
tile is run through the generator, and the outputs are blended: across the middle of
each overlap the weight ramps linearly from one tile to the next (the weights of every
pixel sum to 1), and the rest of the overlap is context only. The memory a forward pass
needs then depends on the tile, not on the picture.

Picture-wide statistics. The generator normalises with GroupNorm(num_groups=1): mean and
variance over the whole (C, H, W) of a picture. A tile normalised with its own statistics
shifts in colour and contrast against its neighbours (28 dB PSNR against the whole
picture on the parity weights). So every norm layer runs with statistics frozen to
estimates of the whole picture's, gathered before the output pass:

- every layer's from a proxy: the picture shrunk (box filter) to at most
  ``stats_pixels`` and run whole; deep layers' statistics barely depend on resolution;
- the first norm layer's exactly, from the full-resolution tiles: its input is the
  first convolution of the picture, which depends on no other norm, and it is the layer
  whose statistics the shrinking changes most (pixel-level variance). The pass over the
  tiles stops right after that layer, so it costs a few percent of a forward pass.

Measured on the parity weights and a real photo at 768x512, tile 256, overlap 64
(whole-picture output as the reference): per-tile statistics 28.7 dB; statistics
gathered over the tiles' cells in a pass with per-tile normalisation 38.6 dB (one more
such pass with those frozen diverges to 18 dB: errors compound layer over layer); the
proxy alone 44.7 / 38.8 dB (shrunk 2x / 4x); the proxy plus the exact first layer
54.9 / 50.1 / 47.3 dB (shrunk 2x / 4x / 8x); exact statistics 74.6 dB.

Longer than most modules, on purpose: the tile plan, the statistics and the blend are one
algorithm whose parts only make sense together.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALIGN = 4
"""Tile origins and sides are multiples of 4: the generator's two stride-2 stages then see
the same sampling grid in a tile as in the whole picture."""

Box = tuple[int, int, int, int]  # top, bottom, left, right (bottom and right exclusive)


# --- geometry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """How one side of the picture is cut: tile origins, the tile side and each tile's cell."""

    positions: tuple[int, ...]
    tile: int  # the tile's side along this axis (the picture's side if it fits in one tile)
    cells: tuple[tuple[int, int], ...]  # the part of the picture each tile owns

    def weights(self, length: int, feather: int) -> list[np.ndarray]:
        """Each tile's 1-D blend weight; at every pixel the tiles' weights sum to 1.

        Across each cell boundary the weight ramps linearly from one tile to the next
        over ``feather`` px centred on the boundary; outside the ramps a pixel belongs
        to its own cell's tile alone. The rest of the overlap is halo: context the
        generator needs, never blended in, because a tile's outputs near its border
        (reflection-padded, cut off from its neighbours) are its least accurate.
        ``feather=0`` cuts hard at the boundaries.
        """
        centres = np.arange(length, dtype=np.float64) + 0.5
        ramps = [
            np.clip((centres - (start - feather / 2)) / feather, 0.0, 1.0)
            if feather
            else (centres >= start).astype(np.float64)
            for start, _ in self.cells[1:]
        ]
        weights = []
        for index, start in enumerate(self.positions):
            weight = np.ones(length, np.float64)
            if index > 0:
                weight *= ramps[index - 1]
            if index + 1 < len(self.positions):
                weight *= 1.0 - ramps[index]
            weights.append(weight[start : start + self.tile].astype(np.float32))
        return weights


def _floor_align(value: float) -> int:
    return int(value // ALIGN) * ALIGN


def plan_axis(length: int, tile: int, overlap: int) -> Axis:
    """Tile origins along a side of ``length`` px: as few tiles as keep every overlap at
    least ``overlap`` px, spread evenly, origins on multiples of 4."""
    if length % ALIGN or tile % ALIGN or overlap % ALIGN:
        raise ValueError(f"length, tile and overlap must be multiples of {ALIGN}")
    if not 0 <= overlap <= tile // 2:
        raise ValueError("overlap must be between 0 and half the tile")
    if 0 < overlap < 2 * ALIGN:  # the boundary's ramp would reach past the next tile's edge
        raise ValueError(f"overlap must be 0 or at least {2 * ALIGN}")
    if length <= tile:
        return Axis(positions=(0,), tile=length, cells=((0, length),))
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    positions = tuple(sorted({round(i * span / (count - 1) / ALIGN) * ALIGN for i in range(count)}))
    # Cell boundaries sit in the middle of each overlap (on the 4-px grid).
    bounds = [0]
    for previous, current in itertools.pairwise(positions):
        bounds.append(_floor_align((current + previous + tile) / 2))
    bounds.append(length)
    cells = tuple(itertools.pairwise(bounds))
    return Axis(positions=positions, tile=tile, cells=cells)


@dataclass(frozen=True)
class TilePlan:
    """Every tile of one picture: where it lies, the cell it owns, and its blend weight."""

    height: int
    width: int
    rows: Axis
    cols: Axis

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.tile, self.cols.tile

    @property
    def count(self) -> int:
        return len(self.rows.positions) * len(self.cols.positions)

    def tiles(self) -> Iterator[tuple[int, int, int, int]]:
        """(row index, column index, top, left) of every tile, row by row."""
        for row, top in enumerate(self.rows.positions):
            for col, left in enumerate(self.cols.positions):
                yield row, col, top, left

    def cell(self, row: int, col: int) -> Box:
        """The cell tile (row, col) owns, in the tile's own coordinates."""
        (top, bottom), (left, right) = self.rows.cells[row], self.cols.cells[col]
        y0, x0 = self.rows.positions[row], self.cols.positions[col]
        return top - y0, bottom - y0, left - x0, right - x0


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TilePlan:
    return TilePlan(
        height=height,
        width=width,
        rows=plan_axis(height, tile, overlap),
        cols=plan_axis(width, tile, overlap),
    )


# --- norms with picture-wide statistics ----------------------------------------------------


class _StopForward(Exception):
    """Ends a forward pass once the statistics it was run for are gathered."""


class _NormState:
    """What the norm layers of one tiled generator do in the current pass."""

    def __init__(self, layers: int):
        self.layers = layers
        self.stop_after: int | None = None  # end the pass after this layer has collected
        self.frozen: list[tuple[float, float]] | None = None  # (mean, var) per layer
        self.cells: list[Box] | None = None  # per sample of the batch, while collecting
        self.origins: list[tuple[int, int]] = []  # (top, left) per sample of the batch
        self.picture = (0, 0)  # the whole picture's (height, width)
        self.tile_height = 0
        self.reset()

    def reset(self) -> None:
        # Per layer: count, mean and sum of squared deviations (combined in float64).
        self.sums = [(0, 0.0, 0.0) for _ in range(self.layers)]

    def add(self, index: int, count: int, mean: float, m2: float) -> None:
        total, total_mean, total_m2 = self.sums[index]
        combined = total + count
        delta = mean - total_mean
        self.sums[index] = (
            combined,
            total_mean + delta * count / combined,
            total_m2 + m2 + delta * delta * total * count / combined,
        )

    def statistics(self, layers: int | None = None) -> list[tuple[float, float]]:
        sums = self.sums[:layers]
        if any(count == 0 for count, _, _ in sums):
            raise RuntimeError("a norm layer saw no pixel in a statistics pass")
        return [(mean, m2 / count) for count, mean, m2 in sums]


class PictureNorm(nn.Module):
    """GroupNorm(1 group) whose statistics can be the whole picture's instead of the tile's."""

    def __init__(self, norm: nn.GroupNorm, index: int, state: _NormState):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.index = index
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.cells is not None:
            self._collect(x)
            if state.stop_after == self.index:
                raise _StopForward
        if state.frozen is None:
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        mean, var = state.frozen[self.index]
        scale = self.weight.float() / math.sqrt(var + self.eps)
        shift = self.bias.float() - mean * scale
        # One fused pass over the activations (a multiply then an add would make two).
        return torch.addcmul(shift.view(1, -1, 1, 1), x.float(), scale.view(1, -1, 1, 1))

    def _collect(self, x: torch.Tensor) -> None:
        factor = self.state.tile_height // x.shape[-2]
        for sample, (top, bottom, left, right) in zip(x, self.state.cells, strict=True):
            cell = sample[:, top // factor : bottom // factor, left // factor : right // factor]
            var, mean = torch.var_mean(cell.float(), correction=0)
            count = cell.numel()
            self.state.add(self.index, count, float(mean), float(var) * count)


def _picture_upsample(state: _NormState) -> Callable[[torch.Tensor, torch.Size], torch.Tensor]:
    """Bilinear upsampling with ``align_corners=True`` on the whole picture's grid.

    With align_corners the sampling positions depend on the whole input's size
    (``dst * (in - 1) / (out - 1)``), so a tile upsampled on its own drifts by up to half
    a low-resolution pixel against the whole picture; this samples each tile where the
    whole picture would.
    """

    def upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        out_h, out_w = int(size[0]), int(size[1])
        factor = state.tile_height // out_h  # the output's scale: 1 (full) or 2 (half)
        height, width = state.picture
        rows = []
        for sample, (top, left) in zip(x.contiguous(), state.origins, strict=True):
            # Gathering whole rows of a contiguous (C, H, W) tensor is a fast copy, so the
            # second axis is resampled as rows of the transposed tensor.
            sample = _upsample_axis(sample, 1, top // factor, out_h, height // factor)
            sample = sample.transpose(1, 2).contiguous()
            sample = _upsample_axis(sample, 1, left // factor, out_w, width // factor)
            rows.append(sample.transpose(1, 2))
        result = torch.stack(rows)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return result.contiguous(memory_format=torch.channels_last)
        return result

    return upsample


def _upsample_axis(x: torch.Tensor, dim: int, origin: int, out: int, total: int) -> torch.Tensor:
    """Resample ``x`` along ``dim`` from a tile of a picture ``total // 2`` px long (origin
    ``origin // 2``) to ``out`` px from ``origin`` of the picture ``total`` px long."""
    total_in, origin_in, size_in = total // 2, origin // 2, x.shape[dim]
    scale = (total_in - 1) / (total - 1)
    position = torch.arange(origin, origin + out, dtype=torch.float64) * scale - origin_in
    position = position.clamp(0, size_in - 1)
    low = position.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = (position - low).to(x.dtype)
    # Worked out on the CPU (float64: not every device has it), then moved beside ``x``.
    low, high, frac = low.to(x.device), high.to(x.device), frac.to(x.device)
    shape = [1] * x.ndim
    shape[dim] = out
    frac = frac.view(shape)
    return torch.lerp(x.index_select(dim, low), x.index_select(dim, high), frac)


def picture_norm_generator(generator: nn.Module) -> tuple[nn.Module, _NormState]:
    """A copy of ``generator`` whose GroupNorm(1) layers the tiler controls (weights shared
    in value, not in storage: the copy is the generator's size, about 8.6 MB)."""
    tiled = copy.deepcopy(generator).eval().requires_grad_(False)
    norms = [
        (name, module)
        for name, module in tiled.named_modules()
        if isinstance(module, nn.GroupNorm) and module.num_groups == 1
    ]
    state = _NormState(len(norms))
    for index, (name, module) in enumerate(norms):
        parent_name, _, child = name.rpartition(".")
        parent = tiled.get_submodule(parent_name) if parent_name else tiled
        setattr(parent, child, PictureNorm(module, index, state))
    # The AnimeGANv2 generator's upsampling hook; with align_corners=False it upsamples by
    # a fixed factor of 2, which is the same on a tile (origins on the 4-px grid) as whole.
    if getattr(tiled, "align_corners", False) and hasattr(tiled, "_upsample"):
        tiled._upsample = _picture_upsample(state)
    return tiled, state


# --- the tiler -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSettings:
    tile: int = 512
    overlap: int = 64
    batch: int = 1  # tiles per forward pass
    stats_pixels: int = 512 * 512  # the statistics proxy's largest width x height
    feather: int | None = None  # blend ramp width, px; None: half the overlap; 0: hard cuts

    @property
    def ramp(self) -> int:
        return self.overlap // 2 if self.feather is None else self.feather


Encode = Callable[[Sequence[np.ndarray]], torch.Tensor]
Decode = Callable[[torch.Tensor], list[np.ndarray]]


class TiledGenerator:
    """Runs pictures through a generator tile by tile, with picture-wide norm statistics.

    ``forward`` receives the model input batch of the copy made here (``module``): the
    caller places ``module`` on its device and precision and hands back a callable that
    runs it. ``encode``/``decode`` turn uint8 (H, W, 3) arrays into model batches and
    model output back into arrays (the caller's own, so that tiled and whole pictures
    share their arithmetic).
    """

    def __init__(self, generator: nn.Module):
        self.module, self._state = picture_norm_generator(generator)

    def steps(
        self,
        rgb: np.ndarray,
        forward: Callable[[torch.Tensor], torch.Tensor],
        encode: Encode,
        decode: Decode,
        settings: TileSettings,
        out: np.ndarray,
    ) -> Iterator[None]:
        """Stylize ``rgb`` into ``out`` one forward pass per step.

        A generator, so that the caller decides what runs between two passes (other
        work, or stopping: abandoning it leaves ``out`` incomplete and the norms reset).
        """
        height, width, _ = rgb.shape
        if out.shape != rgb.shape:
            raise ValueError(f"out must have the picture's shape {rgb.shape}, not {out.shape}")
        plan = plan_tiles(height, width, settings.tile, settings.overlap)
        state = self._state
        try:
            proxy = shrink(rgb, settings.stats_pixels)
            statistics = self._collect_whole(proxy, forward, encode)
            yield
            if proxy.shape != rgb.shape:
                state.reset()
                state.stop_after = 0
                yield from self._collect_tiles(rgb, plan, forward, encode, settings.batch)
                statistics[0] = state.statistics(layers=1)[0]
                state.stop_after = None
            state.frozen = statistics
            state.tile_height = plan.tile_shape[0]
            state.picture = (height, width)
            yield from self._output_pass(rgb, plan, forward, encode, decode, settings, out)
        finally:
            state.cells = None
            state.frozen = None
            state.stop_after = None

    def _collect_whole(
        self, rgb: np.ndarray, forward: Callable[[torch.Tensor], torch.Tensor], encode: Encode
    ) -> list[tuple[float, float]]:
        """Every norm layer's statistics of ``rgb`` run whole."""
        state = self._state
        height, width, _ = rgb.shape
        state.reset()
        state.tile_height, state.picture, state.origins = height, (height, width), [(0, 0)]
        state.cells = [(0, height, 0, width)]
        try:
            forward(encode([rgb]))
        finally:
            state.cells = None
        return state.statistics()

    def _collect_tiles(
        self,
        rgb: np.ndarray,
        plan: TilePlan,
        forward: Callable[[torch.Tensor], torch.Tensor],
        encode: Encode,
        batch: int,
    ) -> Iterator[None]:
        """Add every tile's cell to the statistics, up to the layer ``stop_after``."""
        state = self._state
        state.tile_height, state.picture = plan.tile_shape[0], (plan.height, plan.width)
        for chunk in _chunks(list(plan.tiles()), batch):
            state.cells = [plan.cell(row, col) for row, col, _, _ in chunk]
            state.origins = [(top, left) for _, _, top, left in chunk]
            try:
                forward(encode([_crop(rgb, plan, top, left) for _, _, top, left in chunk]))
            except _StopForward:
                pass
            finally:
                state.cells = None
            yield

    def _output_pass(
        self,
        rgb: np.ndarray,
        plan: TilePlan,
        forward: Callable[[torch.Tensor], torch.Tensor],
        encode: Encode,
        decode: Decode,
        settings: TileSettings,
        out: np.ndarray,
    ) -> Iterator[None]:
        # Only a band of tile rows is held in float: rows above the next tile row's top
        # are final once a tile row is done, and are decoded into ``out`` at once.
        tile_h, tile_w = plan.tile_shape
        row_weights = plan.rows.weights(plan.height, settings.ramp)
        col_weights = plan.cols.weights(plan.width, settings.ramp)
        positions = plan.rows.positions
        band_top = 0
        band = torch.zeros((1, 3, tile_h, plan.width), dtype=torch.float32)
        for row, top in enumerate(positions):
            if top > band_top:  # shift the band down to start at this row's top
                band = _shift_band(band, top - band_top, out, band_top, decode)
                band_top = top
            needed = top + tile_h - band_top
            if band.shape[2] < needed:
                band = torch.cat(
                    [band, torch.zeros((1, 3, needed - band.shape[2], plan.width))], dim=2
                )
            tiles = [(col, left) for col, left in enumerate(plan.cols.positions)]
            for chunk in _chunks(tiles, settings.batch):
                self._state.origins = [(top, left) for _, left in chunk]
                result = forward(encode([_crop(rgb, plan, top, left) for _, left in chunk]))
                for (col, left), tile_out in zip(chunk, result.float(), strict=True):
                    weight = torch.from_numpy(np.outer(row_weights[row], col_weights[col]))
                    band[0, :, top - band_top : top - band_top + tile_h, left : left + tile_w] += (
                        tile_out * weight
                    )
                yield
        _flush(band, out, band_top, plan.height - band_top, decode)


def step_count(height: int, width: int, settings: TileSettings) -> int:
    """How many steps ``TiledGenerator.steps`` takes for a picture of this size: the
    shrunk copy's pass, the first layer's pass over the tiles (when the copy is shrunk:
    ``batch`` tiles a step), the output pass (``batch`` tiles of one row a step)."""
    plan = plan_tiles(height, width, settings.tile, settings.overlap)
    output_passes = len(plan.rows.positions) * math.ceil(len(plan.cols.positions) / settings.batch)
    shrunk = _shrink_factor(height, width, settings.stats_pixels) > 1
    return 1 + (math.ceil(plan.count / settings.batch) if shrunk else 0) + output_passes


def _shrink_factor(height: int, width: int, max_pixels: int) -> int:
    return max(1, math.ceil(math.sqrt(height * width / max_pixels)))


def shrink(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """``rgb`` box-filtered by the smallest whole factor that brings it to at most
    ``max_pixels`` (sides cut to multiples of 4; a few border pixels may be dropped),
    a band of rows at a time so that no float copy of the whole picture is made.
    ``rgb`` itself when it is small enough."""
    height, width, channels = rgb.shape
    factor = _shrink_factor(height, width, max_pixels)
    if factor == 1:
        return rgb
    out_h = max(ALIGN, height // factor // ALIGN * ALIGN)
    out_w = max(ALIGN, width // factor // ALIGN * ALIGN)
    out = np.empty((out_h, out_w, channels), np.uint8)
    band = max(1, 256 // factor)
    for top in range(0, out_h, band):
        rows = min(band, out_h - top)
        block = rgb[top * factor : (top + rows) * factor, : out_w * factor].astype(np.float32)
        block = block.reshape(rows, factor, out_w, factor, channels).mean(axis=(1, 3))
        out[top : top + rows] = np.clip(np.rint(block), 0, 255).astype(np.uint8)
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _crop(rgb: np.ndarray, plan: TilePlan, top: int, left: int) -> np.ndarray:
    tile_h, tile_w = plan.tile_shape
    return rgb[top : top + tile_h, left : left + tile_w]


def _flush(band: torch.Tensor, out: np.ndarray, band_top: int, rows: int, decode: Decode) -> None:
    if rows > 0:
        out[band_top : band_top + rows] = decode(band[:, :, :rows])[0]


def _shift_band(
    band: torch.Tensor, rows: int, out: np.ndarray, band_top: int, decode: Decode
) -> torch.Tensor:
    _flush(band, out, band_top, rows, decode)
    kept = band[:, :, rows:]
    return torch.cat([kept, torch.zeros((1, 3, rows, band.shape[3]))], dim=2)
