"""Unit tests for serve_app.tensors: pictures to model tensors and back."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.config import ImageLimits
from serve_app.imaging.decode import decode_upload
from serve_app.model.tensors import from_model_batch, to_model_batch


def _reference_pre(pixels: np.ndarray) -> torch.Tensor:
    """The official script: to_tensor(image).unsqueeze(0) * 2 - 1."""
    to_tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
    return to_tensor.to(torch.float32).div(255).unsqueeze(0) * 2 - 1


def _reference_post(output: torch.Tensor) -> np.ndarray:
    """The official script: clip(-1, 1) * 0.5 + 0.5, then to_pil_image."""
    out = output.squeeze(0).clip(-1, 1) * 0.5 + 0.5
    return np.transpose(out.mul(255).byte().numpy(), (1, 2, 0))


def test_to_model_batch_matches_the_reference() -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (8, 12, 3), np.uint8) for _ in range(3)]
    batch = to_model_batch(images)
    assert batch.shape == (3, 3, 8, 12) and batch.dtype == torch.float32
    assert batch.is_contiguous()
    assert batch.min() >= -1 and batch.max() <= 1
    for index, image in enumerate(images):
        assert torch.equal(batch[index], _reference_pre(image)[0])
    extremes = to_model_batch([np.array([[[0, 255, 0]]], np.uint8)])
    assert extremes.flatten().tolist() == [-1.0, 1.0, -1.0]


def test_to_model_batch_accepts_read_only_arrays_without_warnings() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 60)).save(buffer, "PNG")
    decoded = decode_upload(buffer.getvalue(), ImageLimits())
    assert not decoded.rgb.flags.writeable  # how Pillow (and Ray) hand arrays over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = to_model_batch([decoded.rgb])
    assert batch.shape == (1, 3, 24, 32)


@pytest.mark.parametrize(
    "images",
    [
        [],
        [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 12, 3), np.uint8)],
        [np.zeros((8, 8, 4), np.uint8)],
        [np.zeros((8, 8, 3), np.float32)],
        [np.zeros((8, 8), np.uint8)],
    ],
    ids=["empty", "mismatched", "rgba", "float", "gray"],
)
def test_to_model_batch_rejects_bad_input(images) -> None:
    with pytest.raises(ValueError):
        to_model_batch(images)


def test_from_model_batch_matches_the_reference() -> None:
    output = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(5)) * 1.5
    images = from_model_batch(output)
    assert len(images) == 2
    for index, image in enumerate(images):
        assert image.shape == (8, 12, 3) and image.dtype == np.uint8
        assert image.flags.c_contiguous
        assert np.array_equal(image, _reference_post(output[index : index + 1]))


def test_from_model_batch_clips_and_truncates() -> None:
    values = torch.tensor([-5.0, -1.0, 0.0, 0.999, 1.0, 7.0]).reshape(1, 1, 1, 6)
    image = from_model_batch(values.expand(1, 3, 1, 6))[0]
    # 0.0 → 127.5 → 127 and 0.999 → 254.87 → 254: truncated like to_pil_image.
    assert image[0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_from_model_batch_other_float_dtypes(dtype: torch.dtype) -> None:
    output = torch.linspace(-1, 1, 3 * 4 * 4).reshape(1, 3, 4, 4).to(dtype)
    expected = _reference_post(output.float())
    assert np.array_equal(from_model_batch(output)[0], expected)


@pytest.mark.parametrize(
    "batch",
    [torch.zeros(3, 4, 4), torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.uint8)],
    ids=["3d", "4-channels", "integer"],
)
def test_from_model_batch_rejects_bad_input(batch: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        from_model_batch(batch)


def test_model_batch_round_trip_follows_the_reference() -> None:
    """Every uint8 value through x/255*2-1 and back through (y*0.5+0.5)*255, truncated.

    Finding: 0 and 64..255 come back exactly; 1..63 come back one lower. In float32,
    x/255*2-1 for small x sits near -1, where the spacing of floats is 2**-24; adding
    1 then halving does not restore x/255 exactly, and the result lands just under x,
    which truncation (not rounding) turns into x-1. The reference script does the same,
    so this matches it rather than fixing it.
    """
    values = np.arange(256, dtype=np.uint8)
    pixels = np.repeat(values[:, None, None], 3, axis=2).reshape(16, 16, 3)
    round_trip = from_model_batch(to_model_batch([pixels]))[0]
    assert np.array_equal(round_trip, _reference_post(_reference_pre(pixels)))
    back = round_trip[..., 0].ravel().astype(int)
    assert np.array_equal(back[64:], values[64:])
    assert back[0] == 0
    assert np.array_equal(back[1:64], values[1:64].astype(int) - 1)
