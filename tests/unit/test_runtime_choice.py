"""serve_app.runtimes: the rules of `runtime: auto`, and the cast bf16 model's quality."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.model import generator as model
from serve_app.model import runtimes, tensors
from serve_app.model.generator import Runtime, StyleModel, load_generator, runtime_for_kind
from serve_app.model.runtimes import (
    MIN_PSNR_DB,
    Measurement,
    candidate_runtimes,
    choose_runtime,
    make_measure,
    probe_picture,
    psnr_db,
    resolve_runtime,
    runtime_identity,
    to_pixels,
)
from serve_app.model.tiling import TiledGenerator, TileSettings

FIXTURE = Path(__file__).parents[1] / "fixtures" / "generator_parity.pt"
FP32 = Runtime("cpu", "fp32", channels_last=True)
BF16 = Runtime("cpu", "bf16", channels_last=True, cast=True)
BF16_AUTOCAST = Runtime("cpu", "bf16", channels_last=True)
# Built directly, not through runtime_for_kind: on a CPU without native bf16 the cast
# model still computes correctly (emulated, slowly), and its quality is what is tested.
NATIVE_BF16 = model.cpu_supports_bf16()


@pytest.fixture(scope="module")
def parity_state() -> dict[str, torch.Tensor]:
    data = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in data["state_dict"].items()}


def fake(figures: dict[str, tuple[float, float] | Exception]):
    """A measure function answering made-up (img/s, PSNR) per runtime kind."""
    calls: list[str] = []

    def measure(runtime: Runtime) -> Measurement:
        calls.append(runtime.kind)
        answer = figures[runtime.kind]
        if isinstance(answer, Exception):
            raise answer
        return Measurement(*answer)

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


# --- the rules ---------------------------------------------------------------------------


def test_fastest_within_bound_is_chosen():
    measure = fake(
        {"eager-fp32": (4.0, math.inf), "eager-bf16": (7.0, 52.0), "eager-bf16-autocast": (5.6, 52)}
    )
    choice = choose_runtime([FP32, BF16, BF16_AUTOCAST], measure)
    assert choice.runtime == BF16
    assert choice.measured["eager-bf16"] == Measurement(7.0, 52.0)
    assert set(choice.refused) == {"eager-fp32", "eager-bf16-autocast"}
    assert choice.refused["eager-bf16-autocast"] == "not chosen: 5.6 img/s vs 7"
    summary = choice.summary()
    assert summary["chosen"] == "eager-bf16"
    assert summary["measured"]["eager-fp32"] == {"images_per_s": 4.0, "psnr_db": None}


def test_faster_but_below_bound_is_refused():
    measure = fake(
        {"eager-fp32": (4.0, math.inf), "eager-bf16": (9.0, 35.0), "eager-bf16-autocast": (5, 41)}
    )
    choice = choose_runtime([FP32, BF16, BF16_AUTOCAST], measure)
    assert choice.runtime == BF16_AUTOCAST
    assert "35.0 dB < 40 dB" in choice.refused["eager-bf16"]


def test_all_refused_falls_back_to_fp32():
    measure = fake({"eager-fp32": (4.0, math.inf), "eager-bf16": (9.0, 30.0)})
    assert choose_runtime([FP32, BF16], measure).runtime == FP32
    # Even when fp32 eager is not a candidate and its measurement, too, fails.
    broken = fake({"eager-fp32": RuntimeError("boom"), "eager-bf16": (9.0, 39.9)})
    choice = choose_runtime([BF16], broken)
    assert choice.runtime == FP32
    assert choice.reason.startswith("fallback")
    assert choice.refused["eager-fp32"] == "failed: boom"


def test_failing_candidate_is_refused_with_its_error():
    measure = fake({"eager-fp32": (4.0, math.inf), "eager-bf16": RuntimeError("no kernel")})
    choice = choose_runtime([FP32, BF16], measure)
    assert choice.runtime == FP32
    assert choice.refused["eager-bf16"] == "failed: no kernel"


def test_a_tie_within_noise_keeps_the_earlier_candidate():
    measure = fake({"eager-fp32": (4.0, math.inf), "eager-bf16": (4.1, 50.0)})
    assert choose_runtime([FP32, BF16], measure).runtime == FP32


def test_missing_runtime_falls_back_without_measuring(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model, "cpu_supports_bf16", lambda: False)
    candidates, unavailable = candidate_runtimes("auto", "auto")
    assert [c.kind for c in candidates] == ["eager-fp32"]
    assert set(unavailable) == {"eager-bf16", "eager-bf16-autocast"}
    assert all(reason.startswith("unavailable") for reason in unavailable.values())

    def never():
        raise AssertionError("nothing to measure: the weights must not be loaded")

    choice = resolve_runtime("auto", "auto", "auto", never)
    assert choice.runtime.kind == "eager-fp32"
    assert set(choice.refused) == {"eager-bf16", "eager-bf16-autocast"}
    with pytest.raises(ValueError, match="bf16"):
        candidate_runtimes("cpu", "bf16")  # an explicit precision must exist, as before


def test_candidates_follow_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model, "cpu_supports_bf16", lambda: True)
    kinds = [c.kind for c in candidate_runtimes("cpu", "auto")[0]]
    assert kinds == ["eager-fp32", "eager-bf16", "eager-bf16-autocast"]
    assert [c.kind for c in candidate_runtimes("cpu", "fp32")[0]] == ["eager-fp32"]
    with pytest.raises(ValueError, match="fp16"):
        candidate_runtimes("cpu", "fp16")


def test_named_runtime_is_taken_as_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = resolve_runtime("eager-fp32", "auto", "auto", lambda: [])
    assert (choice.runtime, choice.reason) == (FP32, "configured")
    with pytest.raises(ValueError, match="contradicts"):
        resolve_runtime("eager-fp32", "cpu", "bf16", lambda: [])
    with pytest.raises(ValueError, match="CUDA"):
        runtime_for_kind("eager-fp16-autocast", "cpu")
    assert [Runtime("cuda", p, False, c).kind for p, c in (("fp16", False), ("bf16", True))] == [
        "eager-fp16-autocast",
        "eager-bf16",
    ]


# --- the cast bf16 model -----------------------------------------------------------------


def test_style_model_api_unchanged_for_a_cast_runtime(parity_state):
    batch = torch.rand(2, 3, 16, 24) * 2 - 1
    before = batch.clone()
    out = StyleModel(load_generator(parity_state), BF16)(batch)
    assert torch.equal(batch, before)
    assert (out.shape, out.dtype, out.device.type) == (batch.shape, torch.float32, "cpu")
    assert torch.isfinite(out).all()
    assert -1.0 <= out.min().item() <= out.max().item() <= 1.0


@pytest.mark.parametrize("align_corners", [True, False])
def test_cast_bf16_within_bound_on_parity_weights(parity_state, align_corners):
    picture = probe_picture(64)
    generator = load_generator(parity_state, align_corners=align_corners)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.GroupNorm)]
    reference = to_pixels(StyleModel(load_generator(parity_state, align_corners), FP32)(picture))
    cast = StyleModel(generator, BF16)
    assert all(m.weight.dtype == torch.float32 for m in norms)  # trained scales stay exact
    assert psnr_db(to_pixels(cast(picture)), reference) >= MIN_PSNR_DB


def test_tiled_cast_bf16_matches_whole_fp32(parity_state):
    # The tiler's norms hand fp32 activations to the cast convolutions.
    rng = np.random.default_rng(0)
    base = probe_picture(64)[0].permute(1, 2, 0).numpy()
    photo = np.tile(((base + 1) * 127.5).astype(np.uint8), (1, 2, 1))  # 64 x 128
    photo = np.clip(photo + rng.integers(0, 8, photo.shape), 0, 255).astype(np.uint8)
    whole = StyleModel(load_generator(parity_state), FP32)(tensors.to_model_batch([photo]))
    tiled = TiledGenerator(load_generator(parity_state))
    model_ = StyleModel(tiled.module, BF16)
    out = np.zeros_like(photo)
    settings = TileSettings(tile=64, overlap=16, stats_pixels=64 * 128)
    for _ in tiled.steps(
        photo, model_, tensors.to_model_batch, tensors.from_model_batch, settings, out
    ):
        pass
    expected = tensors.from_model_batch(whole)[0]
    assert psnr_db(torch.from_numpy(out), torch.from_numpy(expected)) >= MIN_PSNR_DB


# --- a real measurement on this CPU ------------------------------------------------------


def test_real_measurement_of_fp32(parity_state):
    measure = make_measure([load_generator(parity_state)], side=64, rounds=2)
    figures = measure(FP32)
    assert figures.images_per_s > 0
    assert figures.psnr_db == math.inf


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16: the candidate is skipped")
def test_real_choice_on_a_bf16_cpu(parity_state):
    candidates, unavailable = candidate_runtimes("cpu", "auto")
    assert "eager-bf16" in [c.kind for c in candidates] and not unavailable
    choice = choose_runtime(candidates, make_measure([load_generator(parity_state)]))
    assert choice.measured["eager-bf16"].psnr_db >= MIN_PSNR_DB
    fp32 = choice.measured["eager-fp32"].images_per_s
    if choice.measured["eager-bf16"].images_per_s > fp32 * runtimes.MIN_GAIN:
        assert choice.runtime.kind != "eager-fp32"


def test_runtime_identity_names_the_kind():
    identities = {runtime_identity(r) for r in (FP32, BF16, BF16_AUTOCAST)}
    assert len(identities) == 3  # cast and autocast bf16 round differently: other cache keys
    assert runtime_identity(BF16).startswith("cpu/eager-bf16/nhwc/")


def test_real_choice_between_fp32_and_cast_bf16(parity_state):
    # Forced candidates, so the path runs on any CPU (without native bf16 the cast model
    # is emulated, far slower, and refused for it).
    measure = make_measure([load_generator(parity_state)], side=64, rounds=2)
    choice = choose_runtime([FP32, BF16], measure)
    bf16, fp32 = choice.measured["eager-bf16"], choice.measured["eager-fp32"]
    assert bf16.psnr_db >= MIN_PSNR_DB
    faster = bf16.images_per_s > fp32.images_per_s * runtimes.MIN_GAIN
    assert choice.runtime == (BF16 if faster else FP32)
    assert ("eager-fp32" if faster else "eager-bf16") in choice.refused
