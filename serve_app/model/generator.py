"""The AnimeGANv2 generator and a ready-to-run model for a device and a precision.

Pure torch: this file knows nothing of serving, weights files or images. The layer
layout follows the official PyTorch port (bryandlee/animegan2-pytorch) name for name,
so its state dicts load with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class ConvNormLReLU(nn.Sequential):
    """pad -> conv -> GroupNorm(1 group) -> LeakyReLU(0.2); children named 0..3 as upstream."""

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1, groups=1, bias=False):
        super().__init__(
            nn.ReflectionPad2d(padding),
            nn.Conv2d(
                in_ch, out_ch, kernel_size, stride=stride, padding=0, groups=groups, bias=bias
            ),
            nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
        )


class InvertedResBlock(nn.Module):
    """MobileNetV2-style block: 1x1 expand, 3x3 depthwise, 1x1 project (+ residual)."""

    def __init__(self, in_ch: int, out_ch: int, expansion_ratio: float = 2):
        super().__init__()
        self.use_res_connect = in_ch == out_ch
        bottleneck = round(in_ch * expansion_ratio)
        layers: list[nn.Module] = []
        if expansion_ratio != 1:
            layers.append(ConvNormLReLU(in_ch, bottleneck, kernel_size=1, padding=0))
        layers.append(ConvNormLReLU(bottleneck, bottleneck, groups=bottleneck, bias=True))
        layers.append(nn.Conv2d(bottleneck, out_ch, kernel_size=1, padding=0, bias=False))
        layers.append(nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.use_res_connect else out


class Generator(nn.Module):
    """AnimeGANv2 generator: (N, 3, H, W) in [-1, 1] -> (N, 3, H, W) in [-1, 1].

    H and W must be multiples of 4 (two stride-2 stages). ``align_corners`` picks the
    upsampling of the reference scripts: True for the face models (upsample to the
    exact skip size), False for paprika (scale factor 2).
    """

    def __init__(self, align_corners: bool = True):
        super().__init__()
        self.align_corners = align_corners
        self.block_a = nn.Sequential(
            ConvNormLReLU(3, 32, kernel_size=7, padding=3),
            ConvNormLReLU(32, 64, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(64, 64),
        )
        self.block_b = nn.Sequential(
            ConvNormLReLU(64, 128, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(128, 128),
        )
        self.block_c = nn.Sequential(
            ConvNormLReLU(128, 128),
            InvertedResBlock(128, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            ConvNormLReLU(256, 128),
        )
        self.block_d = nn.Sequential(ConvNormLReLU(128, 128), ConvNormLReLU(128, 128))
        self.block_e = nn.Sequential(
            ConvNormLReLU(128, 64),
            ConvNormLReLU(64, 64),
            ConvNormLReLU(64, 32, kernel_size=7, padding=3),
        )
        self.out_layer = nn.Sequential(nn.Conv2d(32, 3, kernel_size=1, bias=False), nn.Tanh())

    def _upsample(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if self.align_corners:
            return F.interpolate(x, size, mode="bilinear", align_corners=True)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block_a(x)  # (N, 64, H/2, W/2)
        half_size = out.shape[-2:]
        out = self.block_b(out)  # (N, 128, H/4, W/4)
        out = self.block_c(out)  # (N, 128, H/4, W/4)
        out = self._upsample(out, half_size)  # (N, 128, H/2, W/2)
        out = self.block_d(out)
        out = self._upsample(out, x.shape[-2:])  # (N, 128, H, W)
        out = self.block_e(out)  # (N, 32, H, W)
        return self.out_layer(out)  # (N, 3, H, W)


def random_generator(seed: int = 0, align_corners: bool = True) -> Generator:
    """An untrained generator with seeded weights: the real compute, a meaningless picture."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(align_corners=align_corners)


def load_generator(state_dict: dict[str, torch.Tensor], align_corners: bool = True) -> Generator:
    """A generator holding an official state dict (every key must match)."""
    generator = Generator(align_corners=align_corners)
    generator.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return generator


# --- runtimes: device, precision, how the precision is applied -------------------------

