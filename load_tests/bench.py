"""The benchmark: the model's own limit, the service, the framework floor and a naive Flask
baseline, side by side in one run on one machine.

    python -m load_tests.bench            # the full run (about 16 min on 2 cores)
    python -m load_tests.bench --quick    # a smoke run: a few requests per point
    python -m load_tests.bench --only live   # some parts alone (PARTS below; see --help)

In order, each part alone on the machine:

1. the model limit: the bare generator (random weights, the runtime the Stylizer picks) in
   as many processes × threads as the service has Stylizer replicas × CPUs, at 256 and
   512 px, on the very input shapes the service feeds it;
   then portrait mode's face search against the model's 512 px pass
   (``load_tests/portrait_bench.py``) and large prints tiled against whole
   (``load_tests/tiling_bench.py``: speed and each process's peak RSS);
2. ``serve run`` of a temporary copy of ``serve_config.yaml`` (random weights, Stylizer
   replicas pinned to that process count, a free 127.0.0.1 port, the framework floor as a
   second application) with RAY_ADDRESS=local: the time to its first 200, then unique
   photos, a mixed workload, and cache hits each next to the floor, videos as jobs
   (``load_tests/job_bench.py``), live camera streams over the WebSocket at 1, 4 and 8
   streams with photos beside them (``load_tests/live_bench.py``); then it is stopped;
3. the Flask baseline (``load_tests/flask_reference.py``) on the mixed workload;
4. the job store at scale (``load_tests/store_bench.py``): per repetition a `serve run`
   with an empty job store, filled to 10,000 jobs (submit and read p50s, start against
   end), then a video job followed by many event streams (each event's delay from its
   write; the record store's reads meanwhile).

Every figure is measured ``--repeats`` times; each target ratio is taken within one
repetition, then reported as the median over them with the range. Writes
``docs/benchmarks.md`` and ``load_tests/results/bench.json``; a run of some parts alone
(``--only``, with the model limits they are measured against) writes
``bench-<parts>.json`` and ``benchmarks-<parts>.md`` into the results folder instead.

What is measured and how it is reported: ``load_tests/bench_report.py``.

Longer than most modules, on purpose: it is the benchmark's one run, each part a step
whose order and isolation (each part alone on the machine) the figures depend on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import yaml

from load_tests import (
    cold_start,
    cpu_profile,
    job_bench,
    live_bench,
    portrait_bench,
    store_bench,
    tiling_bench,
)
from load_tests.bench_report import (
    FLOOR_PREFIX,
    HOT_RATIO,
    HOT_SET,
    MIXED_CLIENTS,
    MIXED_SIZE,
    PARTS,
    PIPELINE_UPLOADS,
    SIZES,
    figures_table,
    machine,
    markdown,
    partial_run,
    targets,
    targets_list,
)
from load_tests.cold_start import free_port, server, stylizer_cpus
from load_tests.loadgen import run_point
from load_tests.workloads import (
    CANVAS,
    CONTENT_TYPE,
    SAMPLES,
    Uploads,
    UploadSource,
    load_samples,
    multipart,
    repeated,
)
from serve_app.config import BatchConfig, MediaConfig
from serve_app.imaging.pixels import target_dimensions

logger = logging.getLogger("load_tests.bench")

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    model_s: float  # measured seconds of each model-limit figure, after one warm-up pass
    phases: dict[str, tuple[float, float]]  # workload: (warm-up s, measured s)
    variants: int  # pixel variants of the sample photos


FULL = Plan(
    3.0, {"misses 256": (3, 10), "misses 512": (5, 15), "mixed": (4, 15), "hits": (2, 8)}, 24
)
QUICK = Plan(
    0.3,
    {"misses 256": (0.3, 1.2), "misses 512": (0.3, 1.7), "mixed": (0.5, 3.0), "hits": (0.2, 0.6)},
    6,
)


# --------------------------------------------------------------------------- the model


def _model_worker(conn, barrier, threads: int) -> None:
    """One process of the model limit: the generator as a Stylizer builds it (random
    weights, the runtime ``auto`` resolves to here) on a ready tensor, no serving."""
    import torch

    from serve_app.model.generator import StyleModel, random_generator, select_runtime

    torch.set_num_threads(threads)
    model = StyleModel(random_generator(seed=0), select_runtime("auto", "auto"))
    conn.send(model.runtime.precision)
    while (job := conn.recv()) is not None:
        if job[0] == "pipeline":
            conn.send(_pipeline_rate(model, *job[1:], barrier))
            continue
        if job[0] == "trace":  # the Flask baseline's model: the same weights, fp32 TorchScript
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = torch.rand(1, 3, 256, 256) * 2 - 1
                torch.jit.trace(random_generator(seed=0).eval(), example).save(job[1])
            conn.send(None)
            continue
        _, (width, height), batch_size, min_s = job
        batch = torch.rand(batch_size, 3, height, width) * 2 - 1
        model(batch)  # the first pass at a shape builds the oneDNN kernels
        barrier.wait(timeout=600)  # the processes run at once: their rates add up
        passes, start = 0, time.perf_counter()
        while passes < 1 or time.perf_counter() - start < min_s:
            model(batch)
            passes += 1
        conn.send(passes * batch_size / (time.perf_counter() - start))


def _pipeline_rate(model, uploads: list[bytes], size: int, min_s: float, barrier) -> float:
    """Pictures a second through what the service does to a miss, in this process: the
    upload decoded and resized, the model, the PNG encoded (no HTTP, no Ray, no cache)."""
    from serve_app.config import ImageLimits
    from serve_app.imaging import decode, pixels
    from serve_app.model import tensors

    limits = ImageLimits()

    def one(data: bytes) -> bytes:
        decoded = decode.decode_resized(data, limits, size)
        rgb = tensors.from_model_batch(model(tensors.to_model_batch([decoded.rgb])))[0]
        return pixels.encode_image(rgb, decoded.alpha, "png", None)

    one(uploads[0])  # this shape's kernels
    barrier.wait(timeout=600)
    done, start = 0, time.perf_counter()
    while done < 1 or time.perf_counter() - start < min_s:
        one(uploads[done % len(uploads)])
        done += 1
    return done / (time.perf_counter() - start)


class ModelWorkers:
    """``processes`` spawned worker processes of ``threads`` torch threads each."""

    def __init__(self, processes: int, threads: int):
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(processes)
        self._pipes, self._procs = [], []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_model_worker, args=(theirs, barrier, threads))
            proc.start()
            self._pipes.append(ours)
            self._procs.append(proc)
        self.precision = [pipe.recv() for pipe in self._pipes].pop()

    def images_per_s(self, size: int, min_s: float, canvas=CANVAS, batch: int = 1) -> float:
        for pipe in self._pipes:
            pipe.send(("measure", target_dimensions(*canvas, size), batch, min_s))
        return sum(pipe.recv() for pipe in self._pipes)

    def pipeline_per_s(self, uploads: list[bytes], size: int, min_s: float) -> float:
        for pipe in self._pipes:
            pipe.send(("pipeline", uploads, size, min_s))
        return sum(pipe.recv() for pipe in self._pipes)

    def trace(self, path: Path) -> None:
        self._pipes[0].send(("trace", str(path)))
        self._pipes[0].recv()

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


# --------------------------------------------------------------------------- servers


def first_200(url: str, data: bytes, popen: subprocess.Popen, log: Path, timeout_s: float) -> bytes:
    """POST ``data`` until a 200 comes back; its body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{popen.args[:3]} exited with {popen.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            body, headers = multipart(data), {"Content-Type": CONTENT_TYPE}
            response = httpx.post(url, content=body, headers=headers, timeout=60)
            if response.status_code == 200:
                return response.content
        time.sleep(0.2)
    raise TimeoutError(f"no 200 from {url} within {timeout_s:g} s; see {log}")


def bench_config(base: dict, port: int, floor_body: Path) -> dict:
    """The service's config as the cold start measures it (random weights, Stylizers
    pinned to the machine's CPUs, no examples warmed: a one-off start-up cost that would
    share the model with the first workload, a free port), plus the floor (logging as the
    service's: neither pays for an access log the other skips)."""
    config = cold_start.app_config(base, port)
    service = config["applications"][0]
    floor = {"name": "floor", "route_prefix": FLOOR_PREFIX, "args": {"body_path": str(floor_body)}}
    floor["import_path"] = "load_tests.floor_app:build_floor"
    if "logging_config" in service:
        floor["logging_config"] = service["logging_config"]
    config["applications"].append(floor)
    return config


def stylizer_batch(config: dict) -> int:
    """The largest batch the service's Stylizer forms (its user_config; with ``auto``, the
    largest it may pick)."""
    for deployment in config["applications"][0].get("deployments", []):
        if deployment["name"] == "Stylizer":
            return BatchConfig.model_validate(deployment.get("user_config", {})).largest_batch
    return BatchConfig().largest_batch


# --------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.plan = QUICK if args.quick else FULL
        self.points: dict[str, list[dict]] = {}
        self.dir = args.results_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uploads = Uploads(load_samples(args.photos), self.plan.variants, f"{time.time_ns()}")
        self.hot_sets = [
            [self.uploads.unique() for _ in range(HOT_SET)] for _ in range(args.repeats)
        ]
        self.base = yaml.safe_load(args.config.read_text())
        self.threads = stylizer_cpus(self.base)
        media = self.base["applications"][0]["args"].get("media", {})
        self.frame_batch = media.get("frame_batch", MediaConfig().frame_batch)
        self.replicas = max(1, len(os.sched_getaffinity(0)) // self.threads)
        self.stylizer_batch = stylizer_batch(self.base)
        self.parts = set(args.only or PARTS)
        live = live_bench.QUICK if args.quick else live_bench.FULL
        given = {
            "streams": tuple(args.live_streams) if args.live_streams else None,
            "warmup_s": args.live_warmup_s,
            "measure_s": args.live_measure_s,
        }
        self.live_plan = replace(
            live, **{key: value for key, value in given.items() if value is not None}
        )

    def point(self, name: str, url: str, source: UploadSource, clients: int, phase: str) -> None:
        figures = run_point(url, source, clients, *self.plan.phases[phase])
        self.points.setdefault(name, []).append(figures)
        logger.info("%s c%d: %s", name, clients, json.dumps(figures))

    def model_limit(self) -> str | None:
        """The model limits the selected parts are measured against (None: none is)."""
        if not self.parts & {"service", "jobs", "live", "flask"}:
            return None
        workers = ModelWorkers(self.replicas, self.threads)
        try:
            for _ in range(self.args.repeats):
                for size in SIZES if "service" in self.parts else ():
                    rate = workers.images_per_s(size, self.plan.model_s)
                    self.points.setdefault(f"model {size}", []).append(self.in_process(rate))
                    logger.info("model %d px: %.2f img/s", size, rate)
                    uploads = [self.uploads.unique() for _ in range(PIPELINE_UPLOADS)]
                    rate = workers.pipeline_per_s(uploads, size, self.plan.model_s)
                    self.points.setdefault(f"pipeline {size}", []).append(self.in_process(rate))
                    logger.info("pipeline %d px: %.2f img/s", size, rate)
                if "jobs" in self.parts:
                    rates = {
                        batch: workers.images_per_s(
                            job_bench.FRAME_SIZE, self.plan.model_s, job_bench.SOURCE, batch
                        )
                        for batch in (1, self.frame_batch)
                    }
                    by_batch = {f"batch_{batch}": rate for batch, rate in rates.items()}
                    self.points.setdefault("model frames", []).append(
                        {"rps": max(rates.values()), **by_batch}
                    )
                    logger.info("model, jobs' frames: %s img/s by batch size", rates)
                if "live" in self.parts:
                    self.live_model_limit(workers)
            if "flask" in self.parts:
                workers.trace(self.dir / "flask_generator.pt")
            return workers.precision
        finally:
            workers.close()

    def in_process(self, rate: float) -> dict:
        """An in-process figure: its rate, and its CPU ms per picture (each of its
        processes is one busy thread)."""
        return {"rps": rate, "cpu_ms": 1e3 * self.replicas * self.threads / rate}

    def live_model_limit(self, workers: ModelWorkers) -> None:
        """The model at the live frames' shape, batch 1 (one frame of a stream at a time)
        and the Stylizer's batch (frames of many streams); one pass's time at batch 1."""
        size, frame = live_bench.SIZE, live_bench.FRAME
        rates = {
            batch: workers.images_per_s(size, self.plan.model_s, frame, batch)
            for batch in sorted({1, self.stylizer_batch})
        }
        figures = {f"batch_{batch}": rate for batch, rate in rates.items()}
        figures |= {"rps": max(rates.values()), "pass_ms": 1e3 * self.replicas / rates[1]}
        self.points.setdefault("model live", []).append(figures)
        logger.info("model, live frames: %s", json.dumps(figures))

    def live(self, root: str, photo_url: str) -> None:
        url = "ws" + root.removeprefix("http") + f"/v1/live?size={live_bench.SIZE}"
        frames = live_bench.make_frames(load_samples(self.args.photos))
        points = live_bench.run(
            url,
            photo_url,
            self.uploads.unique,
            frames,
            self.live_plan,
            self.args.repeats,
            lambda name, figures: logger.info("%s: %s", name, json.dumps(figures)),
        )
        for name, runs in points.items():
            self.points.setdefault(name, []).extend(runs)
        live_bench.add_bounds(self.points)

    def service(self) -> tuple[float, dict]:
        port, body = free_port(), self.dir / "floor_body.png"
        body.unlink(missing_ok=True)
        config_path = self.dir / "bench_serve_config.yaml"
        config = bench_config(self.base, port, body)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        prefix = config["applications"][0].get("route_prefix", "/").rstrip("/")
        root = f"http://127.0.0.1:{port}{prefix}"
        url = {size: f"{root}/v1/stylize?size={size}&format=png" for size in SIZES}
        floor = f"http://127.0.0.1:{port}{FLOOR_PREFIX}/stylize"
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "RAY_ADDRESS": "local",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        argv = [str(Path(sys.executable).with_name("serve")), "run", str(config_path)]
        hit, log = self.uploads.unique(), self.dir / "serve.log"
        started = time.monotonic()
        with server(argv, env, log) as popen:
            body.write_bytes(first_200(url[MIXED_SIZE], hit, popen, log, 300))
            first_200_s = time.monotonic() - started
            logger.info("serve run: first 200 after %.1f s", first_200_s)
            if "service" in self.parts:
                first_200(floor, hit, popen, log, 120)
                self.photos(popen.pid, url, floor, hit)
            if "jobs" in self.parts:
                logger.info("jobs: videos next to single photos")
                jobs = job_bench.run(
                    root, url[256], self.uploads.unique, self.args.repeats, self.args.quick
                )
                for figures in jobs["runs"]:
                    figures["resubmit_s"] = figures["resubmit_ms"] / 1e3
                    self.points.setdefault("job", []).append(figures)
                    logger.info("jobs: %s", json.dumps(figures))
            if "live" in self.parts:
                logger.info("live: camera streams over the WebSocket, photos beside them")
                self.live(root, url[256])
            stats = httpx.get(f"{root}/v1/stats", timeout=30).json()
        return first_200_s, stats

    def photos(self, pid: int, url: dict[int, str], floor: str, hit: bytes) -> None:
        """The service's photo points, each repetition in turn."""
        for rep in range(self.args.repeats):
            for size in SIZES:
                name, clients = f"misses {size}", 2 * self.replicas
                before = cpu_profile.snapshot(pid)
                self.point(name, url[size], self.uploads.unique, clients, name)
                after = cpu_profile.snapshot(pid)
                # The snapshots span the whole point, its warm-up too: so do the pictures.
                point = self.points[name][-1]
                profile = cpu_profile.ms_per_picture(before, after, point["ok_all"])
                point["cpu_ms_per_picture"] = profile
                point["model_replicas_cpu_ms"] = profile.get(cpu_profile.MODEL_REPLICAS)
            mixed = self.uploads.mixed(self.hot_sets[rep], HOT_RATIO, seed=rep)
            self.point("mixed", url[MIXED_SIZE], mixed, MIXED_CLIENTS, "mixed")
            for clients in (1, 8):  # each next to the floor, so that both see the same load
                self.point(f"hits c{clients}", url[MIXED_SIZE], repeated(hit), clients, "hits")
                self.point(f"floor c{clients}", floor, repeated(hit), clients, "hits")

    def flask(self) -> None:
        port, log = free_port(), self.dir / "flask.log"
        env = {**os.environ, "ANIMEGAN_TS": str(self.dir / "flask_generator.pt"), "PORT": f"{port}"}
        url = f"http://127.0.0.1:{port}/transform"
        argv = [sys.executable, str(REPO / "load_tests" / "flask_reference.py")]
        with server(argv, env, log) as popen:
            first_200(url, self.uploads.unique(), popen, log, 120)
            for rep in range(self.args.repeats):
                mixed = self.uploads.mixed(self.hot_sets[rep], HOT_RATIO, seed=rep)
                self.point("flask mixed", url, mixed, MIXED_CLIENTS, "mixed")

    def run(self, argv: list[str]) -> dict:
        started, load_start = time.monotonic(), os.getloadavg()[0]
        logger.info("model limit: %d process(es) × %d thread(s)", self.replicas, self.threads)
        precision = self.model_limit()
        results: dict = {}  # the parts' own results, beside the points
        if "portrait" in self.parts:
            logger.info("portrait mode: the face search against the model")
            results["portrait"] = portrait_bench.run(self.args.quick)
        if "tiling" in self.parts:
            logger.info("large prints: tiled against whole")
            results["tiling"] = tiling_bench.run(self.args.quick)
        if self.parts & {"service", "jobs", "live"}:
            results["cold_start_s"], results["service_stats"] = self.service()
        if "flask" in self.parts:
            self.flask()
        command = shlex.join(["python", "-m", "load_tests.bench", *argv])
        if "store" in self.parts:
            logger.info("the job store at scale: filled, then a job followed")
            store = store_bench.run(
                self.base, self.args.repeats, self.args.quick, self.dir, command
            )
            results["store"] = store
        if "cold-start" in self.parts:
            logger.info("cold start: this app against a bare Serve app, taking turns")
            results["cold_starts"] = self.cold_starts()
        return {
            **results,
            "meta": {
                "command": command,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                "elapsed_s": time.monotonic() - started,
                "quick": self.args.quick,
                "config": self.args.config.name,
                "repeats": self.args.repeats,
                "machine": machine(),
                "loadavg": [load_start, os.getloadavg()[0]],
                "layout": {"processes": self.replicas, "threads": self.threads},
                "precision": precision,
                "frame_batch": self.frame_batch,
                "plan": {"model_s": self.plan.model_s, "phases": self.plan.phases},
                "live_plan": live_bench.plan_figures(self.live_plan),
                "parts": [part for part in PARTS if part in self.parts],
            },
            "points": self.points,
            "targets": targets(self.points, self.args.repeats),
        }

    def cold_starts(self) -> dict:
        starts = cold_start.measure_cold_starts(self.args.config, self.args.repeats)
        for app_s, hello_s in zip(
            starts["animegan"]["runs_s"], starts["hello"]["runs_s"], strict=True
        ):
            self.points.setdefault("cold start", []).append({"app_s": app_s, "hello_s": hello_s})
        return starts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds per point")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every figure")
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--photos", type=Path, default=SAMPLES, help="1.jpg, 2.jpg, 3.jpg")
    parser.add_argument(
        "--out",
        type=Path,
        help="benchmarks.md goes here (default: docs/; with --only, the results folder)",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "load_tests" / "results")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        metavar="PART",
        help=f"run these parts alone ({', '.join(PARTS)}), with the model limits they are "
        "measured against; writes bench-<parts>.json and benchmarks-<parts>.md",
    )
    live = parser.add_argument_group("the live workload (default: the run's plan)")
    live.add_argument("--live-streams", type=int, nargs="+", metavar="N", help="stream counts")
    live.add_argument("--live-warmup-s", type=float, help="each point's warm-up, s")
    live.add_argument("--live-measure-s", type=float, help="each point's measured window, s")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if any(n < 1 for n in args.live_streams or ()) or (args.live_measure_s or 1) <= 0:
        parser.error("--live-streams and --live-measure-s must be positive")
    if (args.live_warmup_s or 0) < 0:
        parser.error("--live-warmup-s must be 0 or more")
    args.results_dir = args.results_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    # SIGTERM unwinds like Ctrl-C, so that the servers started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Bench(args).run(argv)
    # A run of some parts never replaces the full run's files.
    suffix = "-" + "-".join(results["meta"]["parts"]) if partial_run(results) else ""
    out = args.out or (args.results_dir if suffix else REPO / "docs")
    (args.results_dir / f"bench{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"benchmarks{suffix}.md").write_text(markdown(results))
    print(targets_list(results), figures_table(results), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
