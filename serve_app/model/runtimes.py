"""Which runtime a model replica uses: measured on a node, with the replica's own weights.

Pure torch: the caller hands over the generators it loaded. ``runtime: auto`` times every
runtime this hardware can run on a small fixed picture and takes the fastest whose output
stays within ``MIN_PSNR_DB`` of fp32 eager (the reference, and always the fallback): a
bf16 runtime that is not faster here, or that a style's trained weights push below the
bound, is refused. ``choose_runtime`` holds the rules and takes the measurement as a
function, so tests can drive it with made-up figures. One replica of a deployment measures
per node class and the others adopt its choice (``runtime_sharing``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from serve_app.config import TilingConfig
from serve_app.model.generator import Runtime, StyleModel, resolve_device, runtime_for_kind

logger = logging.getLogger(__name__)

MIN_PSNR_DB = 40.0
"""Output PSNR against fp32 eager, on the [0, 255] picture, below which a runtime is refused."""
MIN_GAIN = 1.05
"""A later candidate must be this much faster than the best so far to displace it: ties
within timing noise keep the earlier (more exact) one, so that replicas of one node agree."""
PROBE_SIDE = 128
PROBE_ROUNDS = 3
CPU_KINDS = ("eager-fp32", "eager-bf16", "eager-bf16-autocast")
CUDA_KINDS = ("eager-fp32", "eager-fp16-autocast", "eager-bf16-autocast")


@dataclass(frozen=True)
class Measurement:
    images_per_s: float
    psnr_db: float  # worst style's, against fp32 eager; inf for fp32 eager itself


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a replica runs, why, and the figures it was chosen on."""

    runtime: Runtime
    reason: str
    measured: dict[str, Measurement] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # kind -> why

    def summary(self) -> dict:
        """JSON-ready figures (for stats and logs)."""
        return {
            "chosen": self.runtime.kind,
            "reason": self.reason,
            "measured": {
                kind: {"images_per_s": m.images_per_s, "psnr_db": _json_db(m.psnr_db)}
                for kind, m in self.measured.items()
            },
            "refused": dict(self.refused),
        }


def _json_db(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 1)


def choice_from_summary(summary: Mapping, runtime: Runtime) -> RuntimeChoice:
    """The choice another replica made (its ``summary()``), run here as ``runtime``."""
    measured = {
        kind: Measurement(
            float(figures["images_per_s"]),
            math.inf if figures["psnr_db"] is None else float(figures["psnr_db"]),
        )
        for kind, figures in summary.get("measured", {}).items()
    }
    return RuntimeChoice(runtime, summary["reason"], measured, dict(summary.get("refused", {})))


def runtime_identity(runtime: Runtime, tiling: TilingConfig | None = None) -> str:
    """Everything about how the model runs that can change its output's bits (tiling
    changes a large picture's): part of every cache key."""
    layout = "nhwc" if runtime.channels_last else "nchw"
    identity = f"{runtime.device}/{runtime.kind}/{layout}/torch-{torch.__version__}"
    if tiling is not None:
        identity += (
            f"/tiles-{tiling.max_whole_pixels}-{tiling.tile_size}-{tiling.overlap}"
            f"-{tiling.stats_pixels}"
        )
    return identity


# --- the rules -------------------------------------------------------------------------------


def choose_runtime(
    candidates: Sequence[Runtime],
    measure: Callable[[Runtime], Measurement],
    unavailable: Mapping[str, str] | None = None,
    min_psnr_db: float = MIN_PSNR_DB,
) -> RuntimeChoice:
    """The fastest candidate whose output is within ``min_psnr_db`` of fp32 eager.

    fp32 eager is added if missing and wins whenever nothing else qualifies. A candidate
    whose measurement raises is refused with the error; ``unavailable`` (kind -> why) is
    recorded as refused without measuring.
    """
    device = candidates[0].device if candidates else "cpu"
    fallback = Runtime(device, "fp32", channels_last=not device.startswith("cuda"))
    if all(c.kind != "eager-fp32" for c in candidates):
        candidates = [fallback, *candidates]
    refused = dict(unavailable or {})
    if len(candidates) == 1:
        return RuntimeChoice(candidates[0], "the only runtime available", {}, refused)
    measured: dict[str, Measurement] = {}
    best: Runtime | None = None
    for runtime in candidates:
        try:
            figures = measure(runtime)
        except Exception as error:  # a runtime that cannot run here is simply not chosen
            refused[runtime.kind] = f"failed: {error}"
            continue
        measured[runtime.kind] = figures
        if figures.psnr_db < min_psnr_db:
            refused[runtime.kind] = f"PSNR {figures.psnr_db:.1f} dB < {min_psnr_db:g} dB"
        elif best is None or figures.images_per_s > (measured[best.kind].images_per_s * MIN_GAIN):
            best = runtime
    if best is None:
        return RuntimeChoice(fallback, "fallback: no runtime qualified", measured, refused)
    chosen = measured[best.kind].images_per_s
    for kind, figures in measured.items():
        if kind != best.kind and kind not in refused:
            refused[kind] = f"not chosen: {figures.images_per_s:g} img/s vs {chosen:g}"
    reason = f"fastest within {min_psnr_db:g} dB of eager-fp32"
    return RuntimeChoice(best, reason, measured, refused)