RuntimeKind = Literal["eager-fp32", "eager-bf16", "eager-bf16-autocast", "eager-fp16-autocast"]
RUNTIME_KINDS: tuple[RuntimeKind, ...] = (
    "eager-fp32",
    "eager-bf16",
    "eager-bf16-autocast",
    "eager-fp16-autocast",
)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how a generator runs.

    ``cast``: the convolutions' weights are cast to ``precision`` once, at load, and the
    activations flow in that precision; otherwise autocast re-casts the weights on every
    call, which costs about a fifth of a bf16 forward pass on CPU.
    """

    device: str  # "cpu" or "cuda[:n]"
    precision: Literal["fp32", "bf16", "fp16"]
    channels_last: bool
    cast: bool = False

    @property
    def kind(self) -> RuntimeKind:
        if self.precision == "fp32":
            return "eager-fp32"
        return f"eager-{self.precision}" if self.cast else f"eager-{self.precision}-autocast"  # type: ignore[return-value]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.cast else _DTYPES.get(self.precision)

    @property
    def cast_dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.precision) if self.cast else None


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmul (AVX512-BF16 / AMX); elsewhere bf16 is
    emulated and about ten times slower than fp32."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        return False
    if capability not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda where torch sees one, else cpu; refuse a cuda that is not there."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return device


def runtime_for_kind(kind: str, device: str = "auto") -> Runtime:
    """The runtime of one kind on a device; ValueError where the hardware cannot run it."""
    if kind not in RUNTIME_KINDS:
        raise ValueError(f"unknown runtime {kind!r}; known: {', '.join(RUNTIME_KINDS)}")
    device = resolve_device(device)
    on_cuda = device.startswith("cuda")
    precision = kind.split("-")[1]
    cast = precision != "fp32" and not kind.endswith("-autocast")
    if precision == "fp16" and not on_cuda:
        raise ValueError("precision 'fp16' is only supported on CUDA; use bf16 or fp32 on CPU")
    if precision == "bf16" and not on_cuda and not cpu_supports_bf16():
        raise ValueError("precision 'bf16' requested but this CPU has no native bf16 support")
    if cast and on_cuda:
        # Casting relies on the CPU GroupNorm kernel taking bf16 activations with fp32
        # parameters; on CUDA the autocast runtimes stay the supported ones.
        raise ValueError(f"runtime {kind!r} is CPU-only; use {kind}-autocast on CUDA")
    # channels_last: oneDNN convolutions on CPU run about 1.3x faster in NHWC.
    return Runtime(device=device, precision=precision, channels_last=not on_cuda, cast=cast)  # type: ignore[arg-type]


def select_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """The fastest runtime of a precision this hardware supports, without measuring
    (``auto``: fp16 autocast on CUDA, cast bf16 on a bf16 CPU, else fp32)."""
    device = resolve_device(device)
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        precision = "fp16" if on_cuda else ("bf16" if cpu_supports_bf16() else "fp32")
    kinds = {
        "fp32": "eager-fp32",
        "bf16": "eager-bf16-autocast" if on_cuda else "eager-bf16",
        "fp16": "eager-fp16-autocast",
    }
    if precision not in kinds:
        raise ValueError(f"unknown precision {precision!r}")
    return runtime_for_kind(kinds[precision], device)


def _match_weight_dtype(module: nn.Module, args: tuple) -> tuple | None:
    # A layer may hand a cast convolution fp32 activations (the tiler's norms do).
    x = args[0]
    weight_dtype = module.weight.dtype
    return None if x.dtype == weight_dtype else (x.to(weight_dtype), *args[1:])


def cast_convolutions(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast every convolution of ``module`` to ``dtype``, in place, once.

    Only the convolutions: they hold nearly all the compute. Norm parameters (and the
    norms' arithmetic: the CPU GroupNorm kernel takes bf16 activations with fp32
    parameters and accumulates in fp32) stay fp32, which keeps trained scales and
    shifts exact. Each convolution casts its input to its own dtype, so a norm that
    returns fp32 (the tiler's) still feeds it.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer.to(dtype)
            layer.register_forward_pre_hook(_match_weight_dtype)
    return module


class StyleModel:
    """A generator placed on a runtime: call it with a CPU batch, get a CPU fp32 batch back.

    The generator is moved (and, for a cast runtime, cast) in place.
    """

    def __init__(self, generator: nn.Module, runtime: Runtime):
        self.runtime = runtime
        memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
        self.generator = generator.eval().requires_grad_(False)
        self.generator.to(device=runtime.device, memory_format=memory_format)
        if runtime.cast_dtype is not None:
            cast_convolutions(self.generator, runtime.cast_dtype)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 in [-1, 1] -> (N, 3, H, W) float32 in [-1, 1], on the CPU."""
        runtime = self.runtime
        memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
        x = batch.to(runtime.device, non_blocking=True)
        x = x.to(dtype=runtime.cast_dtype or x.dtype, memory_format=memory_format)
        dtype = runtime.autocast_dtype
        device_type = "cuda" if runtime.device.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            out = self.generator(x)
        return out.float().cpu()
