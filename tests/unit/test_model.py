"""serve_app.model: parity with the reference generator, runtimes, bf16 quality."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.model import generator as model
from serve_app.model.generator import (
    Generator,
    StyleModel,
    cpu_supports_bf16,
    load_generator,
    random_generator,
    select_runtime,
)
from tests.support.pictures import sample_photos

FIXTURE = Path(__file__).parents[1] / "fixtures" / "generator_parity.pt"
BF16_MIN_PSNR_DB = 40.0


@pytest.fixture(scope="module")
def parity() -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    data = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    return {
        "state_dict": {k: v.float() for k, v in data["state_dict"].items()},
        "input": data["input"].float(),
        True: data["output_align_corners_true"].float(),
        False: data["output_align_corners_false"].float(),
    }


# --- the generator -------------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [True, False])
def test_parity_with_reference(parity, align_corners):
    generator = load_generator(parity["state_dict"], align_corners=align_corners).eval()
    assert parity["input"].shape == (2, 3, 64, 96)
    with torch.inference_mode():
        out = generator(parity["input"])
    expected = parity[align_corners]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= 1e-5


def test_strict_loading_rejects_missing_and_extra_keys(parity):
    state = parity["state_dict"]
    missing = dict(state)
    missing.pop("out_layer.0.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_generator(missing)
    extra = dict(state, **{"block_z.0.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_generator(extra)


def test_random_generator_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a, b, c = random_generator(3), random_generator(3), random_generator(4)
    assert torch.equal(torch.get_rng_state(), before)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )
    assert random_generator(0, align_corners=False).align_corners is False


# --- runtimes ----------------------------------------------------------------------------


def test_select_runtime_cpu_auto_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = select_runtime("auto", "auto")
    assert auto.device == "cpu"
    assert auto.precision == ("bf16" if cpu_supports_bf16() else "fp32")
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(model, "cpu_supports_bf16", lambda s=supported: s)
        assert select_runtime("cpu", "auto").precision == expected
    monkeypatch.setattr(model, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16"):
        select_runtime("cpu", "bf16")
    fp32 = select_runtime("cpu", "fp32")
    assert (fp32.precision, fp32.autocast_dtype) == ("fp32", None)


def test_select_runtime_refuses_impossible(monkeypatch):
    with pytest.raises(ValueError, match="fp16"):
        select_runtime("cpu", "fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="cuda"):
        select_runtime("cuda", "auto")


def test_style_model_output_shape_dtype_range():
    batch = torch.rand(2, 3, 32, 48) * 2 - 1
    style = StyleModel(random_generator(0), select_runtime("cpu", "fp32"))
    out = style(batch)
    assert out.shape == batch.shape
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert out.min().item() >= -1.0
    assert out.max().item() <= 1.0
    assert torch.isfinite(out).all()


# --- bf16 quality ------------------------------------------------------------------------


def _fit_256(image) -> np.ndarray:
    """Long side 256, both sides multiples of 4, RGB uint8."""
    from PIL import Image

    w, h = image.size
    scale = 256 / max(w, h)
    size = (max(4, round(w * scale / 4) * 4), max(4, round(h * scale / 4) * 4))
    return np.array(image.convert("RGB").resize(size, Image.Resampling.LANCZOS))


def _test_images() -> tuple[str, list[np.ndarray]]:
    from PIL import Image

    paths = sample_photos()[:3]
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(_fit_256(im))
    return str(paths[0].parent), images


def _to_batch(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] tensors, measured on the [0, 1] scale."""
    mse = (((a + 1) / 2 - (b + 1) / 2) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_bf16_matches_fp32(parity):
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16/AMX): the bf16 runtime is refused")
    source, images = _test_images()
    assert images
    state = parity["state_dict"]
    fp32 = StyleModel(load_generator(state), select_runtime("cpu", "fp32"))
    bf16 = StyleModel(load_generator(state), select_runtime("cpu", "bf16"))
    scores = []
    for rgb in images:
        h, w = rgb.shape[:2]
        assert max(h, w) == 256
        assert h % 4 == 0
        assert w % 4 == 0
        batch = _to_batch(rgb)
        scores.append(psnr(bf16(batch), fp32(batch)))
    assert min(scores) >= BF16_MIN_PSNR_DB, f"bf16 PSNR vs fp32 on {source}: {scores}"


def test_generator_class_is_the_one_loaded(parity):
    assert isinstance(load_generator(parity["state_dict"]), Generator)
