"""A Ray cluster on one machine whose worker nodes come and go by Ray's own autoscaler.

The head is a `ray start --head --block` process tree like `LocalCluster`'s (its own temp
dir, ports, token), started with ``--autoscaling-config`` and ``RAY_FAKE_CLUSTER=1``: its
autoscaler (the `monitor` process) then uses the ``fake_multinode`` node provider, which
"launches" a worker node by starting a raylet in the monitor's own process and "terminates"
it by killing that raylet. Real scale-up and idle scale-down decisions, no cloud.

Not `ray.cluster_utils.AutoscalingCluster`: its `start()` and `shutdown()` run
`ray stop --force`, which kills every Ray instance on the machine, and it reads an
``example.yaml`` that the wheel does not ship. Here the config is written out in full and
everything started is stopped by PID (the worker nodes' processes descend from the head's
monitor, so stopping the head's process tree stops them too).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.support.ray_cluster import HOST, LocalCluster, RayNode, free_ports, wait_for

HEAD_TYPE = "ray.head.default"  # the node type name the fake provider gives the head
# The fake provider sets this node id on the head (`RAY_FAKE_CLUSTER`); workers get ...00001 on.
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"
# Ray's and Serve's log lines start with a local wall-clock time like this one.
LOG_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}")


@dataclass
class WorkerType:
    """One `available_node_types` entry for worker nodes."""

    name: str
    cpus: int
    min_workers: int = 0
    max_workers: int = 1
    object_store_bytes: int = 100_000_000

    def as_config(self) -> dict[str, Any]:
        return {
            "resources": {"CPU": self.cpus, "object_store_memory": self.object_store_bytes},
            "node_config": {},
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
        }


def autoscaling_config(
    gcs_address: str,
    head_cpus: int,
    workers: list[WorkerType],
    idle_timeout_minutes: float,
) -> dict[str, Any]:
    """A complete cluster config for the ``fake_multinode`` provider (what the upstream
    ``fake_multi_node/example.yaml`` holds, plus the node types)."""
    node_types = {worker.name: worker.as_config() for worker in workers}
    node_types[HEAD_TYPE] = {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake-multinode",
        "max_workers": sum(worker.max_workers for worker in workers),
        # The provider joins new nodes to this GCS; without it, to port 6379.
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # The fake nodes share one IP: the autoscaler tells them apart by node id.
            "use_node_id_as_ip": True,
        },
        "available_node_types": node_types,
        "head_node_type": HEAD_TYPE,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class AutoscalingLocalCluster(LocalCluster):
    """`LocalCluster` whose head runs the autoscaler with the fake multi-node provider."""

    def start_autoscaling_head(
        self,
        head_cpus: int,
        workers: list[WorkerType],
        idle_timeout_minutes: float,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> RayNode:
        gcs_port, dashboard_port, client_port = free_ports(3)
        gcs_address = f"{HOST}:{gcs_port}"
        config_path = self.root / "autoscaling.json"
        config = autoscaling_config(gcs_address, head_cpus, workers, idle_timeout_minutes)
        config_path.write_text(json.dumps(config, indent=2))
        args = [
            "--head",
            f"--port={gcs_port}",
            f"--autoscaling-config={config_path}",
            "--include-dashboard=true",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={client_port}",
            "--disable-usage-stats",
            *self._node_args("head", head_cpus, None),
        ]
        node_env = {
            "RAY_FAKE_CLUSTER": "1",
            # The autoscaler's loop period (default 5 s): decisions within a second.
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            **(env or {}),
        }
        node = RayNode("head", args, self.env(node_env), self.root / "head.log")
        self.nodes.append(node)
        node.wait_started(timeout_s)
        self.gcs_address = gcs_address
        self.dashboard_url = f"http://{HOST}:{dashboard_port}"
        wait_for(self._dashboard_up, timeout_s, "the dashboard to answer")
        return node

    def stop(self) -> None:
        """Stop the head's process tree, then any process still naming this cluster's temp
        dir (a worker node's raylet outlives a monitor killed before it), by PID."""
        root = str(self.root)
        for node in reversed(self.nodes):
            node.stop()
        leftovers = [proc for proc in psutil.process_iter(["cmdline"]) if _mentions(proc, root)]
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def worker_node_ids(self) -> set[str]:
        """The ALIVE nodes other than the head."""
        return {node["node_id"] for node in self.alive_nodes() if not node["is_head_node"]}

    def logs_dir(self) -> Path:
        # The fake worker nodes join the head's session: one logs dir for the cluster.
        return self.root / "head" / "session_latest" / "logs"

    def autoscaler_log_tail(self, chars: int = 4000) -> str:
        """The monitor's log: why a node was (not) launched or terminated."""
        log = self.logs_dir() / "monitor.log"
        return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no monitor.log)"

    def log_time(self, pattern: str, text: str, after: float = 0.0) -> float | None:
        """The wall-clock time (epoch s) of the first line containing ``text``, at or
        after ``after``, in the logs matching ``pattern`` (under the logs dir)."""
        times = [
            stamp
            for path in self.logs_dir().glob(pattern)
            for stamp in _line_times(path, text)
            if stamp >= after
        ]
        return min(times, default=None)


def _mentions(proc: psutil.Process, text: str) -> bool:
    with contextlib.suppress(psutil.Error):
        return any(text in arg for arg in proc.info["cmdline"] or [])
    return False


def _line_times(path: Path, text: str) -> list[float]:
    times = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_TIME.search(line) if text in line else None
            if match:
                stamp = datetime.datetime.strptime(match.group(), "%Y-%m-%d %H:%M:%S,%f")
                times.append(stamp.timestamp())  # naive: local time, as Ray writes it
    return times
