"""One runtime per deployment and node class: measured once, published, adopted.

``runtime: auto`` times the candidate runtimes (``runtimes.py``). Were every replica to
time them on its own, two replicas of one deployment could choose differently where
several runtimes qualify (a bf16 CPU, a GPU), above all when one of them starts under
load: their results would be cached under other keys (the runtime is part of every key)
and one photo would give slightly different pictures. So the replicas of a deployment
share their choices on a board (``choice_board.py``: a named Ray actor), one per *node
class*: what makes a measurement hold for another node (device, GPU model, the CPU flags
the candidates depend on, torch, threads), together with the settings that bear on the
choice (device, precision, the styles' weights).

A replica asks the board for its node class's choice. If there is one it adopts it,
without measuring (after checking it can run that runtime); if not, it adopts and
publishes the choice kept on its node's disk by an earlier Ray instance
(``kept_choices.py``), or else measures and publishes, set-if-absent: the first publisher
wins and a later one adopts the winner's choice. A board that cannot be reached means
deciding alone, with a warning.

No Ray here: the board comes in as a ``ChoiceBoard``; unit tests hand a fake.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from serve_app.config import AppConfig
from serve_app.model.generator import Runtime, resolve_device
from serve_app.model.kept_choices import KeptChoices
from serve_app.model.runtime_simulation import simulation_from_env
from serve_app.model.runtimes import (
    RuntimeChoice,
    candidate_runtimes,
    choice_from_summary,
    choose_runtime,
    make_measure,
    resolve_runtime,
)

logger = logging.getLogger(__name__)

# The CPU flags the CPU candidates' speed and availability depend on (torch's own
# capability level says less: "AVX512" with or without bf16).
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")

Source = Literal["configured", "only-candidate", "measured", "adopted"]


# --- the node class --------------------------------------------------------------------------


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo text (x86 ``flags``, Arm
    ``Features``); none if it has no such line."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    try:
        return cpu_flags(path.read_text())
    except OSError:  # not Linux: torch's capability level alone tells the CPUs apart
        return frozenset()


def cpu_class(capability: str, flags: frozenset[str]) -> str:
    """``cpu:<torch's capability>:<relevant flags>``, e.g. ``cpu:avx2:avx2``."""
    kept = "+".join(flag for flag in RELEVANT_CPU_FLAGS if flag in flags) or "none"
    return f"cpu:{capability.lower()}:{kept}"


def cuda_class(name: str, capability: tuple[int, int], cuda_version: str | None) -> str:
    """``cuda:<GPU name>:sm<major><minor>:cuda-<version>``."""
    major, minor = capability
    return f"cuda:{name}:sm{major}{minor}:cuda-{cuda_version}"


def node_class(device: str, threads: int) -> str:
    """What a runtime measurement on this node holds for: the device (GPU model, or the
    CPU's bf16/AVX level), torch's version and the replica's threads."""
    device = resolve_device(device)
    if device.startswith("cuda"):
        hardware = cuda_class(
            torch.cuda.get_device_name(device),
            torch.cuda.get_device_capability(device),
            torch.version.cuda,
        )
    else:
        hardware = cpu_class(torch.backends.cpu.get_cpu_capability(), read_cpu_flags())
    return f"{hardware}/torch-{torch.__version__}/threads-{threads}"


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeSettings:
    """The settings that bear on the runtime choice (``weights``: each style's identity)."""

    runtime: str
    device: str
    precision: str
    weights: tuple[str, ...]

    @classmethod
    def of(cls, config: AppConfig, weights: Sequence[str]) -> RuntimeSettings:
        return cls(config.runtime, config.device, config.precision, tuple(weights))

    def fingerprint(self) -> str:
        text = "|".join([self.device, self.precision, *self.weights])
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def decision_key(node: str, settings: RuntimeSettings) -> str:
    """Where a node class's choice sits on the board: a redeploy with other weights,
    precision or device decides anew; one with the same keeps the choice (and the keys)."""
    return f"{node} settings-{settings.fingerprint()}"


@dataclass(frozen=True)
class RuntimeDecision:
    """A replica's runtime, and how it came to it: ``source`` (named in the config, the
    only candidate, measured here, adopted from ``decided_by``), and ``shared``: whether
    it is the choice published for this deployment and node class."""

    choice: RuntimeChoice
    node_class: str
    source: Source
    decided_by: str
    shared: bool

    @property
    def runtime(self) -> Runtime:
        return self.choice.runtime

    def describe(self) -> str:
        """For the log: ``measured here, shared, node class cpu:avx2:...``."""
        how = "measured here" if self.source == "measured" else self.source
        if self.source == "adopted":
            how += f" from replica {self.decided_by}"
        return f"{how}, {'shared' if self.shared else 'not shared'}, node class {self.node_class}"

    def summary(self) -> dict[str, Any]:
        """JSON-ready (for stats, logs and the board)."""
        return {
            **self.choice.summary(),
            "node_class": self.node_class,
            "source": self.source,
            "decided_by": self.decided_by,
            "shared": self.shared,
        }


