"""The benchmark: the model's own limit, the service, the framework floor and a naive Flask
baseline, side by side in one run on one machine.

    python -m load_tests.bench            # the full run (about 16 min on 2 cores)
    python -m load_tests.bench --quick    # a smoke run: a few requests per point

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
   photos, a mixed workload, and cache hits each next to the floor; then it is stopped;
3. the Flask baseline (``load_tests/flask_reference.py``) on the mixed workload;
4. the job store at scale (``load_tests/store_bench.py``): per repetition a `serve run`
   with an empty job store, filled to 10,000 jobs (submit and read p50s, start against
   end), then a video job followed by many event streams (each event's delay from its
   write; the record store's reads meanwhile).

Every figure is measured ``--repeats`` times; each target ratio is taken within one
repetition, then reported as the median over them with the range. Writes
``docs/benchmarks.md`` and ``load_tests/results/bench.json``.

Longer than most modules, on purpose: it is the benchmark's one script, each part a step of
one run whose order and isolation (each part alone on the machine) the figures depend on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from load_tests import (
    cold_start,
    cpu_profile,
    job_bench,
    portrait_bench,
    store_bench,
    tiling_bench,
)
from load_tests.cold_start import free_port, server, stylizer_cpus
from load_tests.loadgen import MIN_ANSWERS, run_point
from load_tests.report import spread, table, target
from load_tests.report import targets_table as report_targets_table
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
from serve_app.config import MediaConfig
from serve_app.imaging.pixels import target_dimensions

logger = logging.getLogger("load_tests.bench")

REPO = Path(__file__).resolve().parents[1]
SIZES = (256, 512)
MIXED_SIZE = 256
MIXED_CLIENTS = 8
HOT_SET, HOT_RATIO = 4, 0.5
FLOOR_PREFIX = "/floor"
PIPELINE_UPLOADS = 4  # unique uploads each in-process pipeline cycles through

# (target, numerator (point, field), denominator (point, field), wanted, higher is better)
TARGETS = (
    (
        "unique photos / in-process pipeline, 256 px",
        ("misses 256", "rps"),
        ("pipeline 256", "rps"),
        0.9,
        True,
    ),
    (
        "unique photos / in-process pipeline, 512 px",
        ("misses 512", "rps"),
        ("pipeline 512", "rps"),
        0.9,
        True,
    ),
    ("cache hits / floor, c8 req/s", ("hits c8", "rps"), ("floor c8", "rps"), 0.9, True),
    ("cache hits / floor, c1 p50", ("hits c1", "p50_ms"), ("floor c1", "p50_ms"), 1 / 0.9, False),
    ("mixed / Flask, c8 req/s", ("mixed", "rps"), ("flask mixed", "rps"), 3.0, True),
    ("mixed / Flask, c8 mean ms", ("mixed", "mean_ms"), ("flask mixed", "mean_ms"), 0.33, False),
    (
        "job frames/s / model limit, 256 px frames",
        ("job", "frames_per_s"),
        ("model frames", "rps"),
        0.9,
        True,
    ),
    (
        "half-still clip: model passes / frames",
        ("job", "still_model_passes"),
        ("job", "still_frames"),
        0.55,
        False,
    ),
    ("resubmitted clip: answer, s", ("job", "resubmit_s"), None, 1.0, False),
    ("cold start / bare Serve app", ("cold start", "app_s"), ("cold start", "hello_s"), 1.5, False),
    (
        "photo p50 during a job / idle",
        ("job", "photo_during_job_p50_ms"),
        ("job", "photo_idle_p50_ms"),
        2.0,
        False,
    ),
)
# point: (what, workload, px)
POINTS = {
    "model 256": ("model, in-process", "generator on a ready tensor (img/s)", "256"),
    "model 512": ("model, in-process", "generator on a ready tensor (img/s)", "512"),
    "pipeline 256": ("pipeline, in-process", "decode + resize + model + PNG encode", "256"),
    "pipeline 512": ("pipeline, in-process", "decode + resize + model + PNG encode", "512"),
    "misses 256": ("service", "unique photos (all misses)", "256"),
    "misses 512": ("service", "unique photos (all misses)", "512"),
    "mixed": ("service", f"mixed: {HOT_RATIO:.0%} from {HOT_SET} hot photos", "256"),
    "hits c1": ("service", "one photo again (cache hits)", "256"),
    "floor c1": ("framework floor", "bare route, one actor call", "–"),
    "hits c8": ("service", "one photo again (cache hits)", "256"),
    "floor c8": ("framework floor", "bare route, one actor call", "–"),
    "flask mixed": ("Flask baseline", f"mixed: {HOT_RATIO:.0%} from {HOT_SET} hot photos", "256"),
    "model frames": (
        "model, in-process",
        "generator, best of batch 1 and the jobs' batch",
        "256×144",
    ),
}


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

    def point(self, name: str, url: str, source: UploadSource, clients: int, phase: str) -> None:
        figures = run_point(url, source, clients, *self.plan.phases[phase])
        self.points.setdefault(name, []).append(figures)
        logger.info("%s c%d: %s", name, clients, json.dumps(figures))

    def model_limit(self) -> str:
        workers = ModelWorkers(self.replicas, self.threads)
        try:
            for _ in range(self.args.repeats):
                for size in SIZES:
                    rate = workers.images_per_s(size, self.plan.model_s)
                    self.points.setdefault(f"model {size}", []).append({"rps": rate})
                    logger.info("model %d px: %.2f img/s", size, rate)
                    uploads = [self.uploads.unique() for _ in range(PIPELINE_UPLOADS)]
                    rate = workers.pipeline_per_s(uploads, size, self.plan.model_s)
                    self.points.setdefault(f"pipeline {size}", []).append({"rps": rate})
                    logger.info("pipeline %d px: %.2f img/s", size, rate)
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
            workers.trace(self.dir / "flask_generator.pt")
            return workers.precision
        finally:
            workers.close()

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
            first_200(floor, hit, popen, log, 120)
            for rep in range(self.args.repeats):
                for size in SIZES:
                    name, clients = f"misses {size}", 2 * self.replicas
                    before = cpu_profile.snapshot(popen.pid)
                    self.point(name, url[size], self.uploads.unique, clients, name)
                    answered = self.points[name][-1]["ok"]
                    after = cpu_profile.snapshot(popen.pid)
                    profile = cpu_profile.ms_per_picture(before, after, answered)
                    self.points[name][-1]["cpu_ms_per_picture"] = profile
                mixed = self.uploads.mixed(self.hot_sets[rep], HOT_RATIO, seed=rep)
                self.point("mixed", url[MIXED_SIZE], mixed, MIXED_CLIENTS, "mixed")
                for clients in (1, 8):  # each next to the floor, so that both see the same load
                    self.point(f"hits c{clients}", url[MIXED_SIZE], repeated(hit), clients, "hits")
                    self.point(f"floor c{clients}", floor, repeated(hit), clients, "hits")
            logger.info("jobs: videos next to single photos")
            jobs = job_bench.run(
                root, url[256], self.uploads.unique, self.args.repeats, self.args.quick
            )
            for figures in jobs["runs"]:
                figures["resubmit_s"] = figures["resubmit_ms"] / 1e3
                self.points.setdefault("job", []).append(figures)
                logger.info("jobs: %s", json.dumps(figures))
            stats = httpx.get(f"{root}/v1/stats", timeout=30).json()
        return first_200_s, stats

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
        logger.info("portrait mode: the face search against the model")
        portrait = portrait_bench.run(self.args.quick)
        logger.info("large prints: tiled against whole")
        tiling = tiling_bench.run(self.args.quick)
        cold_start_s, stats = self.service()
        self.flask()
        logger.info("the job store at scale: filled, then a job followed")
        command = shlex.join(["python", "-m", "load_tests.bench", *argv])
        store = store_bench.run(self.base, self.args.repeats, self.args.quick, self.dir, command)
        logger.info("cold start: this app against a bare Serve app, taking turns")
        starts = cold_start.measure_cold_starts(self.args.config, self.args.repeats)
        for app_s, hello_s in zip(
            starts["animegan"]["runs_s"], starts["hello"]["runs_s"], strict=True
        ):
            self.points.setdefault("cold start", []).append({"app_s": app_s, "hello_s": hello_s})
        return {
            "portrait": portrait,
            "tiling": tiling,
            "store": store,
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
            },
            "cold_start_s": cold_start_s,
            "cold_starts": starts,
            "points": self.points,
            "targets": targets(self.points, self.args.repeats),
            "service_stats": stats,
        }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {name: importlib.metadata.version(name) for name in ("torch", "ray")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def targets(points: dict[str, list[dict]], repeats: int) -> list[dict]:
    """Each target's ratio within each repetition; the median and range over them."""
    out = []
    for name, (top, top_field), denominator, wanted, higher in TARGETS:
        bottom, bottom_field = denominator or (None, None)
        values = []
        for rep in range(repeats):
            a = points[top][rep][top_field]
            b = 1.0 if bottom is None else points[bottom][rep][bottom_field]
            values.append(a / b if a is not None and b else None)
        out.append(target(name, values, wanted, higher))
    return out


