"""Real Ray clusters on one machine: `ray start` head and worker nodes as subprocesses.

Every node runs `ray start --block` in a session of its own, on ports picked free for it
(every port `ray start` lets one choose), in a temp dir of its own (so `ray_current_cluster`
and the session files never touch /tmp/ray, and nothing else on the machine joins by
accident). Every address passed or connected to is 127.0.0.1, and the dashboard and
Serve's HTTP proxies listen there only. Ray itself registers a node given 127.0.0.1 under
the machine's IP (``services.resolve_ip_for_localhost``) and binds its gRPC servers on all
interfaces; `ray start` has no option against either.
Stopping a node signals its process group *and* every process it had spawned (Ray's
workers put themselves in process groups of their own), by PID, never by name.

Token authentication is on, with a token made for the cluster: every node and every
CLI call gets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (Ray's token loader reads
``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``); HTTP calls
to the dashboard carry ``Authorization: Bearer <token>`` as the `serve` CLI's do.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.support.paths import REPO
from tests.support.serve import RAY_DEFAULT_PORTS

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
SERVE = str(BIN / "serve")
HOST = "127.0.0.1"
APP = "animegan"


# --- ports ----------------------------------------------------------------------------


# Every port handed out in this session: a port picked for one server and not bound yet
# (a worker node's proxy, started after its node's own ports were picked) must not be
# picked again for another (the kernel may offer a just-closed port anew).
_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held together while picked),
    none handed out before in this session."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)  # held, so the kernel offers another port next
            if sock.getsockname()[1] not in _HANDED_OUT | RAY_DEFAULT_PORTS:
                ports.append(sock.getsockname()[1])
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_range(size: int = 48, low: int = 20_000, high: int = 32_000) -> tuple[int, int]:
    """A run of ``size`` free ports for a node's workers, below the kernel's ephemeral
    range (so ports other programs get from the kernel do not land in it)."""
    rng = random.SystemRandom()
    for _ in range(100):
        base = rng.randrange(low, high - size)
        run = range(base, base + size)
        if _HANDED_OUT.isdisjoint(run) and all(_bindable(port) for port in run):
            _HANDED_OUT.update(run)
            return base, base + size - 1
    raise RuntimeError(f"no {size} consecutive free ports in {low}..{high}")


# --- one node ----------------------------------------------------------------------------


class RayNode:
    """One `ray start --block` process and everything it spawns."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [RAY, "start", "--block", *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def wait_started(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray node {self.name} exited early:\n{self.log_tail()}")
            if "Ray runtime started" in self.log_tail(100_000):
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"ray node {self.name} did not start in {timeout_s} s:\n{self.log_tail()}"
        )

    def _tree(self) -> list[psutil.Process]:
        """The `ray start` process and all its descendants (GCS, raylet, workers, ...)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
        """Signal the node's process group and every descendant (by PID); SIGKILL what is
        left after ``grace_s``. SIGKILL at once is what losing a machine looks like."""
        tree = self._tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
        for proc in tree:
            # psutil checks the PID still names the same process (create time) first.
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL, grace_s=5.0)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


# --- a cluster ------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """A head and any number of worker nodes, all on 127.0.0.1, under one short temp dir."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp")))
    nodes: list[RayNode] = field(default_factory=list)
    gcs_address: str | None = None
    dashboard_url: str | None = None

    def __post_init__(self) -> None:
        # /tmp/rc-XXXXXXXX: short, because Ray's Unix socket paths live under the temp dir.
        self.token = secrets.token_hex(32)
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        (self.serve_port,) = free_ports(1)

    # environment

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What every node and CLI call of this cluster runs with."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        python_path = [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=os.pathsep.join(python_path),  # workers import tests.cluster.registry_app
            # The scripts a test runs find this Python's `ray` and `serve` first, whether
            # or not its environment is activated.
            PATH=os.pathsep.join(filter(None, [str(BIN), env.get("PATH")])),
        )
        env.update(extra or {})
        return env

    def cli_env(self) -> dict[str, str]:
        assert self.gcs_address, "start the head first"
        return self.env({"RAY_ADDRESS": self.gcs_address})

    def _node_args(self, name: str, num_cpus: int, resources: dict[str, float] | None) -> list:
        node_manager, object_manager, metrics, agent_http, agent_grpc, runtime_env = free_ports(6)
        low, high = free_port_range()
        temp_dir = self.root / name
        temp_dir.mkdir()
        return [
            f"--node-ip-address={HOST}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources or {})}",
            f"--temp-dir={temp_dir}",
            "--object-store-memory=100000000",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
        ]

    # nodes

    def start_head(
        self,
        num_cpus: int = 2,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> RayNode:
        gcs_port, dashboard_port, client_port = free_ports(3)
        args = [
            "--head",
            f"--port={gcs_port}",
            "--include-dashboard=true",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={client_port}",
            "--disable-usage-stats",
            *self._node_args("head", num_cpus, resources),
        ]
        node = RayNode("head", args, self.env(env), self.root / "head.log")
        self.nodes.append(node)
        node.wait_started(timeout_s)
        self.gcs_address = f"{HOST}:{gcs_port}"
        self.dashboard_url = f"http://{HOST}:{dashboard_port}"
        wait_for(lambda: self._dashboard_up(), timeout_s, "the dashboard to answer")
        return node

    def add_worker(
        self,
        name: str = "worker",
        num_cpus: int = 1,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> RayNode:
        assert self.gcs_address, "start the head first"
        before = len(self.alive_nodes())
        args = [f"--address={self.gcs_address}", *self._node_args(name, num_cpus, resources)]
        node = RayNode(name, args, self.env(env), self.root / f"{name}.log")
        self.nodes.append(node)
        node.wait_started(timeout_s)
        wait_for(lambda: len(self.alive_nodes()) > before, timeout_s, f"node {name} to join")
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # talking to it

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _dashboard_up(self) -> bool:
        try:
            response = httpx.get(
                f"{self.dashboard_url}/api/serve/applications/",
                headers=self.auth_headers(),
                timeout=5,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def api(self, path: str) -> Any:
        """GET a dashboard REST path (JSON), authenticated."""
        response = httpx.get(f"{self.dashboard_url}{path}", headers=self.auth_headers(), timeout=30)
        response.raise_for_status()
        return response.json()

    def alive_nodes(self) -> list[dict]:
        nodes = self.api("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]
        return [node for node in nodes if node["state"] == "ALIVE"]

    def run(
        self, *command: str, timeout_s: float = 180.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """A CLI command against this cluster; raises with its output if it fails."""
        result = subprocess.run(
            list(command),
            env={**self.cli_env(), **(env or {})},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
        return result

    def serve_deploy(self, config: Path) -> None:
        self.run(SERVE, "deploy", str(config), "-a", self.dashboard_url)

    def remove_apps(self, timeout_s: float = 120.0) -> None:
        """Deploy an empty config: every app goes, Serve and its proxies stay."""
        empty = serve_config(self.serve_port, {}, {})
        empty["applications"] = []
        self.serve_deploy(write_config(self.root / "no-apps.yaml", empty))
        wait_for(
            lambda: not self.serve_details().get("applications"),
            timeout_s,
            "the apps to be deleted",
        )

    def serve_status(self) -> dict:
        return yaml.safe_load(self.run(SERVE, "status", "-a", self.dashboard_url).stdout)

    def serve_details(self) -> dict:
        """The dashboard's Serve details: per-replica state, node and actor ids."""
        return self.api("/api/serve/applications/")

    def replicas(self, deployment: str, states: Iterable[str] = ("RUNNING",)) -> list[dict]:
        app = self.serve_details().get("applications", {}).get(APP)
        if not app:
            return []
        replicas = app["deployments"].get(deployment, {}).get("replicas", [])
        return [r for r in replicas if r["state"] in set(states)]

    def app_status(self) -> str | None:
        # The dashboard's REST API, not `serve status`: each CLI call costs seconds of CPU.
        app = self.serve_details().get("applications", {}).get(APP)
        return app["status"] if app else None

    def wait_app_running(self, timeout_s: float = 180.0) -> None:
        def running() -> bool:
            status = self.app_status()
            if status == "DEPLOY_FAILED":
                app = self.serve_details()["applications"][APP]
                raise RuntimeError(f"deploy failed: {app.get('message')}")
            return status == "RUNNING"

        wait_for(running, timeout_s, "the app to be RUNNING", interval_s=1.0)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.serve_port}"


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.3
) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, RuntimeError, KeyError) as error:
            if isinstance(error, RuntimeError) and "deploy failed" in str(error):
                raise
            last_error = error
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} (last: {last_error})")


# --- configs ------------------------------------------------------------------------------


def serve_config(
    port: int,
    args: dict,
    stylizer: dict,
    *,
    import_path: str = "serve_app.app:build_app",
    ingress: dict | None = None,
    proxy_location: str = "EveryNode",
    runtime_env: dict | None = None,
) -> dict:
    application: dict[str, Any] = {
        "name": APP,
        "route_prefix": "/",
        "import_path": import_path,
        "args": args,
        "deployments": [
            {
                "name": "Ingress",
                "num_replicas": 1,
                "max_ongoing_requests": 64,
                "max_queued_requests": 256,
                "ray_actor_options": {"num_cpus": 0},
                **(ingress or {}),
            },
            {"name": "Stylizer", **stylizer},
        ],
    }
    if runtime_env:
        application["runtime_env"] = runtime_env
    return {
        "proxy_location": proxy_location,
        "http_options": {"host": HOST, "port": port},
        "applications": [application],
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- load -------------------------------------------------------------------------------


@dataclass
class Outcome:
    at: float
    status: int  # 0: no HTTP answer at all (connection error, client timeout)
    cache: str | None
    error: str = ""


class Load:
    """Client threads posting pictures until stopped; every outcome is kept."""

    def __init__(
        self,
        base_url: str,
        pictures: Callable[[int], bytes],
        concurrency: int,
        params: dict | None = None,
        pause_s: float = 0.0,
    ):
        self._base_url = base_url
        self._pictures = pictures
        self._params = params or {}
        self._pause_s = pause_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0
        self.outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _next(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _run(self) -> None:
        with httpx.Client(base_url=self._base_url, timeout=90) as client:
            while not self._stop.is_set():
                data = self._pictures(self._next())
                try:
                    response = client.post(
                        "/v1/stylize", params=self._params, files={"image": ("p.jpg", data)}
                    )
                    outcome = Outcome(
                        time.monotonic(),
                        response.status_code,
                        response.headers.get("x-cache"),
                        "" if response.status_code == 200 else response.text[:300],
                    )
                except httpx.HTTPError as error:
                    outcome = Outcome(time.monotonic(), 0, None, f"{type(error).__name__}: {error}")
                with self._lock:
                    self.outcomes.append(outcome)
                if self._pause_s:
                    self._stop.wait(self._pause_s)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status != 200]

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)


# --- a weights mirror -----------------------------------------------------------------------


class FileServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 and counts the GETs per path.

    The nodes of a test cluster get different ``ANIMEGAN_WEIGHTS_URL`` prefixes
    (``/head``, ``/worker``), so the counts say which node fetched a file how often.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        self.delay_s = delay_s
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.gets[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                time.sleep(server.delay_s)  # a slow mirror: concurrent fetchers overlap
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def count(self, path: str) -> int:
        with self._lock:
            return self.gets[path]

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def node_weights_env(cluster: LocalCluster, mirror: FileServer, node: str) -> dict[str, str]:
    """Per node, as on real machines: its own weights cache dir; and its own mirror prefix,
    so the mirror's counts tell the nodes apart."""
    return {
        "ANIMEGAN_WEIGHTS_DIR": str(cluster.root / f"weights-{node}"),
        "ANIMEGAN_WEIGHTS_URL": f"{mirror.url}/{node}",
    }
