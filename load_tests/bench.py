"""One command, one machine, one run: the model's own limit, the service, the framework
floor and a baseline, side by side.

    python -m load_tests.bench                 # full run (under 10 min on 2 cores)
    python -m load_tests.bench --quick         # a few seconds per point (smoke test)

It prints a table, writes ``load_tests/results/bench.json`` and ``docs/benchmarks.md`` +
``docs/benchmarks.png``. Order of work (each part alone on the machine):

1. the model's cold start (a fresh process) and the model limit grid (worker processes);
2. ``serve run`` of a temporary config (the service config with random weights, a free
   port, and the framework floor as a second application), with RAY_ADDRESS=local so
   it never joins another Ray cluster: time to the first 200, idle memory, then the
   workloads over HTTP, memory under load; then it is stopped (its whole process tree);
3. the Flask reference service (and/or ``--baseline-url``) on the same workloads;
4. the target ratios of issue 4.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

from load_tests import processes, report
from load_tests.loadgen import Phase, PointResult, run_point
from load_tests.model_limit import Measurement, ModelBench, Setting, grid
from load_tests.workloads import CANVAS, Uploads, load_photos, make_variants, repeated

REPO = Path(__file__).resolve().parents[1]
SERVICE_APP = "serve_app.app:build_app"
FLOOR_PREFIX = "/floor"
HOT_SET = 4
HOT_RATIO = 0.5
MIXED_SIZE = 256
SIZES = (256, 512)
IDLE_WINDOW_S = 4.0
_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, or a quick one for the smoke test."""

    all_precisions: bool
    batches: tuple[int, ...]
    grid_min_time_s: float
    larger_top_k: int  # settings measured again at 512 px: the best at 256 px
    misses_concurrency: dict[int, tuple[int, ...]]
    misses_phase: dict[int, Phase]
    mixed_phase: Phase
    hits_phase: Phase
    baseline_workloads: tuple[str, ...]
    variants: int


FULL = Plan(
    all_precisions=True,
    batches=(1, 2, 4),
    grid_min_time_s=1.5,
    larger_top_k=3,
    misses_concurrency={256: (1, 2, 4, 8), 512: (1, 2, 4, 8)},
    misses_phase={256: Phase(3, 10), 512: Phase(5, 15)},
    mixed_phase=Phase(4, 15),
    hits_phase=Phase(2, 8),
    baseline_workloads=("mixed", "all misses", "all hits"),
    variants=24,
)
QUICK = Plan(
    all_precisions=False,
    batches=(1, 2),
    grid_min_time_s=0.3,
    larger_top_k=1,
    misses_concurrency={256: (1, 4), 512: (2,)},
    misses_phase={256: Phase(1, 2), 512: Phase(1.5, 2.5)},
    mixed_phase=Phase(1.5, 3),
    hits_phase=Phase(1, 2),
    baseline_workloads=("mixed",),
    variants=4,
)


@dataclass(frozen=True)
class Workload:
    name: str
    size: int | None
    concurrency: int
    phase: Phase
    source: Callable[[], bytes]


@dataclass(frozen=True)
class Inputs:
    """The uploads of the whole run (shared by the service and the baselines)."""

    uploads: Uploads
    hot: list[bytes]
    hit_photo: bytes


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds per point, fewer points"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs", help="where benchmarks.md/.png go"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=REPO / "load_tests" / "results",
        help="bench.json, logs, the temporary serve config (gitignored)",
    )
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "dev.yaml", help="serve config to copy"
    )
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "photos")
    parser.add_argument(
        "--baseline-url",
        help="another service, POST multipart field `image` (put ?size=256 in it if it takes one)",
    )
    parser.add_argument(
        "--run-flask-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the Flask reference service and run the baseline workloads on it",
    )
    parser.add_argument(
        "--flask-app",
        type=Path,
        default=REPO.parent / "shared" / "baselines" / "flask_reference" / "app.py",
    )
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import ray
    import torch

    from serve_app.model import cpu_supports_bf16

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16": cpu_supports_bf16(),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def model_shape(size: int) -> tuple[int, int]:
    """(height, width) the service feeds the model for an upload of the canvas size."""
    from serve_app.imaging import target_dimensions

    width, height = target_dimensions(*CANVAS, size)
    return height, width


# --------------------------------------------------------------------------- inputs


