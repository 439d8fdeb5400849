"""The benchmark's results as tables, target ratios, ``docs/benchmarks.md`` and a plot.

Everything here reads the results dictionary ``load_tests.bench`` builds (and writes as
JSON), so a report can be redrawn from a saved ``bench.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HITS_FLOOR_THROUGHPUT = 0.8
HITS_FLOOR_P50 = 1.25
MISSES_MODEL = 0.9
FLASK_THROUGHPUT = 2.5
FLASK_LATENCY = 0.4
COLD_START = 2.0


@dataclass(frozen=True)
class Target:
    name: str
    ratio: float | None  # None: not measured in this run
    threshold: float
    higher_is_better: bool
    detail: str

    @property
    def passed(self) -> bool | None:
        if self.ratio is None:
            return None
        return (
            self.ratio >= self.threshold if self.higher_is_better else self.ratio <= self.threshold
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


# --------------------------------------------------------------------------- lookups


def find_point(points: list[dict], workload: str, concurrency: int, size: int | None = None):
    for point in points:
        if (
            point["workload"] == workload
            and point["concurrency"] == concurrency
            and (size is None or point["size"] == size)
        ):
            return point
    return None


def best_throughput(points: list[dict], workload: str, size: int) -> dict | None:
    matching = [p for p in points if p["workload"] == workload and p["size"] == size]
    return max(matching, key=lambda p: p["throughput"], default=None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _get(point: dict | None, key: str) -> float | None:
    return None if point is None else point.get(key)


# --------------------------------------------------------------------------- targets


def compute_targets(results: dict) -> list[Target]:
    """Issue 4's targets, each a ratio of two figures measured in this run."""
    return [
        *_misses_targets(results),
        *_hits_targets(results),
        *_flask_targets(results),
        _cold_start_target(results),
    ]


def _misses_targets(results: dict) -> list[Target]:
    service = results["service"]["points"]
    limit = results["model_limit"]
    layout = limit.get("service_layout", {})
    targets = []
    for size in (256, 512):
        best_model = limit["best"].get(str(size))
        same_layout = limit.get("best_at_service_layout", {}).get(str(size))
        best_service = best_throughput(service, "all misses", size)
        service_rate = _get(best_service, "throughput")
        layout_ratio = _ratio(service_rate, _get(same_layout, "images_per_s"))
        targets.append(
            Target(
                f"all misses / model limit, {size} px",
                _ratio(service_rate, _get(best_model, "images_per_s")),
                MISSES_MODEL,
                True,
                f"service {_num(service_rate)} img/s (c{_get(best_service, 'concurrency')}) vs "
                f"model {_num(_get(best_model, 'images_per_s'))} img/s "
                f"({_get(best_model, 'label')}); vs the model at the service's own layout "
                f"({layout.get('processes')}x{layout.get('threads')}t): {_num(layout_ratio)}",
            )
        )
    return targets


def _hits_targets(results: dict) -> list[Target]:
    service, floor = results["service"]["points"], results["floor"]["points"]
    hits8, floor8 = find_point(service, "all hits", 8), find_point(floor, "floor", 8)
    hits1, floor1 = find_point(service, "all hits", 1), find_point(floor, "floor", 1)
    return [
        Target(
            "all hits c8 req/s / floor c8 req/s",
            _ratio(_get(hits8, "throughput"), _get(floor8, "throughput")),
            HITS_FLOOR_THROUGHPUT,
            True,
            f"{_num(_get(hits8, 'throughput'))} vs {_num(_get(floor8, 'throughput'))} req/s",
        ),
        Target(
            "all hits c1 p50 / floor c1 p50",
            _ratio(_get(hits1, "p50_ms"), _get(floor1, "p50_ms")),
            HITS_FLOOR_P50,
            False,
            f"{_num(_get(hits1, 'p50_ms'))} vs {_num(_get(floor1, 'p50_ms'))} ms",
        ),
    ]


def _flask_targets(results: dict) -> list[Target]:
    flask = results["baselines"].get("flask", {})
    ours = find_point(results["service"]["points"], "mixed", 8)
    theirs = find_point(flask.get("points", []), "mixed", 8)
    why = "" if theirs else f" (Flask baseline: {flask.get('skipped', 'not run')})"
    return [
        Target(
            "mixed c8 req/s / Flask mixed c8 req/s",
            _ratio(_get(ours, "throughput"), _get(theirs, "throughput")),
            FLASK_THROUGHPUT,
            True,
            f"{_num(_get(ours, 'throughput'))} vs {_num(_get(theirs, 'throughput'))} req/s{why}",
        ),
        Target(
            "mixed c8 mean latency / Flask's",
            _ratio(_get(ours, "mean_ms"), _get(theirs, "mean_ms")),
            FLASK_LATENCY,
            False,
            f"{_num(_get(ours, 'mean_ms'))} vs {_num(_get(theirs, 'mean_ms'))} ms{why}",
        ),
    ]


