"""Pictures to model tensors and back, with the official AnimeGANv2 script's arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from serve_app.imaging.pixels import check_rgb


def to_model_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack equal-shape (H, W, 3) uint8 arrays into an (N, 3, H, W) float32 batch in [-1, 1].

    The arithmetic is the official AnimeGANv2 script's: torchvision's to_tensor
    (``x.float().div(255)``) then ``* 2 - 1``, so outputs match it bit for bit.
    """
    if not images:
        raise ValueError("to_model_batch needs at least one image.")
    shape = images[0].shape
    for index, array in enumerate(images):
        check_rgb(array, f"image {index}")
        if array.shape != shape:
            raise ValueError(
                f"All images in a batch must have one shape: image 0 is {shape}, "
                f"image {index} is {array.shape}."
            )
    # One uint8 copy (needed to make one block of N images, and it also makes
    # read-only arrays from Pillow or Ray safe for torch), then one float copy that
    # also moves channels first; the rest happens in place.
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    batch = stacked.to(torch.float32, memory_format=torch.contiguous_format)
    return batch.div_(255).mul_(2).sub_(1)


def from_model_batch(batch: torch.Tensor) -> list[np.ndarray]:
    """Turn generator output (N, 3, H, W), any float dtype, into (H, W, 3) uint8 arrays.

    Exactly the official script's post-processing: ``clip(-1, 1) * 0.5 + 0.5``, then
    torchvision's to_pil_image. The arrays are views into one block.
    """
    if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
        raise ValueError(
            f"Expected a floating (N, 3, H, W) tensor, got {tuple(batch.shape)} {batch.dtype}."
        )
    # Computed where the tensor lives (these element-wise ops round the same on every
    # device) so that only uint8 data, a quarter of the float size, is copied back.
    pixels = batch.detach().float().clip(-1, 1)
    pixels.mul_(0.5).add_(0.5)
    # Truncation, not rounding: to_pil_image does mul(255).byte(), and matching the
    # reference output exactly matters more than the half-level it costs on average.
    pixels = pixels.mul_(255).byte()
    hwc = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return list(hwc)