def prepare_inputs(args: argparse.Namespace, plan: Plan) -> tuple[Inputs, str]:
    photos = load_photos(args.photos)
    source = str(args.photos) if args.photos.is_dir() else "synthetic pictures (no photos found)"
    uploads = Uploads(
        make_variants(photos, plan.variants), tag=f"bench-{os.getpid()}-{time.time_ns()}"
    )
    inputs = Inputs(uploads=uploads, hot=uploads.hot_set(HOT_SET), hit_photo=uploads.unique())
    return inputs, source


def decoded_at(data: bytes, size: int) -> np.ndarray:
    from serve_app import imaging

    return imaging.resize_long_side(imaging.decode_upload(data, imaging.ImageLimits()), size).rgb


# --------------------------------------------------------------------------- the model


def serve_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def service_app(config: dict) -> dict:
    for app in config["applications"]:
        if app.get("import_path") == SERVICE_APP:
            return app
    raise ValueError(f"no application with import_path {SERVICE_APP} in the config")


def stylizer_layout(config: dict) -> tuple[int, int]:
    """(replicas, CPUs per replica) of the Stylizer in the config (autoscaling: its minimum)."""
    for deployment in service_app(config).get("deployments", []):
        if deployment.get("name") == "Stylizer":
            cpus = deployment.get("ray_actor_options", {}).get("num_cpus", 1)
            replicas = deployment.get("num_replicas", 1)
            if not isinstance(replicas, int):
                replicas = deployment.get("autoscaling_config", {}).get("min_replicas", 1)
            return max(int(replicas), 1), max(int(cpus), 1)
    return 1, 1


def model_cold_start(config: dict) -> dict:
    """The model's own load and warm-up, in a fresh interpreter, as a Stylizer does it."""
    from serve_app import stylizer

    warm_up_side = getattr(stylizer, "WARM_UP_SIDE", 256)
    styles = len(service_app(config)["args"]["styles"])
    argv = [sys.executable, "-m", "load_tests.model_limit", "cold-start"]
    argv += [
        "--styles",
        str(styles),
        "--threads",
        str(stylizer_layout(config)[1]),
        "--side",
        str(warm_up_side),
    ]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO, timeout=300)
    wall = time.monotonic() - started
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def precisions(plan: Plan) -> list[str]:
    from serve_app.model import cpu_supports_bf16, select_runtime

    if not plan.all_precisions:
        return [select_runtime("cpu", "auto").precision]
    return ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]


def model_limit(bench: ModelBench, plan: Plan, cores: int, layout: tuple[int, int]) -> dict:
    """The grid at 256 px; at 512 px the best few and the best at the service's layout."""
    import torch

    settings = grid(cores, precisions(plan), list(plan.batches), cuda=torch.cuda.is_available())
    at_256 = [_measure(bench, setting, 256, plan) for setting in settings]
    ranked = sorted(at_256, key=lambda m: m.images_per_s, reverse=True)
    again = [m.setting for m in ranked[: plan.larger_top_k]]
    same_layout = _best(_at_layout(at_256, layout))
    if same_layout is not None and same_layout.setting not in again:
        again.append(same_layout.setting)
    at_512 = [_measure(bench, setting, 512, plan) for setting in again]
    measured = {"256": at_256, "512": at_512}
    note = (
        f"The generator alone in worker processes, on a ready tensor; each setting runs "
        f"≥ {plan.grid_min_time_s:g} s after one warm-up pass. All settings at 256 px; "
        f"the best {plan.larger_top_k} (and the best at the service's layout, "
        f"{layout[0]}x{layout[1]}t) again at 512 px. `PxTt` = P processes × T threads "
        "(two processes run at once; their rates add up)."
    )
    return {
        "grid": [m.to_dict() for m in at_256],
        "larger": [m.to_dict() for m in at_512],
        "best": {size: _best(ms).to_dict() for size, ms in measured.items()},
        "service_layout": {"processes": layout[0], "threads": layout[1]},
        "best_at_service_layout": {
            size: m.to_dict()
            for size, ms in measured.items()
            if (m := _best(_at_layout(ms, layout))) is not None
        },
        "note": note,
    }


def _at_layout(measured: list[Measurement], layout: tuple[int, int]) -> list[Measurement]:
    return [m for m in measured if (m.setting.processes, m.setting.threads) == layout]


def _best(measured: list[Measurement]) -> Measurement | None:
    return max(measured, key=lambda m: m.images_per_s, default=None)