def _cold_start_target(results: dict) -> Target:
    cold = results["cold_start"]
    model = cold.get("model", {})
    serve_s, model_s = cold.get("serve_first_200_s"), model.get("load_and_warmup_s")
    return Target(
        "cold start / model load-and-warm-up",
        _ratio(serve_s, model_s),
        COLD_START,
        False,
        f"`serve run` to first 200: {_num(serve_s)} s; model load + warm-up "
        f"{_num(model_s)} s (+ {_num(model.get('import_s'))} s importing torch)",
    )


# --------------------------------------------------------------------------- tables


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    def verdict(passed: bool | None) -> str:
        return {True: "pass", False: "**FAIL**", None: "n/a"}[passed]

    rows = [
        [
            t["name"],
            _num(t["ratio"], 3),
            ("≥ " if t["higher_is_better"] else "≤ ") + f"{t['threshold']:g}",
            verdict(t["passed"]),
            t["detail"],
        ]
        for t in targets
    ]
    return markdown_table(["target", "ratio", "wanted", "result", "figures"], rows)


def points_table(results: dict) -> str:
    rows = [_model_row(results, size) for size in (256, 512)]
    points = [
        *results["service"]["points"],
        *results["floor"]["points"],
        *(p for b in results["baselines"].values() for p in b.get("points", [])),
    ]
    rows += [_point_row(p) for p in points]
    headers = [
        "target",
        "workload",
        "px",
        "conc",
        "req/s",
        "p50 ms",
        "p95 ms",
        "mean ms",
        "errors",
        "cache",
        "other CPU",
    ]
    return markdown_table(headers, rows)


def _model_row(results: dict, size: int) -> list[str]:
    best = results["model_limit"]["best"].get(str(size))
    if best is None:
        return ["model (in-process)", "limit", str(size), *["–"] * 6, "", "–"]
    return [
        "model (in-process)",
        f"limit: {best['label']}",
        f"{size} ({best['width']}×{best['height']})",
        "–",
        _num(best["images_per_s"]),
        "–",
        "–",
        f"{_num(best['pass_ms'])} (a pass)",
        "–",
        "",
        _num(best.get("other_cpu_cores")),
    ]


def _point_row(point: dict) -> list[str]:
    cache = ", ".join(f"{k} {v}" for k, v in sorted(point.get("cache", {}).items()))
    return [
        point["target"],
        point["workload"],
        "–" if point["size"] is None else str(point["size"]),
        str(point["concurrency"]),
        _num(point["throughput"]),
        _num(point["p50_ms"]),
        _num(point["p95_ms"]),
        _num(point["mean_ms"]),
        str(point["errors"]),
        cache,
        _num(point.get("other_cpu_cores")),
    ]


def grid_table(model_limit: dict) -> str:
    measurements = [*model_limit["grid"], *model_limit.get("larger", [])]
    rows = [
        [
            m["label"],
            f"{m['width']}×{m['height']}",
            _num(m["images_per_s"]),
            _num(m["pass_ms"]),
            _num(m.get("other_cpu_cores")),
        ]
        for m in measurements
    ]
    return markdown_table(["setting", "input", "img/s", "ms per pass", "other CPU"], rows)


CPU_TABLE_POINTS = (
    ("service", "all misses", 256),
    ("service", "all misses", 512),
    ("service", "mixed", 256),
    ("service", "all hits", 256),
    ("floor", "floor", None),
)
CPU_GROUPS = (
    "Stylizer replicas",
    "HTTP app replica (Ingress / Floor)",
    "proxy",
    "cache / lookup actor",
    "Ray system (controller, raylet, GCS, agents)",
    "load generator (bench)",
)


def cpu_group(role: str) -> str:
    """The column of ``cpu_table`` a process role is counted in."""
    if role.startswith("ServeReplica:"):
        return CPU_GROUPS[0] if role.endswith(":Stylizer") else CPU_GROUPS[1]
    if role == "ProxyActor":
        return CPU_GROUPS[2]
    if role in ("ResultCache", "Lookup"):
        return CPU_GROUPS[3]
    if role.startswith("load generator"):
        return CPU_GROUPS[5]
    return CPU_GROUPS[4]


