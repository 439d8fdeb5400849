"""Cold start: `serve run <config>` to the first HTTP 200, this app against a bare Serve app.

    python -m load_tests.cold_start                      # serve_config.yaml, 3 runs each
    python -m load_tests.cold_start --config configs/dev.yaml --repetitions 5 --keep-logs DIR

Each run is a fresh local Ray (``RAY_ADDRESS=local``) in a temp dir of its own
(``RAY_TMPDIR``: its session files and logs never touch /tmp/ray, which other Ray
instances on the machine use), on a free 127.0.0.1 port. The two apps take turns, run
after run, so that both see the same machine (page cache, load). Measured from the
`serve run` process's start to the first 200:

- ``hello``: ``load_tests/hello_app.py`` (one deployment answering "hello"), GET /;
- ``animegan``: the given config as the benchmark runs it (random weights, no example
  warming, a fixed number of Stylizer replicas: one per ``num_cpus`` the machine has),
  POST /v1/stylize of a benchmark-sized upload at 256 px.

Every run is stopped as the benchmark stops its server: SIGINT to `serve run` (which then
shuts down the Ray instance it started), then every process left of its tree or naming its
temp dir is killed, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from load_tests.workloads import CONTENT_TYPE, load_samples, multipart, variant

logger = logging.getLogger("load_tests.cold_start")

REPO = Path(__file__).resolve().parents[1]
SERVE = str(Path(sys.executable).with_name("serve"))
HOST = "127.0.0.1"
TARGET_RATIO = 1.5
FIRST_200_TIMEOUT_S = 300.0
POLL_S = 0.1


@dataclass(frozen=True)
class Probe:
    """What a run polls until it answers 200."""

    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None


# --------------------------------------------------------------------------- configs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stylizer_cpus(config: dict) -> int:
    for deployment in config["applications"][0].get("deployments", []):
        if deployment["name"] == "Stylizer":
            return max(1, int(deployment.get("ray_actor_options", {}).get("num_cpus", 1)))
    return 1


def app_config(base: dict, port: int) -> dict:
    """``base`` as the benchmark serves it: random weights, no examples warmed, Stylizer
    replicas pinned to the machine's CPUs (no autoscaling), a free 127.0.0.1 port."""
    config = copy.deepcopy(base)
    config["http_options"] = {**config.get("http_options", {}), "host": HOST, "port": port}
    service = config["applications"][0]
    service["args"].pop("warm_examples", None)
    for style in service["args"]["styles"]:
        style["weights"] = "random"
    replicas = max(1, len(os.sched_getaffinity(0)) // stylizer_cpus(base))
    for deployment in service.get("deployments", []):
        if deployment["name"] == "Stylizer":
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = replicas
    return config


def hello_config(base: dict, port: int) -> dict:
    """The bare app under the same proxy, HTTP and logging options as ``base``'s app."""
    service = base["applications"][0]
    hello = {"name": "hello", "route_prefix": "/", "import_path": "load_tests.hello_app:app"}
    if "logging_config" in service:
        hello["logging_config"] = copy.deepcopy(service["logging_config"])
    return {
        "proxy_location": base.get("proxy_location", "EveryNode"),
        "http_options": {**base.get("http_options", {}), "host": HOST, "port": port},
        "applications": [hello],
    }


def upload() -> bytes:
    """One benchmark-sized photo (the canvas the benchmark uploads), always the same."""
    return variant(load_samples()[0], random.Random(0))


# --------------------------------------------------------------------------- one run


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def _naming(text: str) -> list[psutil.Process]:
    """Processes whose command line names ``text`` (this run's Ray temp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(text in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
    return found


@contextlib.contextmanager
def server(
    argv: list[str], env: dict[str, str], log_path: Path, naming: str | None = None
) -> Iterator[subprocess.Popen]:
    """A server in a session of its own. On the way out: SIGINT (``serve run`` then shuts
    Serve and its local Ray down), then SIGKILL to whatever is left of its process tree or
    names ``naming`` in its command line, each by process id (Ray's workers leave the
    server's process group)."""
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=take_sigint,
        )
    try:
        yield popen
    finally:
        _stop(popen, naming)


def take_sigint() -> None:
    """In a server's process, before it starts: SIGINT back to its default action. Run in
    the background by a shell (as CI runs things), this process ignores SIGINT, and an
    ignored signal stays ignored across exec: `serve run` would not stop on it, and every
    stop would wait out its grace before killing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(popen: subprocess.Popen, naming: str | None) -> None:
    tree = _tree(popen.pid)
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(60)
    _, alive = psutil.wait_procs(tree, timeout=10)
    named = _naming(naming) if naming else []
    leftovers = {proc.pid: proc for proc in [*alive, *named]}
    for proc in leftovers.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(leftovers.values()), timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(10)
    if leftovers:
        logger.warning("%s: killed leftover processes %s", popen.args[:3], sorted(leftovers))


@contextlib.contextmanager
def serve_run(config_path: Path, ray_tmp: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """`serve run` on a fresh local Ray in ``ray_tmp``; stopped (by PID) on the way out."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": python_path,
        "RAY_ADDRESS": "local",
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with server([SERVE, "run", str(config_path)], env, log_path, naming=str(ray_tmp)) as popen:
        yield popen


def first_200(url: str, probe: Probe, popen: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + FIRST_200_TIMEOUT_S
    headers = {"Content-Type": probe.content_type} if probe.content_type else {}
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"serve run exited with {popen.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.request(
                probe.method, url, content=probe.body, headers=headers, timeout=60
            )
            if response.status_code == 200:
                return
        time.sleep(POLL_S)
    raise TimeoutError(f"no 200 from {url} within {FIRST_200_TIMEOUT_S:g} s; see {log}")


def cold_start_s(config: dict, probe: Probe, run_dir: Path) -> float:
    """Seconds from `serve run` to the first 200 of ``probe``; logs stay in ``run_dir``."""
    run_dir.mkdir(parents=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = config["http_options"]["port"]
    prefix = config["applications"][0].get("route_prefix", "/").rstrip("/")
    ray_tmp, log = run_dir / "ray", run_dir / "serve_run.log"
    ray_tmp.mkdir()
    started = time.monotonic()
    with serve_run(config_path, ray_tmp, log) as popen:
        first_200(f"http://{HOST}:{port}{prefix}{probe.path}", probe, popen, log)
        return time.monotonic() - started


# --------------------------------------------------------------------------- the figures


def summary(times: list[float]) -> dict:
    return {
        "runs_s": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2),
        "min_s": round(min(times), 2),
        "max_s": round(max(times), 2),
        "spread_s": round(max(times) - min(times), 2),
    }


def measure_cold_starts(
    app_config_path: Path, repetitions: int = 3, keep_logs: Path | None = None
) -> dict:
    """`serve run` to the first 200 for the bare app and for ``app_config_path`` (as the
    benchmark serves it), ``repetitions`` fresh starts each, taking turns.

    Returns ``{"hello": {...}, "animegan": {...}, "ratio": median animegan / median hello,
    "target_ratio": 1.5, "meets_target": bool}``, each app's figures as ``summary()``
    makes them. ``keep_logs``: a directory to keep each run's config, `serve run` output
    and Ray session logs in (for the Serve logs' timeline); otherwise a temp dir, removed.
    """
    base = yaml.safe_load(app_config_path.read_text())
    probes = {
        "hello": Probe("GET", "/"),
        "animegan": Probe(
            "POST", "/v1/stylize?size=256&format=png", multipart(upload()), CONTENT_TYPE
        ),
    }
    configs = {"hello": hello_config, "animegan": app_config}
    # Short: Ray's Unix socket paths live under it (107 bytes at most).
    work = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    times: dict[str, list[float]] = {name: [] for name in probes}
    try:
        for rep in range(repetitions):
            for name, probe in probes.items():
                config = configs[name](base, free_port())
                seconds = cold_start_s(config, probe, work / f"{name}-{rep}")
                times[name].append(seconds)
                logger.info("%s run %d: first 200 after %.1f s", name, rep + 1, seconds)
    finally:
        if keep_logs is not None:
            ignore = shutil.ignore_patterns("sockets", "session_latest")
            shutil.copytree(work, keep_logs, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    figures = {name: summary(values) for name, values in times.items()}
    ratio = figures["animegan"]["median_s"] / figures["hello"]["median_s"]
    return {
        **figures,
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "config": str(app_config_path),
        "repetitions": repetitions,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--keep-logs", type=Path, help="keep every run's logs under this dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    result = measure_cold_starts(args.config, args.repetitions, args.keep_logs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
