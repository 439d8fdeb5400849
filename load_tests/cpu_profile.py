"""Where a miss's CPU goes: each of the service's processes' CPU time per picture.

The benchmark's `serve run` starts Ray (GCS, raylet, dashboard, …) as its children and the
raylet starts the actors (proxy, replicas, cache, controller), which Ray names by their
process title (``ray::ServeReplica:animegan:Stylizer``…). A snapshot sums user + system
CPU seconds by component over that whole process tree; the difference of two snapshots
around a workload, divided by the pictures answered, is CPU ms per picture.
"""

from __future__ import annotations

from collections import defaultdict

import psutil

MODEL_REPLICAS = "model replicas"
# (what the command line contains, the component it is counted in), first match wins
COMPONENTS = (
    ("Stylizer", MODEL_REPLICAS),
    ("Ingress", "ingress replica"),
    ("ProxyActor", "HTTP proxy"),
    ("ResultCache", "result cache"),
    ("ServeController", "Serve controller"),
    ("floor", "the floor app"),
    ("serve run", "`serve run`"),
)
RAY_OWN = "Ray's own processes"


def component(cmdline: str) -> str:
    for marker, name in COMPONENTS:
        if marker in cmdline:
            return name
    return RAY_OWN  # gcs_server, raylet, dashboard, log monitor, idle workers, …


def snapshot(root_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process under ``root_pid``, by component."""
    totals: defaultdict[str, float] = defaultdict(float)
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    for process in processes:
        try:
            cmdline = " ".join(process.cmdline())
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        totals[component(cmdline)] += times.user + times.system
    return dict(totals)


def ms_per_picture(before: dict[str, float], after: dict[str, float], pictures: int) -> dict:
    """CPU ms per picture by component (a process started between the two counts whole)."""
    if pictures <= 0:
        return {}
    names = sorted(set(before) | set(after))
    spent = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in names}
    return {name: 1e3 * max(seconds, 0.0) / pictures for name, seconds in spent.items()}
