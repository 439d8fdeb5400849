"""Which Serve replicas of the test application are alive, and which one answered a
request: replica ids from Ray's named actors, their processes from the OS, and the
answering replica from the one structured log line each request leaves in its replica's
own Serve log file (``replica_animegan_<deployment>_<id>.log``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from tests.support.serve import replica_names

APP = "animegan"


def replica_ids(deployment: str) -> list[str]:
    """The unique ids of the deployment's live replicas (Serve gives a replacement a new one)."""
    return [name.rsplit("#", 1)[1] for name in replica_names(deployment)]


def replica_pids(deployment: str) -> set[int]:
    """The processes of the deployment's replicas (their title names the deployment)."""
    title = f"ServeReplica:{APP}:{deployment}"
    pids = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info.get("cmdline") or [])
        except psutil.Error:
            continue
        if title in cmdline:
            pids.add(process.info["pid"])
    return pids


def serve_logs_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"


def _request_ids_in(path: Path, wanted: set[str]) -> set[str]:
    found = set()
    for line in path.read_text(errors="replace").splitlines():
        if '"request_id"' not in line or "{" not in line:
            continue
        try:
            fields = json.loads(line[line.index("{") : line.rindex("}") + 1])
        except ValueError:
            continue
        request_id = fields.get("request_id") if isinstance(fields, dict) else None
        if request_id in wanted:
            found.add(request_id)
    return found


def answering_replicas(
    request_ids: Iterable[str], deployment: str = "Ingress", timeout_s: float = 30
) -> dict[str, str]:
    """request id -> the id of the replica whose log has its line (waits for the lines,
    which replicas write a moment after they answer; ids never logged are left out)."""
    wanted = set(request_ids)
    answered: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for path in serve_logs_dir().glob(f"replica_{APP}_{deployment}_*.log"):
            replica = path.stem.rsplit("_", 1)[1]
            for request_id in _request_ids_in(path, wanted - set(answered)):
                answered[request_id] = replica
        if set(answered) == wanted or time.monotonic() > deadline:
            return answered
        time.sleep(0.5)