def cpu_table(results: dict) -> str:
    """CPU milliseconds per answer by kind of process, for the busiest point of each kind."""
    points = [*results["service"]["points"], *results["floor"]["points"]]
    chosen = []
    for target, workload, size in CPU_TABLE_POINTS:
        matching = [
            p
            for p in points
            if (p["target"], p["workload"], p["size"]) == (target, workload, size)
            and p.get("cpu_ms_per_answer")
        ]
        if matching:
            chosen.append(max(matching, key=lambda p: p["throughput"]))
    if not chosen:
        return "(not measured)"
    headers = ["point", "req/s", *CPU_GROUPS, "all", "cores busy"]
    rows = []
    for p in chosen:
        grouped = dict.fromkeys(CPU_GROUPS, 0.0)
        for role, ms in p["cpu_ms_per_answer"].items():
            grouped[cpu_group(role)] += ms
        size = f" {p['size']} px" if p["size"] else ""
        rows.append(
            [
                f"{p['target']} {p['workload']}{size} c{p['concurrency']}",
                _num(p["throughput"]),
                *[_num(grouped[group], 1) for group in CPU_GROUPS],
                _num(sum(grouped.values()), 1),
                _num(p.get("cpu_cores_used")),
            ]
        )
    return markdown_table(headers, rows)


def idle_cpu_text(idle: dict[str, float]) -> str:
    """The idle service's CPU by kind of process, in cores."""
    grouped: dict[str, float] = {}
    for role, cores in idle.items():
        group = cpu_group(role)
        grouped[group] = grouped.get(group, 0.0) + cores
    parts = [
        f"{group} {cores:.3f}" for group, cores in sorted(grouped.items(), key=lambda kv: -kv[1])
    ]
    return f"Idle (no traffic), in cores: all {sum(idle.values()):.3f} — " + "; ".join(parts) + "."


def stats_text(stats: dict) -> str:
    """A few figures of /v1/stats, read defensively (its layout is the service's)."""
    model, requests = stats.get("model", {}), stats.get("requests", {})
    if not model:
        return f"(not available: {stats.get('error', 'no model figures')})"
    per_image = model.get("inference_ms_per_image", {})
    lines = [
        f"- requests by cache outcome: {requests}",
        f"- batches: {model.get('batches')}, sizes {model.get('batch_sizes')}, mean "
        f"{_num(model.get('mean_batch_size'))}; max_batch_size {model.get('max_batch_size')}",
        f"- mean queue at the Stylizer {_num(model.get('mean_queue_ms'))} ms; inference per "
        "image (ms): " + ", ".join(f"{k} {_num(v)}" for k, v in per_image.items()),
    ]
    return "\n".join(lines)


SERVICE_PROCESSES = ("ServeReplica:animegan:", "ResultCache")


def memory_table(memory: dict) -> str:
    idle, load = memory.get("idle_mib", {}), memory.get("load_peak_mib", {})
    roles = sorted(set(idle) | set(load))
    rows = [[role, _num(idle.get(role), 0), _num(load.get(role), 0)] for role in roles]

    def service_total(figures: dict[str, float]) -> float:
        return sum(v for k, v in figures.items() if k.startswith(SERVICE_PROCESSES))

    rows.append(
        ["**the service's replicas + ResultCache**"]
        + [_num(service_total(figures), 0) for figures in (idle, load)]
    )
    rows.append(
        ["**every ray:: process**", _num(sum(idle.values()), 0), _num(sum(load.values()), 0)]
    )
    headers = ["process (ray::…)", "idle RSS MiB", "peak RSS MiB under load (each its own)"]
    return markdown_table(headers, rows)


def machine_lines(meta: dict) -> list[str]:
    machine = meta["machine"]
    return [
        f"- CPU: {machine['cpu']} — {machine['cores']} cores, "
        f"capability {machine['cpu_capability']}, native bf16: {machine['bf16']}",
        f"- RAM: {machine['ram_gib']:.1f} GiB; {machine['platform']}",
        f"- Python {machine['python']}, torch {machine['torch']}, Ray {machine['ray']}",
        f"- load average (1 min) at start {meta['loadavg_start']:.2f}, at end "
        f"{meta['loadavg_end']:.2f} (other work on the machine shows here)",
        f"- date (UTC): {meta['date']}; whole run {meta['elapsed_s']:.0f} s"
        + (" (--quick)" if meta["quick"] else ""),
    ]