def _measure(bench: ModelBench, setting: Setting, size: int, plan: Plan) -> Measurement:
    height, width = model_shape(size)
    with processes.OtherLoad() as other:
        measured = bench.measure(setting, height, width, plan.grid_min_time_s)
    measured = dataclasses.replace(measured, other_cpu_cores=other.cores)
    progress(
        f"model {setting.label} {width}x{height}: {measured.images_per_s:.2f} img/s "
        f"(other load {other.cores:.2f} cores)"
    )
    return measured


def run_model_phase(
    plan: Plan, inputs: Inputs, results_dir: Path, layout: tuple[int, int]
) -> tuple[dict, Path, Path]:
    """The model limit grid; also the floor's response bytes and the Flask TorchScript file."""
    cores = len(os.sched_getaffinity(0))
    with ModelBench(workers=cores) as bench:
        limit = model_limit(bench, plan, cores, layout)
        png = bench.stylize_png(decoded_at(inputs.hit_photo, MIXED_SIZE), layout[1])
        torchscript = results_dir / "flask_generator_torchscript.pt"
        bench.trace(torchscript)
    floor_png = results_dir / "floor_response.png"
    floor_png.write_bytes(png)
    return limit, floor_png, torchscript


# --------------------------------------------------------------------------- the service


def bench_serve_config(base: dict, port: int, floor_png: Path) -> dict:
    """The service config with random weights on a free port, plus the floor app (logging
    as the service's, so that neither pays for an access log the other skips)."""
    config = copy.deepcopy(base)
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    service = service_app(config)
    for style in service["args"]["styles"]:
        style["weights"] = "random"
    floor = {
        "name": "floor",
        "route_prefix": FLOOR_PREFIX,
        "import_path": "load_tests.floor_app:build_floor",
        "args": {"png_path": str(floor_png)},
    }
    if "logging_config" in service:
        floor["logging_config"] = copy.deepcopy(service["logging_config"])
    config["applications"].append(floor)
    return config


def service_workloads(plan: Plan, inputs: Inputs) -> list[Workload]:
    uploads = inputs.uploads
    workloads = [
        Workload("all misses", size, c, plan.misses_phase[size], uploads.all_misses())
        for size in SIZES
        for c in plan.misses_concurrency[size]
    ]
    workloads.append(
        Workload(
            "mixed", MIXED_SIZE, 8, plan.mixed_phase, uploads.mixed(inputs.hot, HOT_RATIO, seed=1)
        )
    )
    workloads += [
        Workload("all hits", MIXED_SIZE, c, plan.hits_phase, repeated(inputs.hit_photo))
        for c in (1, 8)
    ]
    return workloads


def run_workloads(
    target: str,
    url_for: Callable[[int | None], str],
    workloads: list[Workload],
    server: processes.ManagedProcess | None,
) -> list[dict]:
    """Each workload as one point; with ``server``, the CPU its processes used per answer."""
    points = []
    for workload in workloads:
        started = time.monotonic()
        with processes.OtherLoad() as other, processes.CpuByRole(server) as cpu:
            point = run_point(
                url_for(workload.size),
                workload.source,
                workload.concurrency,
                workload.phase,
                target=target,
                workload=workload.name,
                size=workload.size,
            )
        point.other_cpu_cores = other.cores
        point.cpu_cores_used = sum(cpu.seconds.values()) / (time.monotonic() - started)
        point.cpu_ms_per_answer = {
            role: seconds * 1e3 / max(point.answered, 1)
            for role, seconds in sorted(cpu.seconds.items(), key=lambda kv: -kv[1])
            if seconds > 0
        }
        progress(_describe(point))
        points.append(point.to_dict())
    return points


def _describe(point: PointResult) -> str:
    latency = (
        "" if point.p50_ms is None else f" p50 {point.p50_ms:.0f} ms p95 {point.p95_ms:.0f} ms"
    )
    size = f" {point.size}px" if point.size else ""
    return (
        f"{point.target} {point.workload}{size} c{point.concurrency}: "
        f"{point.throughput:.2f} req/s{latency} errors {point.errors} cache {point.cache} "
        f"(other load {point.other_cpu_cores:.2f} cores)"
    )


