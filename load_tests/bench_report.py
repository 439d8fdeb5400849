"""The benchmark's plan and its report: what is measured (the sizes, the points, the target
ratios and their goals), and ``docs/benchmarks.md`` written from a run's results
(``bench.py`` runs the parts; this module only reads what they measured).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

from load_tests import job_bench, live_bench, portrait_bench, store_bench, tiling_bench
from load_tests.loadgen import MIN_ANSWERS
from load_tests.report import spread, table, target, targets_table
from load_tests.workloads import CANVAS
from serve_app.imaging.pixels import target_dimensions

SIZES = (256, 512)
MIXED_SIZE = 256
MIXED_CLIENTS = 8
HOT_SET, HOT_RATIO = 4, 0.5
FLOOR_PREFIX = "/floor"
PIPELINE_UPLOADS = 4  # unique uploads each in-process pipeline cycles through
# The parts of a run (`--only`), in order; "service" (photos), "jobs" and "live" share one
# `serve run`.
PARTS = ("portrait", "tiling", "service", "jobs", "live", "flask", "store", "cold-start")

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
    *(
        (
            f"model replicas' CPU / the model alone, {size} px",
            (f"misses {size}", "model_replicas_cpu_ms"),
            (f"model {size}", "cpu_ms"),
            1.1,
            False,
        )
        for size in SIZES
    ),
    ("cache hits / floor, c8 req/s", ("hits c8", "rps"), ("floor c8", "rps"), 0.9, True),
    ("cache hits / floor, c1 p50", ("hits c1", "p50_ms"), ("floor c1", "p50_ms"), 1 / 0.9, False),
    ("mixed / Flask, c8 req/s", ("mixed", "rps"), ("flask mixed", "rps"), 4.0, True),
    ("mixed / Flask, c8 mean ms", ("mixed", "mean_ms"), ("flask mixed", "mean_ms"), 0.25, False),
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
    *live_bench.TARGETS,
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
    "model live": (
        "model, in-process",
        "generator, best of batch 1 and the Stylizer's batch",
        "{}×{}".format(*live_bench.FRAME),
    ),
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
            a = _figure(points, top, rep, top_field)
            b = 1.0 if bottom is None else _figure(points, bottom, rep, bottom_field)
            values.append(a / b if a is not None and b else None)
        out.append(target(name, values, wanted, higher))
    return out


def _figure(points: dict[str, list[dict]], name: str, rep: int, field: str) -> float | None:
    """A point's figure in one repetition; None where the point was not measured (a part
    left out, a stream count the quick run skips)."""
    runs = points.get(name, [])
    return runs[rep].get(field) if rep < len(runs) else None


# --------------------------------------------------------------------------- the report


def figures_table(results: dict) -> str:
    rows = []
    for name, (what, workload, px) in POINTS.items():
        runs = results["points"].get(name, [])
        if not runs:  # a part the run left out
            continue
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
    """CPU ms per unique photo by component of the service, next to the in-process
    pipeline's and the model alone's (their points' ``cpu_ms``)."""
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
    for what, point in (
        ("pipeline", "in-process pipeline (decode, resize, model, encode)"),
        ("model", "the model alone, in-process (a ready tensor)"),
    ):
        cells = [
            spread([run["cpu_ms"] for run in results["points"][f"{what} {size}"]]) for size in SIZES
        ]
        rows.append([point, *cells])
    return table(headers, rows)


def jobs_table(results: dict) -> str:
    runs = results["points"].get("job", [])
    rows = [[what, spread([run.get(key) for run in runs])] for key, what in JOB_FIGURES]
    return table(["figure", "median (min–max)"], rows)


def markdown(results: dict) -> str:
    """The page: the sections of the parts the run measured."""
    points = results["points"]
    sections = [_heading(results), f"## Targets\n\n{targets_list(results)}", _figures(results)]
    if "misses 256" in points:
        sections.append(_cpu_section(results))
    if "job" in points:
        sections.append(_jobs_section(results))
    if live_bench.stream_counts(points):
        sections.append("\n".join(live_bench.markdown(points, results["meta"]["live_plan"])))
    for key, part in (
        ("portrait", portrait_bench),
        ("tiling", tiling_bench),
        ("store", store_bench),
    ):
        if key in results:
            sections.append("\n".join(part.markdown(results[key])))
    sections.append(_how_it_measures(results))
    return "\n\n".join(sections) + "\n"


def partial_run(results: dict) -> bool:
    return results["meta"]["parts"] != list(PARTS)


def _heading(results: dict) -> str:
    meta, m = results["meta"], results["meta"]["machine"]
    notes = ""
    if meta["quick"]:
        notes += "\n\n**A smoke run (`--quick`): a few requests per point, not a measurement.**"
    if partial_run(results):
        notes += f"\n\n**Only some parts (`--only`): {', '.join(meta['parts'])}.**"
    return f"""# Benchmarks

Generated by `{meta["command"]}` on {meta["date"]} UTC in {meta["elapsed_s"] / 60:.0f} min;
run it again to regenerate this page.{notes}

Every figure is measured {meta["repeats"]} times in the run: a cell is the median (min–max).
Each target is a ratio of two figures of the same repetition, its median over them and its
range. This machine is shared and noisy: the ratios are what count, not absolute figures.

- CPU: {m["cpu"]}, {m["cores"]} cores; Python {m["python"]}, torch {m["torch"]}, Ray {m["ray"]}
- load average (1 min) at start {meta["loadavg"][0]:.2f}, at end {meta["loadavg"][1]:.2f}"""


def targets_list(results: dict) -> str:
    """All targets; a run of some parts shows only those it measured."""
    shown = [
        t
        for t in results["targets"]
        if not partial_run(results) or any(v is not None for v in t["values"])
    ]
    return targets_table(shown)


def _figures(results: dict) -> str:
    """The figures table, then the start-up times the run measured."""
    sentences = []
    runs = results["points"].get("cold start")
    if runs:
        sentences.append(
            "Cold start: `serve run` to the first 200, each a fresh local Ray, the two apps "
            f"taking turns ({results['meta']['repeats']} each): this app (`/v1/stylize`, "
            f"256 px) {spread([run['app_s'] for run in runs])} s, a bare Serve app answering "
            f'"hello" (`load_tests/hello_app.py`) {spread([run["hello_s"] for run in runs])} s.'
        )
    if "cold_start_s" in results:
        sentences.append(f"The benchmark's own service came up in {results['cold_start_s']:.1f} s.")
    section = f"## Figures\n\n{figures_table(results)}"
    return section + (f"\n\n{' '.join(sentences)}" if sentences else "")


def _cpu_section(results: dict) -> str:
    return f"""## Where a miss's CPU goes

{cpu_table(results)}

CPU seconds of every process of the service (`serve run`'s process tree, grouped by Ray's
process titles) over each unique-photo point, its warm-up included, per picture answered
in it; the load generator runs outside it on the same cores. The in-process figures are
wall time per picture times the processes (each one busy thread)."""


def _jobs_section(results: dict) -> str:
    batch = results["meta"]["frame_batch"]
    return f"""## Jobs: videos

{jobs_table(results)}

Clips: {job_bench.SOURCE[0]}×{job_bench.SOURCE[1]} H.264 + AAC at {job_bench.FPS} fps, made
per repetition with frames that all differ (the half-still one losslessly, its second half
one frame), submitted as jobs at size {job_bench.FRAME_SIZE} (frames of
{"×".join(map(str, target_dimensions(*job_bench.SOURCE, job_bench.FRAME_SIZE)))}); the
model limit for them is the best of batch 1 ({frame_rate(results, 1)} img/s) and the
jobs' batch of {batch} ({frame_rate(results, batch)} img/s) in the
same process layout."""


def _how_it_measures(results: dict) -> str:
    meta, layout = results["meta"], results["meta"]["layout"]
    width, height = CANVAS
    phases = ", ".join(f"{k} {w:g}+{s:g} s" for k, (w, s) in meta["plan"]["phases"].items())
    shapes = ", ".join("{} px → {}×{}".format(s, *target_dimensions(*CANVAS, s)) for s in SIZES)
    return f"""## How it measures

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
  until it holds {MIN_ANSWERS} answers); req/s counts 200s, latencies count errors too."""