# --------------------------------------------------------------------------- markdown


def markdown(results: dict, plot_name: str | None) -> str:
    meta = results["meta"]
    sections = [
        "# Benchmarks",
        "Regenerate (one command, one machine, one run; about "
        f"{meta['elapsed_s'] / 60:.0f} min):\n\n```bash\n{meta['command']}\n```",
        "Absolute figures on a shared machine are noise; the ratios, each of two figures "
        "measured in the same run, are what count.",
        "## Machine\n\n" + "\n".join(machine_lines(meta)),
        "## Targets (issue 4)\n\n" + targets_table(results["targets"]),
        "## Throughput and latency\n\n" + points_table(results),
    ]
    if plot_name:
        sections.append(f"![throughput and latency against concurrency]({plot_name})")
    sections += [
        "## Model limit grid\n\n"
        + results["model_limit"]["note"]
        + "\n\n"
        + grid_table(results["model_limit"]),
        "## Where the CPU goes\n\nCPU milliseconds per answer, by kind of process (user + "
        "system from /proc over the whole point, warm-up and drain included, divided by the "
        "answers in it), for the highest-throughput point of each kind; `cores busy`: all "
        "that CPU over the point's wall time (the machine has "
        f"{results['meta']['machine']['cores']} cores).\n\n"
        + cpu_table(results)
        + "\n\n"
        + idle_cpu_text(results.get("idle_cpu_cores", {})),
        "## The service's own figures (`/v1/stats` after the workloads)\n\n"
        + stats_text(results["service"].get("stats", {})),
        "## Memory\n\n" + memory_table(results["memory"]),
        "## Cold start\n\n" + cold_start_text(results["cold_start"]),
        "## How it measures\n\n" + "\n".join(f"- {line}" for line in meta["notes"]),
    ]
    return "\n\n".join(sections) + "\n"


def cold_start_text(cold: dict) -> str:
    model, serve_s = cold.get("model", {}), cold.get("serve_first_200_s")
    return (
        f"- `serve run` started → first 200 on `/v1/stylize`: {_num(serve_s)} s\n"
        f"- the model alone, fresh process ({model.get('styles')} styles, "
        f"{model.get('threads')} thread(s), {model.get('precision')}): importing torch "
        f"{_num(model.get('import_s'))} s, building the generators {_num(model.get('load_s'))} s, "
        f"warm-up pass {_num(model.get('warmup_s'))} s; process start to warmed "
        f"{_num(model.get('process_wall_s'))} s"
    )


# --------------------------------------------------------------------------- plot


Series = tuple[str, Callable[[dict], bool]]


def plot(results: dict, path: Path) -> None:
    """Throughput, p50 and p95 latency against concurrency; model limits as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        *results["service"]["points"],
        *results["floor"]["points"],
        *(p for b in results["baselines"].values() for p in b.get("points", [])),
    ]
    groups: dict[str, list[dict]] = {}
    for point in points:
        size = f" {point['size']} px" if point["size"] else ""
        groups.setdefault(f"{point['target']}: {point['workload']}{size}", []).append(point)

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    for index, (label, group) in enumerate(sorted(groups.items())):
        group.sort(key=lambda p: p["concurrency"])
        color = f"C{index % 10}"
        x = [p["concurrency"] for p in group]
        marker = "o" if len(group) > 1 else "D"
        left.plot(x, [p["throughput"] for p in group], marker=marker, color=color, label=label)
        right.plot(
            x, [p["p50_ms"] for p in group], marker=marker, color=color, label=f"{label} p50"
        )
        right.plot(x, [p["p95_ms"] for p in group], marker=marker, color=color, ls=":", alpha=0.7)
    for size, style in (("256", "--"), ("512", "-.")):
        best = results["model_limit"]["best"].get(size)
        if best:
            left.axhline(
                best["images_per_s"], color="k", ls=style, lw=1, label=f"model limit {size} px"
            )
    left.set(xlabel="concurrency (closed-loop clients)", ylabel="answers per second", yscale="log")
    left.set_title("throughput")
    right.set(xlabel="concurrency (closed-loop clients)", ylabel="latency, ms", yscale="log")
    right.set_title("latency: p50 (solid), p95 (dotted)")
    concurrencies = sorted({p["concurrency"] for p in points})
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="best")
    figure.suptitle(f"animegan-serve benchmark — {results['meta']['date']}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