# --------------------------------------------------------------------------- the report


def targets_table(results: dict) -> str:
    return report_targets_table(results["targets"])


def figures_table(results: dict) -> str:
    rows = []
    for name, (what, workload, px) in POINTS.items():
        runs = results["points"].get(name, [])
        clients = str(runs[0]["concurrency"]) if runs and "concurrency" in runs[0] else "–"
        cells = [spread([run.get(key) for run in runs]) for key in ("rps", "p50_ms", "mean_ms")]
        errors = sum(run.get("errors", 0) for run in runs)
        rows.append([what, workload, px, clients, *cells, str(errors)])
    headers = ["what", "workload", "px", "clients", "req/s", "p50 ms", "mean ms", "errors"]
    return table(headers, rows)


JOB_FIGURES = (
    ("frames_per_s", "unique-frame clip: frames/s (job start to finish)"),
    ("frames", "its frames"),
    ("still_model_passes", "half-still clip: model passes"),
    ("still_frames", "its frames"),
    ("resubmit_ms", "the first clip again: answer, ms"),
    ("photo_idle_p50_ms", "single photos one by one, idle: p50 ms"),
    ("photo_during_job_p50_ms", "the same while a clip runs: p50 ms"),
)


def frame_rate(results: dict, batch: int) -> str:
    """The model limit at the jobs' frame shape for one batch size, median (min–max)."""
    return spread([run.get(f"batch_{batch}") for run in results["points"]["model frames"]])