def run_service_phase(
    args: argparse.Namespace, plan: Plan, inputs: Inputs, floor_png: Path, results: dict
) -> None:
    base = serve_config(args.config)
    port = processes.free_port()
    config = bench_serve_config(base, port, floor_png)
    config_path = args.results_dir / "bench_serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    root = f"http://127.0.0.1:{port}{service_app(config).get('route_prefix', '/').rstrip('/')}"

    def service_url(size: int | None) -> str:
        return f"{root}/v1/stylize?size={size}&format=png"

    floor_url = f"http://127.0.0.1:{port}{FLOOR_PREFIX}/stylize"
    env = processes.python_env(REPO, RAY_ADDRESS="local", RAY_USAGE_STATS_ENABLED="0")
    progress(f"starting `serve run` on port {port}")
    started = time.monotonic()
    argv = processes.serve_argv(config_path)
    with processes.running("serve run", argv, env, args.results_dir / "serve.log") as serve:
        ready = processes.wait_until(
            _first_200(service_url(MIXED_SIZE), inputs.uploads.unique()), serve, 300
        )
        results["cold_start"]["serve_first_200_s"] = ready - started
        progress(f"first 200 after {ready - started:.1f} s")
        processes.wait_until(_first_200(floor_url, b"\xff\xd8"), serve, 120)
        time.sleep(1)
        results["idle_cpu_cores"] = idle_cpu(serve, IDLE_WINDOW_S)
        results["memory"]["idle_mib"] = processes.ray_worker_rss(serve)
        workloads = service_workloads(plan, inputs)
        loaded = [w for w in workloads if w.name != "all hits"]
        with processes.PeakRss(serve) as peak:
            points = run_workloads("service", service_url, loaded, serve)
        results["memory"]["load_peak_mib"] = peak.peak
        hits = [w for w in workloads if w.name == "all hits"]
        points += run_workloads("service", service_url, hits, serve)
        results["service"]["points"] = points
        floor = [
            Workload("floor", None, c, plan.hits_phase, repeated(inputs.hit_photo)) for c in (1, 8)
        ]
        results["floor"]["points"] = run_workloads("floor", lambda _: floor_url, floor, serve)
        results["service"]["stats"] = _stats(f"{root}/v1/stats")
        progress("stopping `serve run`")
    progress("`serve run` stopped; its process tree is gone")


def idle_cpu(server: processes.ManagedProcess, seconds: float) -> dict[str, float]:
    """Cores' worth of CPU each process of the idle service uses (no traffic)."""
    with processes.CpuByRole(server) as cpu:
        time.sleep(seconds)
    return {
        role: used / seconds for role, used in sorted(cpu.seconds.items(), key=lambda kv: -kv[1])
    }


def _stats(url: str) -> dict:
    """The service's own figures (/v1/stats): batch sizes, inference time, cache."""
    try:
        return httpx.get(url, timeout=10).json()
    except (httpx.HTTPError, ValueError) as error:
        return {"error": str(error)}


def _first_200(url: str, data: bytes) -> Callable[[], bool]:
    return processes.answers(
        "POST",
        url,
        lambda r: r.status_code == 200,
        files={"image": ("photo.jpg", data, "image/jpeg")},
    )


# --------------------------------------------------------------------------- baselines


def baseline_workloads(plan: Plan, inputs: Inputs) -> list[Workload]:
    uploads = inputs.uploads
    every = {
        "mixed": [
            Workload(
                "mixed",
                MIXED_SIZE,
                8,
                plan.mixed_phase,
                uploads.mixed(inputs.hot, HOT_RATIO, seed=1),
            )
        ],
        "all misses": [
            Workload("all misses", MIXED_SIZE, 8, plan.misses_phase[256], uploads.all_misses())
        ],
        "all hits": [
            Workload("all hits", MIXED_SIZE, c, plan.hits_phase, repeated(inputs.hit_photo))
            for c in (1, 8)
        ],
    }
    return [w for name in plan.baseline_workloads for w in every[name]]


def run_flask_baseline(
    args: argparse.Namespace, plan: Plan, inputs: Inputs, torchscript: Path
) -> dict:
    app = args.flask_app
    if not app.is_file():
        return {"skipped": f"no Flask app at {app}"}
    port = processes.free_port()
    env = processes.python_env(REPO, ANIMEGAN_TS=str(torchscript), PORT=str(port))
    progress(f"starting the Flask baseline on port {port}")
    argv = [sys.executable, str(app)]
    with processes.running("flask", argv, env, args.results_dir / "flask.log") as flask:
        processes.wait_until(
            processes.answers("GET", f"http://127.0.0.1:{port}/", lambda r: True), flask, 60
        )
        url = f"http://127.0.0.1:{port}/transform"
        points = run_workloads("flask", lambda _: url, baseline_workloads(plan, inputs), flask)
    return {
        "url": url,
        "app": str(app),
        "note": "fixed 256×256 resize, fp32 TorchScript",
        "points": points,
    }