# --- the measurement -------------------------------------------------------------------------


def probe_picture(side: int = PROBE_SIDE) -> torch.Tensor:
    """A fixed (1, 3, side, side) picture in [-1, 1]: gradients, edges and fine texture,
    so that precision errors in flat and busy regions both show."""
    axis = torch.linspace(0.0, 1.0, side)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    seeded = torch.Generator().manual_seed(0)
    noise = torch.rand((3, side, side), generator=seeded) * 2 - 1
    channels = torch.stack(
        [
            torch.sin(20 * x + 5 * y),
            torch.cos(50 * x * y),
            torch.sign(torch.sin(12 * x) * torch.sin(12 * y)) * 0.6,
        ]
    )
    return (0.8 * channels + 0.2 * noise).clamp(-1, 1)[None]


def to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """The served [0, 255] picture (the arithmetic of ``tensors.from_model_batch``)."""
    return (batch.float().clip(-1, 1) * 0.5 + 0.5).mul(255).byte()


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two [0, 255] pictures."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def make_measure(
    generators: Sequence[nn.Module], side: int = PROBE_SIDE, rounds: int = PROBE_ROUNDS
) -> Callable[[Runtime], Measurement]:
    """Time the first generator on a runtime (best of ``rounds`` passes at batch 1) and
    take the worst PSNR of every generator's output against its fp32 eager output."""
    picture = probe_picture(side)
    references: dict[str, tuple[Runtime, StyleModel, list[torch.Tensor]]] = {}

    def reference(device: str) -> tuple[Runtime, StyleModel, list[torch.Tensor]]:
        if device not in references:
            fp32 = runtime_for_kind("eager-fp32", device)
            models = [StyleModel(copy.deepcopy(g), fp32) for g in generators]
            references[device] = (fp32, models[0], [to_pixels(m(picture)) for m in models])
        return references[device]

    def measure(runtime: Runtime) -> Measurement:
        fp32, model, expected = reference(runtime.device)
        worst = math.inf
        if runtime != fp32:  # fp32 eager is the reference: timed, not compared
            models = [StyleModel(copy.deepcopy(g), runtime) for g in generators]
            worst = min(
                psnr_db(to_pixels(m(picture)), pixels)
                for m, pixels in zip(models, expected, strict=True)
            )
            model = models[0]
        model(picture)  # the first passes at a shape build its kernels
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            model(picture)
            seconds.append(time.perf_counter() - start)
        return Measurement(round(1 / min(seconds), 2), worst)

    return measure


# --- from the settings -----------------------------------------------------------------------


def candidate_runtimes(
    device: str = "auto",
    precision: str = "auto",
    build: Callable[[str, str], Runtime] = runtime_for_kind,
) -> tuple[list[Runtime], dict[str, str]]:
    """The runtimes ``runtime: auto`` may pick on this hardware (fp32 eager first), and
    those it cannot run here with why. A set ``precision`` keeps that precision's runtimes
    (fp32 eager stays as the fallback) and must have one available. ``build``: a kind and
    a device -> its runtime, ValueError where it cannot run here."""
    device = resolve_device(device)
    on_cuda = device.startswith("cuda")
    kinds = [
        kind
        for kind in (CUDA_KINDS if on_cuda else CPU_KINDS)
        if precision == "auto" or kind == "eager-fp32" or kind.split("-")[1] == precision
    ]
    runtimes: list[Runtime] = []
    unavailable: dict[str, str] = {}
    for kind in kinds:
        try:
            runtimes.append(build(kind, device))
        except ValueError as error:
            unavailable[kind] = f"unavailable: {error}"
    if precision not in ("auto", "fp32") and len(runtimes) == 1:
        raise ValueError(f"no {precision} runtime on this {device}: {unavailable}")
    return runtimes, unavailable


def resolve_runtime(
    runtime: str,
    device: str,
    precision: str,
    generators: Callable[[], Sequence[nn.Module]],
) -> RuntimeChoice:
    """The runtime the settings ask for: a named one as is, ``auto`` measured here.

    ``generators`` loads the replica's styles; it is called only if there is a choice to
    measure (more than one runtime available).
    """
    if runtime != "auto":
        chosen = runtime_for_kind(runtime, device)
        if precision not in ("auto", chosen.precision):
            raise ValueError(f"runtime {runtime!r} contradicts precision {precision!r}")
        return RuntimeChoice(chosen, "configured")
    candidates, unavailable = candidate_runtimes(device, precision)
    if len(candidates) == 1:
        choice = RuntimeChoice(candidates[0], "the only runtime available", {}, unavailable)
    else:
        start = time.perf_counter()
        choice = choose_runtime(candidates, make_measure(generators()), unavailable)
        logger.info("runtime measurement took %.2f s", time.perf_counter() - start)
    logger.info("runtime %s (%s): %s", choice.runtime.kind, choice.reason, choice.summary())
    return choice
