"""Frames alike enough to share one stylized picture.

A still shot is rarely a run of identical frames: a lossy codec refines the picture for a
few frames, a phone's sensor adds fresh noise to each one, so frames that look the same
differ by a few levels and the digest dedup of ``frames`` misses them. A frame within
``MIN_TILE_PSNR_DB`` of the last frame whose picture was computed for it (the *anchor*)
takes the anchor's picture instead of a model pass.

The likeness is the PSNR of the worst ``TILE``-pixel square of the two resized frames,
not of the whole frame: a change confined to a corner (a hand, a subtitle, a blinking
light) barely moves a whole frame's PSNR but drops its own tile's far below the bound,
so the frame is computed. Frames are compared with the anchor, never with the last frame
that reused it, so a slow pan or fade cannot creep past the bound one small step at a
time: once the picture has moved too far from the anchor, the frame is computed and
becomes the next anchor.

The bound is measured (``python -m load_tests.likeness_bench``): H.264 videos (CRF 23)
of the sample photos held still, with fresh noise, panning, fading or with a small object
crossing, resized to 512 px and stylized by the real generator with two untrained weight
sets (the parity fixture's and seeded random ones: the repository holds no trained
style), 720 frame pairs. Reusing the earlier frame's picture kept the whole output
within 40 dB PSNR of the computed one from an input likeness of 34.7 dB up, and every
32-px square of it from 40.5 dB up; at the 42 dB bound the worst reused picture was
48.4 dB from its own (42.9 dB in its worst square). Still shots with noise up to σ 4
reused every frame; pans and the moving object none, fades one pair in 40. The table is in
docs/jobs.md ("Frames alike").

Cost: one subtraction, square and two sums over the resized frame, about 0.3 ms for a
512×288 frame and 0.4 ms at 512×512 on this project's 2-core machine (the digest takes
0.6 and 1.2 ms); it runs in the job's own thread, next to the digest.
"""

from __future__ import annotations

import math

import numpy as np

TILE = 32
"""Side of the squares compared, px of the resized frame (the last row and column of
squares take the remainder, so every pixel counts)."""
MIN_TILE_PSNR_DB = 42.0
"""A frame whose every tile is at least this close to the anchor's reuses its picture."""
_PEAK = 255.0


def worst_tile_mse(a: np.ndarray, b: np.ndarray, tile: int = TILE) -> float:
    """The largest mean squared error of any ``tile``-px square of two equal-shape
    (H, W, 3) uint8 frames."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"frames of one (H, W, C) shape are compared, got {a.shape} {b.shape}")
    height, width, channels = a.shape
    # |a - b| <= 255, so its square fits uint16: two in-place passes, no wide copies.
    diff = np.subtract(a, b, dtype=np.int16)
    np.abs(diff, out=diff)
    squared = diff.view(np.uint16).reshape(height, width * channels)
    np.multiply(squared, squared, out=squared)
    rows, row_sizes = _split(height, tile)
    cols, col_sizes = _split(width, tile)
    bands = np.empty((rows, width * channels), np.uint32)  # a band's column sums
    full_rows = tile * (rows - 1)
    in_bands = squared[:full_rows].reshape(rows - 1, tile, width * channels)
    bands[:-1] = in_bands.sum(axis=1, dtype=np.uint32)
    bands[-1] = squared[full_rows:].sum(axis=0, dtype=np.uint32)
    sums = np.empty((rows, cols), np.uint64)
    full_cols = tile * channels * (cols - 1)
    sums[:, :-1] = bands[:, :full_cols].reshape(rows, cols - 1, tile * channels).sum(axis=2)
    sums[:, -1] = bands[:, full_cols:].sum(axis=1)
    counts = np.outer(row_sizes, col_sizes * channels)
    return float((sums / counts).max())


def worst_tile_psnr(a: np.ndarray, b: np.ndarray, tile: int = TILE) -> float:
    """PSNR (dB) of the least alike ``tile``-px square of two frames; inf when equal."""
    return psnr_of_mse(worst_tile_mse(a, b, tile))


def psnr_of_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(_PEAK**2 / mse)


def _split(length: int, tile: int) -> tuple[int, np.ndarray]:
    """How many squares along a side, and their sizes: ``tile`` each, the last one with
    the remainder (a side shorter than ``tile`` is one square)."""
    count = max(length // tile, 1)
    sizes = np.full(count, tile)
    sizes[-1] = length - tile * (count - 1)
    return count, sizes


class Anchor:
    """The last frame computed for itself, and whether the next frame may reuse its
    picture. Frames are offered in order; one not alike becomes the new anchor."""

    def __init__(self, min_psnr_db: float = MIN_TILE_PSNR_DB) -> None:
        self._max_mse = _PEAK**2 / 10 ** (min_psnr_db / 10)
        self._photo: np.ndarray | None = None

    def alike(self, photo: np.ndarray) -> bool:
        """True: ``photo`` reuses the anchor's picture; False: it is computed, and is the
        anchor from now on."""
        anchor = self._photo
        same_shape = anchor is not None and anchor.shape == photo.shape
        if same_shape and worst_tile_mse(anchor, photo) <= self._max_mse:
            return True
        self._photo = photo
        return False
