"""A testing aid: several qualifying runtimes on any CPU, with made-up figures.

With ``ANIMEGAN_SIMULATED_RUNTIMES`` set to a directory (a test puts it in the model
deployment's ``runtime_env``), ``runtime: auto``

- offers every CPU runtime kind on a CPU, whatever its flags (bf16 is emulated where the
  CPU has no native bf16: correct, slow), and
- times nothing: the n-th measurement made with that directory (counted by the files it
  creates there, so across the processes of one node) finds the n-th candidate fastest
  (cyclically, in the candidates' order, eager-fp32 first), every one within the PSNR
  bound.

So replicas that each measured on their own would choose differently, deterministically:
what the shared choice (``runtime_sharing``) must prevent, shown on a CPU that has one
qualifying runtime. Never set in production.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serve_app.model.generator import Runtime, runtime_for_kind
from serve_app.model.runtimes import Measurement

SIMULATION_ENV = "ANIMEGAN_SIMULATED_RUNTIMES"
SIMULATED_FASTEST = 10.0  # images per second of the candidate whose turn it is
SIMULATED_OTHERS = 5.0  # of the others: half, far beyond timing noise
SIMULATED_PSNR_DB = 50.0  # every simulated candidate qualifies


@dataclass(frozen=True)
class RuntimeSimulation:
    directory: Path

    @staticmethod
    def runtime_for_kind(kind: str, device: str) -> Runtime:
        """A CPU runtime of any kind, whatever the CPU's flags (elsewhere: as usual)."""
        if device == "cpu" and kind.startswith("eager-bf16"):
            return Runtime("cpu", "bf16", channels_last=True, cast=kind == "eager-bf16")
        return runtime_for_kind(kind, device)

    def measure(self, candidates: Sequence[Runtime]) -> Callable[[Runtime], Measurement]:
        """Made-up figures for one measurement: this one's turn picks the fastest."""
        fastest = candidates[self._claim_turn() % len(candidates)].kind

        def measure(runtime: Runtime) -> Measurement:
            speed = SIMULATED_FASTEST if runtime.kind == fastest else SIMULATED_OTHERS
            exact = runtime.kind == "eager-fp32"
            return Measurement(speed, math.inf if exact else SIMULATED_PSNR_DB)

        return measure

    def _claim_turn(self) -> int:
        """The number of measurements made with this directory before this one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        turn = 0
        while True:
            try:  # O_EXCL: of two processes creating one name, exactly one succeeds
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
                os.close(os.open(self.directory / f"measurement-{turn}", flags))
            except FileExistsError:
                turn += 1
                continue
            return turn


def simulation_from_env() -> RuntimeSimulation | None:
    directory = os.environ.get(SIMULATION_ENV)
    return RuntimeSimulation(Path(directory)) if directory else None
