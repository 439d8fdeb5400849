"""What a model replica answers: the stylized array and what computed it. No torch here:
the ingress side imports it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelIdentity:
    """What computed a result. A result is cached only under the key of its identity."""

    weights: str  # digest of the weights and the upsampling mode
    runtime: str  # device, precision and library versions, e.g. "cpu/eager-bf16/nhwc/torch-2.13.0"


@dataclass(frozen=True)
class StylizedArray:
    rgb: np.ndarray  # (H, W, 3) uint8
    identity: ModelIdentity
    queue_ms: float  # arrival at the replica -> start of its batch
    inference_ms: float  # the forward pass that computed it
    batch_size: int  # requests in that batch