def cpu_table(results: dict) -> str:
    """CPU ms per unique photo by component of the service, next to the in-process pipeline's
    whole CPU time per picture (each of its processes is one busy thread)."""
    processes = results["meta"]["layout"]["processes"]
    headers = ["component", *(f"{size} px (ms CPU / picture)" for size in SIZES)]
    names = sorted(
        {
            name
            for size in SIZES
            for run in results["points"][f"misses {size}"]
            for name in run.get("cpu_ms_per_picture", {})
        }
    )
    rows = []
    for name in [*names, "all of the service"]:
        cells = []
        for size in SIZES:
            runs = results["points"][f"misses {size}"]
            if name == "all of the service":
                values = [sum(run.get("cpu_ms_per_picture", {}).values()) or None for run in runs]
            else:
                values = [run.get("cpu_ms_per_picture", {}).get(name) for run in runs]
            cells.append(spread(values))
        rows.append([name, *cells])
    pipeline = [
        spread([1e3 * processes / run["rps"] for run in results["points"][f"pipeline {size}"]])
        for size in SIZES
    ]
    rows.append(["in-process pipeline (decode, resize, model, encode)", *pipeline])
    return table(headers, rows)


def jobs_table(results: dict) -> str:
    runs = results["points"].get("job", [])
    rows = [[what, spread([run.get(key) for run in runs])] for key, what in JOB_FIGURES]
    return table(["figure", "median (min–max)"], rows)