def run_url_baseline(url: str, plan: Plan, inputs: Inputs) -> dict:
    progress(f"baseline at {url}")
    return {
        "url": url,
        "points": run_workloads("baseline", lambda _: url, baseline_workloads(plan, inputs), None),
    }


# --------------------------------------------------------------------------- output


def notes(plan: Plan, photos_source: str, config_path: Path) -> list[str]:
    width, height = CANVAS
    return [
        f"Uploads: {width}×{height} JPEGs (q90) from {photos_source}: {plan.variants} pixel "
        "variants (random crop, rescale, faint noise), each request made byte-unique by a JPEG "
        f"comment carrying a counter (the cache keys on bytes). Hot set: {HOT_SET} photos; "
        f"mixed: {HOT_RATIO:.0%} of requests from the hot set, at {MIXED_SIZE} px.",
        "Clients: closed loop at fixed concurrency (asyncio + aiohttp, multipart field `image`), "
        "on the same machine as the server; each point has a warm-up that is discarded, then "
        "a measured window; answers in flight at its end are awaited but not counted.",
        f"Service: `serve run` of a copy of `{config_path.name}` with random weights, a free "
        "port, RAY_ADDRESS=local; the framework floor (`load_tests/floor_app.py`: read the "
        "body, one call to a named actor, fixed PNG bytes) is a second application at "
        f"`{FLOOR_PREFIX}`.",
        f"Model input for the service's {width}×{height} uploads: "
        + ", ".join(f"{s} px → {model_shape(s)[1]}×{model_shape(s)[0]}" for s in SIZES)
        + "; the model limit uses the same shapes. The Flask reference resizes to 256×256 "
        "(1.5× the pixels) and runs fp32 TorchScript; that is the baseline as given.",
        "Memory: RSS of the processes titled `ray::…` in the `serve run` tree, idle after "
        "the first 200, and the peak sampled every 0.5 s during the miss and mixed workloads.",
        "`other CPU`: cores' worth of CPU that processes outside this benchmark used during "
        f"the point (the machine has {os.cpu_count()}); well above 0, the point ran on a "
        "shared, busy machine and its figures are low by about that share.",
    ]


def write_outputs(results: dict, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "bench.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    png_path = args.out / "benchmarks.png"
    report.plot(results, png_path)
    md_path = args.out / "benchmarks.md"
    md_path.write_text(report.markdown(results, png_path.name))
    return json_path, md_path, png_path


def command_line(argv: list[str] | None) -> str:
    return shlex.join(
        ["python", "-m", "load_tests.bench", *(sys.argv[1:] if argv is None else argv)]
    )


# --------------------------------------------------------------------------- main


def new_results(args: argparse.Namespace, argv: list[str] | None) -> dict:
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "command": command_line(argv),
            "quick": args.quick,
            "machine": machine_info(),
            "loadavg_start": os.getloadavg()[0],
        },
        "cold_start": {},
        "model_limit": {},
        "service": {"points": []},
        "floor": {"points": []},
        "baselines": {},
        "memory": {},
        "idle_cpu_cores": {},
        "targets": [],
    }


def run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    plan = QUICK if args.quick else FULL
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = new_results(args, argv)
    inputs, photos_source = prepare_inputs(args, plan)
    config = serve_config(args.config)
    progress("the model's cold start (fresh process)")
    results["cold_start"]["model"] = model_cold_start(config)
    progress("the model limit grid")
    limit, floor_png, torchscript = run_model_phase(
        plan, inputs, args.results_dir, stylizer_layout(config)
    )
    results["model_limit"] = limit
    run_service_phase(args, plan, inputs, floor_png, results)
    if args.run_flask_baseline:
        results["baselines"]["flask"] = run_flask_baseline(args, plan, inputs, torchscript)
    else:
        results["baselines"]["flask"] = {"skipped": "--no-run-flask-baseline"}
    if args.baseline_url:
        results["baselines"]["url"] = run_url_baseline(args.baseline_url, plan, inputs)
    results["targets"] = [t.to_dict() for t in report.compute_targets(results)]
    results["meta"].update(
        loadavg_end=os.getloadavg()[0],
        elapsed_s=time.monotonic() - _started,
        notes=notes(plan, photos_source, args.config),
    )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.results_dir = args.results_dir.resolve()
    results = run(args, argv)
    paths = write_outputs(results, args)
    print(report.points_table(results))
    print()
    print(report.targets_table(results["targets"]))
    print()
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
