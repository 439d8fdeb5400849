"""Server processes the benchmark starts, watches and stops: `serve run`, the Flask baseline.

Each runs in its own session (process group), so that a signal to the group reaches what
it started and nothing else on the machine. Ray's workers put themselves in process groups
of their own, so every process ever seen in the tree is also remembered by pid, and
whatever of it outlives SIGINT, SIGTERM and SIGKILL to the group is killed by pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

logger = logging.getLogger(__name__)

RAY_WORKER_PREFIX = "ray::"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ManagedProcess:
    """A server started in its own session; ``seen`` collects every pid of its tree."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    seen: dict[int, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants now; remembered for the final check."""
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for process in processes:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(process.pid, " ".join(process.cmdline())[:120])
        return processes

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.popen.returncode}; "
                f"its log ends with:\n{log_tail(self.log_path)}"
            )


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = ManagedProcess(name, popen, log_path)
    process.tree()
    return process


def stop(process: ManagedProcess, grace_s: float = 30.0) -> list[str]:
    """SIGINT to the process group, then SIGTERM, then SIGKILL, until every process ever
    seen in its tree is gone; what survives that is killed by pid and returned."""
    process.tree()
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        if _wait_gone(process, wait_s):
            return []
    leftovers = _alive(process.seen)
    for pid in leftovers:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    return [f"{pid} {process.seen[pid]}" for pid in leftovers]


def _alive(seen: dict[int, str]) -> list[int]:
    alive = []
    for pid in seen:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def _wait_gone(process: ManagedProcess, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        process.popen.poll()  # reap the leader
        if process.popen.returncode is not None and not _alive(process.seen):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


@contextlib.contextmanager
def running(
    name: str, argv: list[str], env: dict[str, str], log_path: Path
) -> Iterator[ManagedProcess]:
    """Start a server; stop it (and check its tree is gone) however the block ends."""
    process = start(name, argv, env, log_path)
    try:
        yield process
    finally:
        leftovers = stop(process)
        if leftovers:
            logger.warning("%s: had to kill leftover processes: %s", name, leftovers)


# --------------------------------------------------------------------------- readiness


def wait_until(
    probe: Callable[[], bool], process: ManagedProcess, timeout_s: float, interval_s: float = 0.1
) -> float:
    """Call ``probe`` until it returns True; seconds since the process started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.check_alive()
        process.tree()
        if probe():
            return time.monotonic()
        time.sleep(interval_s)
    raise TimeoutError(
        f"{process.name} not ready within {timeout_s:g} s; log:\n{log_tail(process.log_path)}"
    )


def answers(
    method: str, url: str, ok: Callable[[httpx.Response], bool], **kwargs
) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return ok(httpx.request(method, url, timeout=120, **kwargs))
        except httpx.HTTPError:
            return False

    return probe


# --------------------------------------------------------------------------- memory


def ray_worker_rss(process: ManagedProcess) -> dict[str, float]:
    """RSS (MiB) of the Ray workers in the tree by role (``ray::ServeReplica:app:Name``,
    ``ray::ServeController`` ...); roles with several processes are summed."""
    rss: dict[str, float] = {}
    for proc in process.tree():
        try:
            cmdline = proc.cmdline()
            memory = proc.memory_info().rss
        except psutil.Error:
            continue
        if cmdline and cmdline[0].startswith(RAY_WORKER_PREFIX):
            role = worker_role(cmdline[0])
            rss[role] = rss.get(role, 0.0) + memory / 2**20
    return rss


def worker_role(title: str) -> str:
    """``ray::ServeReplica:animegan:Stylizer.stylize`` -> ``ServeReplica:animegan:Stylizer``.

    Ray retitles a worker with the method it runs, and replicas starting up carry a
    ``SERVE_REPLICA::app#Name#id:`` prefix."""
    name = title.split()[0].removeprefix(RAY_WORKER_PREFIX)
    if ":ServeReplica:" in name:
        name = name[name.index("ServeReplica:", name.index(":ServeReplica:")) :]
    return name.split(".", 1)[0]


def cpu_seconds_by_role(process: ManagedProcess) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role in the server's tree (Ray
    workers by ``worker_role``, other processes by name) and by this process, the load
    generator."""
    seconds: dict[str, float] = {}
    for proc in process.tree():
        try:
            cmdline, times = proc.cmdline(), proc.cpu_times()
            name = proc.name()
        except psutil.Error:
            continue
        is_worker = bool(cmdline) and cmdline[0].startswith(RAY_WORKER_PREFIX)
        role = worker_role(cmdline[0]) if is_worker else name
        seconds[role] = seconds.get(role, 0.0) + times.user + times.system
    client = psutil.Process().cpu_times()
    seconds["load generator (bench)"] = client.user + client.system
    return seconds


class CpuByRole:
    """CPU seconds each role of a server's tree used while in use (see cpu_seconds_by_role)."""

    def __init__(self, process: ManagedProcess | None):
        self._process = process
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> CpuByRole:
        self._start = cpu_seconds_by_role(self._process) if self._process else {}
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        end = cpu_seconds_by_role(self._process)
        self.seconds = {role: end[role] - self._start.get(role, 0.0) for role in end}


class PeakRss:
    """Samples ``ray_worker_rss`` in a thread while in use; keeps each role's peak."""

    def __init__(self, process: ManagedProcess, interval_s: float = 0.5):
        self._process = process
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak: dict[str, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            for role, mib in ray_worker_rss(self._process).items():
                self.peak[role] = max(self.peak.get(role, 0.0), mib)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- other load


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (guest time is already in user)."""
    t = psutil.cpu_times()
    return sum(
        getattr(t, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal")
    )


def _own_seconds() -> float:
    """CPU seconds used by this process and every descendant (servers, Ray workers, pool)."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


class OtherLoad:
    """How many cores' worth of CPU processes *outside* this benchmark used while in use:
    on a shared machine, the figure that says how far a point can be trusted."""

    def __enter__(self) -> OtherLoad:
        self._start = (time.monotonic(), _busy_seconds(), _own_seconds())
        self.cores = 0.0
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = time.monotonic(), _busy_seconds(), _own_seconds()
        start_wall, start_busy, start_own = self._start
        other = (busy - start_busy) - (own - start_own)
        self.cores = max(other, 0.0) / max(wall - start_wall, 1e-9)


def python_env(repo: Path, **extra: str) -> dict[str, str]:
    """This environment, with the repository importable (Ray workers inherit it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def serve_argv(config_path: Path) -> list[str]:
    serve_bin = Path(sys.executable).with_name("serve")
    return [str(serve_bin), "run", str(config_path)]