class ChoiceBoard(Protocol):
    """The runtime choices of one deployment, by decision key (blocking calls, each
    raising when the board cannot be reached). ``choice_board.RayChoiceBoard`` is the
    real one."""

    def lookup(self, key: str) -> Mapping[str, Any] | None:
        """The published choice, None if there is none yet."""

    def publish(self, key: str, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """Publish unless a choice is there already; the choice that stands."""


def decide_runtime(
    settings: RuntimeSettings,
    threads: int,
    generators: Callable[[], Sequence[nn.Module]],
    board: ChoiceBoard | None,
    replica: str,
    kept: KeptChoices | None = None,
) -> RuntimeDecision:
    """This replica's runtime (see the module doc). ``generators`` loads the styles; it is
    called only if this replica measures. ``board``: None outside a deployment; ``kept``:
    the node's choices on disk (None: none kept)."""
    node = node_class(settings.device, threads)
    if settings.runtime != "auto":
        choice = resolve_runtime(settings.runtime, settings.device, settings.precision, generators)
        return RuntimeDecision(choice, node, "configured", replica, shared=False)
    simulation = simulation_from_env()
    build = {} if simulation is None else {"build": simulation.runtime_for_kind}
    candidates, unavailable = candidate_runtimes(settings.device, settings.precision, **build)
    if len(candidates) == 1:  # nothing to measure, nothing to share: every replica agrees
        choice = RuntimeChoice(candidates[0], "the only runtime available", {}, unavailable)
        return RuntimeDecision(choice, node, "only-candidate", replica, shared=False)
    key = decision_key(node, settings)
    board = _Guarded(board)
    published = board.call("lookup", key)
    if published is None and kept is not None:
        published = _from_kept(board, kept, key)
    if published is not None:
        adopted = _adopt(published, candidates, node)
        if adopted is not None:
            _keep(kept, key, published)
            return adopted if board.reachable else replace(adopted, shared=False)
        board = _Guarded(None)  # this node class's choice cannot run here: decide alone
    start = time.perf_counter()
    measure = simulation.measure(candidates) if simulation else make_measure(generators())
    choice = choose_runtime(candidates, measure, unavailable)
    logger.info(
        "runtime %s measured in %.2f s (%s): %s",
        choice.runtime.kind,
        time.perf_counter() - start,
        choice.reason,
        choice.summary(),
    )
    mine = RuntimeDecision(choice, node, "measured", replica, shared=True)
    standing = board.call("publish", key, mine.summary())
    if standing is None or standing.get("decided_by") == replica:
        _keep(kept, key, mine.summary())
        return mine if standing is not None else replace(mine, shared=False)
    logger.info(
        "replica %s published first for %s: adopting its choice",
        standing.get("decided_by"),
        node,
    )
    adopted = _adopt(standing, candidates, node)
    if adopted is None:
        return replace(mine, shared=False)
    _keep(kept, key, standing)
    return adopted


def _keep(kept: KeptChoices | None, key: str, record: Mapping[str, Any]) -> None:
    """The node's choice on its disk, measured here or adopted: a board that restarts
    empty learns it again from whichever node starts a replica next, instead of that
    replica measuring anew (and perhaps choosing another runtime than the running ones)."""
    if kept is not None and kept.lookup(key) != dict(record):
        kept.keep(key, record)


def _from_kept(board: _Guarded, kept: KeptChoices, key: str) -> Mapping[str, Any] | None:
    """The node's kept choice, published so that the deployment's other replicas adopt it
    too (a choice published meanwhile stands instead); None if none is kept."""
    record = kept.lookup(key)
    if record is None:
        return None
    logger.info("runtime %s for %s kept on this node (%s)", record.get("chosen"), key, kept.path)
    return board.call("publish", key, record) or record


class _Guarded:
    """A board's calls; after one fails (unreachable, timed out, anything) a warning, and
    no more calls: this replica decides alone."""

    def __init__(self, board: ChoiceBoard | None) -> None:
        self._board = board

    @property
    def reachable(self) -> bool:
        return self._board is not None

    def call(self, method: str, *args: Any) -> Mapping[str, Any] | None:
        if self._board is None:
            return None
        try:
            return getattr(self._board, method)(*args)
        except Exception as error:
            self._board = None
            logger.warning(
                "runtime choices of this deployment unreachable (%s: %s): this replica "
                "decides alone, and may differ from the others",
                type(error).__name__,
                str(error)[:200],
            )
            return None


def _adopt(
    published: Mapping[str, Any], candidates: Sequence[Runtime], node: str
) -> RuntimeDecision | None:
    """The published choice as this replica's; None (with a warning) if it cannot run it."""
    kind = published.get("chosen")
    runtime = next((c for c in candidates if c.kind == kind), None)
    if runtime is None:
        logger.warning(
            "runtime %s, chosen for node class %s, cannot run here (candidates: %s): "
            "this replica measures alone",
            kind,
            node,
            [c.kind for c in candidates],
        )
        return None
    choice = choice_from_summary(published, runtime)
    decided_by = str(published.get("decided_by", "unknown"))
    logger.info("runtime %s adopted from replica %s (node class %s)", kind, decided_by, node)
    return RuntimeDecision(choice, node, "adopted", decided_by, shared=True)