def markdown(results: dict) -> str:
    meta, layout, m = results["meta"], results["meta"]["layout"], results["meta"]["machine"]
    width, height = CANVAS
    phases = ", ".join(f"{k} {w:g}+{s:g} s" for k, (w, s) in meta["plan"]["phases"].items())
    shapes = ", ".join("{} px → {}×{}".format(s, *target_dimensions(*CANVAS, s)) for s in SIZES)
    smoke = "\n\n**A smoke run (`--quick`): a few requests per point, not a measurement.**"
    return f"""# Benchmarks

Generated by `{meta["command"]}` on {meta["date"]} UTC in {meta["elapsed_s"] / 60:.0f} min;
run it again to regenerate this page.{smoke if meta["quick"] else ""}

Every figure is measured {meta["repeats"]} times in the run: a cell is the median (min–max).
Each target is a ratio of two figures of the same repetition, its median over them and its
range. This machine is shared and noisy: the ratios are what count, not absolute figures.

- CPU: {m["cpu"]}, {m["cores"]} cores; Python {m["python"]}, torch {m["torch"]}, Ray {m["ray"]}
- load average (1 min) at start {meta["loadavg"][0]:.2f}, at end {meta["loadavg"][1]:.2f}

## Targets

{targets_table(results)}

## Figures

{figures_table(results)}

Cold start: `serve run` to the first 200, each a fresh local Ray, the two apps taking
turns ({meta["repeats"]} each): this app (`/v1/stylize`, 256 px)
{spread([run["app_s"] for run in results["points"]["cold start"]])} s, a bare Serve app
answering "hello" (`load_tests/hello_app.py`)
{spread([run["hello_s"] for run in results["points"]["cold start"]])} s. The benchmark's
own service came up in {results["cold_start_s"]:.1f} s.

## Where a miss's CPU goes

{cpu_table(results)}

CPU seconds of every process of the service (`serve run`'s process tree, grouped by Ray's
process titles) over each unique-photo window, per picture answered; the load generator
runs outside it on the same cores. The in-process pipeline's figure is its wall time per
picture times its processes (each one busy thread).

## Jobs: videos

{jobs_table(results)}

Clips: {job_bench.SOURCE[0]}×{job_bench.SOURCE[1]} H.264 + AAC at {job_bench.FPS} fps, made
per repetition with frames that all differ (the half-still one losslessly, its second half
one frame), submitted as jobs at size {job_bench.FRAME_SIZE} (frames of
{"×".join(map(str, target_dimensions(*job_bench.SOURCE, job_bench.FRAME_SIZE)))}); the
model limit for them is the best of batch 1 ({frame_rate(results, 1)} img/s) and the
jobs' batch of {meta["frame_batch"]} ({frame_rate(results, meta["frame_batch"])} img/s) in the
same process layout.

{chr(10).join(portrait_bench.markdown(results["portrait"]))}

{chr(10).join(tiling_bench.markdown(results["tiling"]))}

{chr(10).join(store_bench.markdown(results["store"]))}

## How it measures

- Model limit: the bare generator (random weights, {meta["precision"]}, channels_last,
  batch 1) in {layout["processes"]} process(es) × {layout["threads"]} thread(s) at once, the
  layout of the service's Stylizer replicas; ≥ {meta["plan"]["model_s"]:g} s per figure
  after a warm-up pass, on the shapes the service feeds it ({shapes}).
- In-process pipeline: the same processes, each cycling through {PIPELINE_UPLOADS} unique
  uploads: decode, resize, the model, PNG encode, one picture at a time: what a miss costs
  without HTTP, Ray, the cache or a second process (the service's target is ≥ 0.9× it).
- Service: `serve run` of a copy of `{meta["config"]}` with random weights and the
  Stylizer pinned at {layout["processes"]} replica(s) × {layout["threads"]} CPU, on a free
  127.0.0.1 port with RAY_ADDRESS=local; unique photos at {2 * layout["processes"]} clients.
- Framework floor: `load_tests/floor_app.py` (read the body, one actor call, the service's
  own answer bytes) as a second application at `{FLOOR_PREFIX}` of the same `serve run`,
  measured right after the cache hits at the same concurrency.
- Flask baseline: `load_tests/flask_reference.py` as given (a fixed 256×256 resize, 1.5×
  the pixels of the service's 256×172; fp32 TorchScript of the same random generator;
  batches of up to 4; results as hex in JSON), after the service has stopped.
- Uploads: {width}×{height} JPEG crops of `serve_app/samples/`, each made byte-unique by a
  JPEG comment (the cache keys on bytes). Mixed: {HOT_RATIO:.0%} of the uploads from
  {HOT_SET} hot photos (a new hot set each repetition, the same for the service and Flask),
  {MIXED_CLIENTS} clients, PNG output.
- Clients: closed loop at a fixed concurrency (httpx, multipart field `image`) on the same
  machine; each point a discarded warm-up then a measured window ({phases}; kept open
  until it holds {MIN_ANSWERS} answers); req/s counts 200s, latencies count errors too.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds per point")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every figure")
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--photos", type=Path, default=SAMPLES, help="1.jpg, 2.jpg, 3.jpg")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="benchmarks.md goes here")
    parser.add_argument("--results-dir", type=Path, default=REPO / "load_tests" / "results")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.results_dir = args.results_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    # SIGTERM unwinds like Ctrl-C, so that the servers started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Bench(args).run(argv)
    (args.results_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.md").write_text(markdown(results))
    print(targets_table(results), figures_table(results), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
