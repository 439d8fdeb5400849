"""The job store at scale: a submission and a read cost the same with 10 jobs stored as with
10,000, and a job's events reach its listeners when they are written, read from no store.

    python -m load_tests.store_bench            # this workload alone: its section of
    python -m load_tests.store_bench --quick    # docs/benchmarks.md (the full benchmark
                                                # runs it too)

Each repetition serves the benchmark's config (``cold_start.app_config``: random weights,
the Stylizers pinned; one ingress replica) with a job store of its own, a fresh folder with
its SQLite records, so that each repetition fills an empty store:

- probes, with the store empty and again with it full: one client alone submits PROBES
  tiny jobs one at a time (each submission timed, then its read, then followed to its end
  before the next), so that each meets the same idle service and only the store differs.
  The targets: the full store's p50s over the empty store's.
- fill: JOBS tiny still pictures (a 32 px JPEG, each byte-unique) submitted as jobs at
  32 px by CLIENTS threads; each submission timed, then ``GET /v1/jobs/{id}`` of it timed.
  Each client keeps at most WINDOW of its jobs unfinished (it follows its oldest's events
  until that ends), so the queue holds the same few jobs from the first submission to the
  last, far below ``jobs.max_queued`` (a 503 would be retried after its Retry-After and
  counted apart). The p50s of the first 10% of submissions (after WARMUP more) and of the
  last 10%, and their ratio: figures, not targets (they also move with the whole machine's
  load over a fill of many minutes; ``GET /healthz`` alongside shows by how much).
- events: the store full, a short video job followed by LISTENERS Server-Sent Event
  streams that ask at once. A change's delay to a listener is the arrival of its event
  (or of a later one, where the follower was sent only a state's latest progress) less
  its ``updated_at`` (when the runner's write was stored; same machine, same clock). Each
  listener's HTTP client is made before any listener asks: made while other listeners
  already streamed, their making (TLS contexts, under this process's GIL) kept the
  streaming threads from reading what had arrived, by up to 1.5 s. The ingress replica's
  calls to its record store over the run (``/v1/stats`` ``job_records``) show what the
  listeners cost it: one read as each joins, nothing per event.

One module past 450 lines on purpose: the three phases, the figures they produce and the
report that names them are one workload, and each report line names a phase's constants.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import io
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from load_tests import cold_start, job_bench
from load_tests.report import num, spread, table, target, targets_table
from load_tests.workloads import CONTENT_TYPE, load_samples, multipart, with_comment

logger = logging.getLogger("load_tests.store_bench")

REPO = Path(__file__).resolve().parents[1]
JOBS, QUICK_JOBS = 10_000, 100
CLIENTS = 8
WINDOW = 4  # unfinished jobs per client
# Submissions before the first measured ones (counted in the store): the clients' windows
# filled twice over, the service's code paths warm.
WARMUP = 2 * CLIENTS * WINDOW
EDGE = 0.1  # the first and the last tenth of the submissions
PROBES, QUICK_PROBES = 100, 10  # one client's submissions with the store empty, then full
PROBE_WARMUP = 10  # a probe's first submissions, not counted
PICTURE_PX = 32  # the uploads' side and the jobs' size
LISTENERS, QUICK_LISTENERS = 20, 4
CLIP_S, QUICK_CLIP_S = 12.0, 2.0  # the followed video (10 fps: a progress event a frame)
TERMINAL = ("done", "failed", "cancelled")
# Timed after each job's read: the same proxy and ingress, no job store. Its own end/start
# ratio is the machine's drift over the fill (a shared machine's load comes and goes).
CONTROL = "/healthz"
# The record store's operations that read (the others write).
READS = (
    "get",
    "expired_at",
    "list",
    "find_done",
    "stale",
    "due",
    "usage",
    "changes",
    "newest_change",
)
SECTION = "## Job store at scale"
# (target, field of a repetition, wanted, higher is better)
TARGETS = (
    ("submit p50, store full / empty (one client)", "probe_submit_ratio", 1.2, False),
    ("`GET /v1/jobs/{id}` p50, store full / empty (one client)", "probe_read_ratio", 1.2, False),
    ("a change's delay to each listener, max ms", "event_delay_max_ms", 100.0, False),
    ("store reads per listener after joining", "reads_per_listener_after_join", 0.0, False),
)
FIGURES = (
    ("probe_submit_empty_p50_ms", "one client: submit p50, store empty, ms"),
    ("probe_submit_full_p50_ms", "one client: submit p50, store full, ms"),
    ("probe_read_empty_p50_ms", "one client: `GET /v1/jobs/{id}` p50, store empty, ms"),
    ("probe_read_full_p50_ms", "one client: `GET /v1/jobs/{id}` p50, store full, ms"),
    ("probe_control_ratio", f"one client: `GET {CONTROL}` p50, store full / empty"),
    ("submit_ratio", "during the fill: submit p50, last 10% / first 10%"),
    ("read_ratio", "during the fill: `GET /v1/jobs/{id}` p50, last 10% / first 10%"),
    ("submit_start_p50_ms", "submit p50, first 10%, ms"),
    ("submit_end_p50_ms", "submit p50, last 10%, ms"),
    ("read_start_p50_ms", "`GET /v1/jobs/{id}` p50, first 10%, ms"),
    ("read_end_p50_ms", "`GET /v1/jobs/{id}` p50, last 10%, ms"),
    ("control_start_p50_ms", f"`GET {CONTROL}` p50 (no job store), first 10%, ms"),
    ("control_end_p50_ms", f"`GET {CONTROL}` p50, last 10%, ms"),
    ("submit_ratio_vs_control", f"submit p50 last / first, ÷ the same of `{CONTROL}`"),
    ("read_ratio_vs_control", f"`GET /v1/jobs/{{id}}` p50 last / first, ÷ the same of `{CONTROL}`"),
    ("jobs_per_s", "fill rate, jobs/s (submitted, read, finished)"),
    ("fill_s", "fill time, s"),
    ("done", "jobs done"),
    ("failed", "jobs not done"),
    ("refused", "submissions refused (503, retried)"),
    ("event_delay_p50_ms", "a change's delay to each listener, p50 ms"),
    ("event_delay_p95_ms", "a change's delay to each listener, p95 ms"),
    ("event_delay_max_ms", "a change's delay to each listener, max ms"),
    ("changes_heard", "changes heard (by any listener) after the listeners joined"),
    ("events_per_listener", "events per listener (after its first)"),
    ("arrival_spread_max_ms", "one event's arrival, first to last listener, max ms"),
    ("first_event_p50_ms", "a listener's request to its first event, p50 ms"),
    ("first_event_max_ms", "a listener's request to its first event, max ms"),
    ("record_gets", "record-store `get` calls during the event run"),
    ("record_changes", "record-store `changes` calls (the replica's change feed)"),
    ("record_reads", "record-store reads of every kind during the event run"),
    ("event_run_s", "the event run, s"),
    ("loadavg_fill_end", "the machine's load average (1 min) as the fill ended"),
    ("loadavg_events_end", "the same as the event run ended"),
)


# --------------------------------------------------------------------------- uploads


def tiny_pictures(tag: str) -> Callable[[], bytes]:
    """A PICTURE_PX square JPEG of a sample photo, byte-unique at each call (a comment)."""
    buffer = io.BytesIO()
    load_samples()[0].resize((PICTURE_PX, PICTURE_PX)).save(buffer, "JPEG", quality=90)
    jpeg, counter = buffer.getvalue(), itertools.count()
    return lambda: with_comment(jpeg, f"{tag}-{next(counter)}")


# --------------------------------------------------------------------------- the fill


def alone(root: str, count: int, picture: Callable[[], bytes], store: str) -> dict:
    """One client alone, ``count`` jobs one at a time (submitted, read, followed to their
    end): the p50s of submit, read and control, named for the ``store`` (empty, full)."""
    rows = []
    with httpx.Client(base_url=root, timeout=120) as client:
        for _ in range(PROBE_WARMUP + count):
            job_id, submit_ms, _ = _submit(client, picture())
            read_ms = _timed_get(client, f"/v1/jobs/{job_id}")
            rows.append((submit_ms, read_ms, _timed_get(client, CONTROL)))
            if _ended(client, job_id) != "done":
                raise RuntimeError(f"probe job {job_id} did not end done")
    counted = rows[PROBE_WARMUP:]
    return {
        f"probe_{name}_{store}_p50_ms": statistics.median(row[column] for row in counted)
        for column, name in enumerate(("submit", "read", "control"))
    }


def probe_ratios(figures: dict) -> dict:
    """Each probe p50 with the store full over the same with it empty."""
    return {
        f"probe_{name}_ratio": figures[f"probe_{name}_full_p50_ms"]
        / figures[f"probe_{name}_empty_p50_ms"]
        for name in ("submit", "read", "control")
    }


def _submit(client: httpx.Client, data: bytes) -> tuple[str, float, int]:
    """A job for ``data``: its id, the accepted submission's ms, and the 503s before it."""
    refused = 0
    while True:
        start = time.perf_counter()
        response = client.post(
            "/v1/jobs",
            params={"size": PICTURE_PX},
            content=data,
            headers={"content-type": "image/jpeg"},
        )
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if response.status_code != 503:
            response.raise_for_status()
            return response.json()["id"], elapsed_ms, refused
        refused += 1
        time.sleep(float(response.headers.get("retry-after", 1)))


def _ended(client: httpx.Client, job_id: str) -> str:
    """The job's end state, from its event stream (no polling: a poll every few ms from
    each client would be most of the service's load)."""
    return _listen(client, job_id)[-1][2]


def _timed_get(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    client.get(path).raise_for_status()
    return (time.perf_counter() - start) * 1e3


def _client(root: str, total: int, indices, picture: Callable[[], bytes], stop: threading.Event):
    """One client's share: (index, submit ms, read ms, control ms) rows, its jobs' end
    states, its 503s."""
    rows, states, refused = [], collections.Counter(), 0
    unfinished: collections.deque[str] = collections.deque()
    with httpx.Client(base_url=root, timeout=120) as client:
        while not stop.is_set() and (index := next(indices)) < total:
            job_id, submit_ms, retries = _submit(client, picture())
            refused += retries
            read_ms = _timed_get(client, f"/v1/jobs/{job_id}")
            rows.append((index, submit_ms, read_ms, _timed_get(client, CONTROL)))
            unfinished.append(job_id)
            while len(unfinished) >= WINDOW:
                states[_ended(client, unfinished.popleft())] += 1
        for job_id in unfinished:
            states[_ended(client, job_id)] += 1
    return rows, states, refused


def fill(root: str, total: int, picture: Callable[[], bytes]) -> dict:
    """The store filled with ``total`` finished jobs; the start's and the end's p50s."""
    indices, stop, started = itertools.count(), threading.Event(), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        shares = [pool.submit(_client, root, total, indices, picture, stop) for _ in range(CLIENTS)]
        try:
            results = [share.result() for share in shares]
        finally:
            stop.set()  # an error or an interrupt: the other clients stop too
    seconds = time.monotonic() - started
    rows = sorted(row for share_rows, _, _ in results for row in share_rows)
    states = sum((share_states for _, share_states, _ in results), collections.Counter())
    edge = max(1, round(total * EDGE))
    first, last = rows[WARMUP : WARMUP + edge], rows[-edge:]
    figures = {"fill_s": seconds, "jobs_per_s": total / seconds, "done": states["done"]}
    figures["failed"] = total - states["done"]
    figures["refused"] = sum(refused for _, _, refused in results)
    for column, name in enumerate(("submit", "read", "control"), start=1):
        figures[f"{name}_start_p50_ms"] = statistics.median(row[column] for row in first)
        figures[f"{name}_end_p50_ms"] = statistics.median(row[column] for row in last)
        ratio = figures[f"{name}_end_p50_ms"] / figures[f"{name}_start_p50_ms"]
        figures[f"{name}_ratio"] = ratio
    for name in ("submit", "read"):  # the machine's own drift (its load) taken out
        figures[f"{name}_ratio_vs_control"] = figures[f"{name}_ratio"] / figures["control_ratio"]
    figures["loadavg_fill_end"] = os.getloadavg()[0]
    return figures


# --------------------------------------------------------------------------- the events


def _listen(client: httpx.Client, job_id: str) -> list[tuple[float, float, str]]:
    """Each event of the job's stream as (arrival, its updated_at, state), to its end."""
    heard = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            arrival = time.time()
            job = json.loads(line[5:])
            heard.append((arrival, job["updated_at"], job["state"]))
            if job["state"] in TERMINAL:
                break
    return heard


def _percentile(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _listener(root: str, job_id: str, ready: threading.Barrier) -> tuple[float, list]:
    """The time the listener asked, and each event of its stream (``_listen``). Every
    listener's client is made before any asks (``ready``), so that they ask together."""
    with httpx.Client(base_url=root, timeout=120) as client:
        ready.wait(timeout=120)  # a listener that failed to start breaks it for all
        return time.time(), _listen(client, job_id)


def _news_delays(heard: list[list[tuple[float, float, str]]]) -> list[float]:
    """For every change any listener heard (by its write time), how long each listener
    took to hear it or a later change, ms, sorted. A follower that falls behind gets only
    a state's latest progress (the older is superseded, not sent): what counts is how long
    a listener's view stays older than the store's."""
    writes = sorted({written for events in heard for _, written, _ in events[1:]})
    delays = []
    for events in heard:
        joined = events[0][1]  # the job as read when it joined: what it already knows
        for write in writes:
            if write > joined:  # streams deliver in write order and end with the last
                arrival = next(a for a, written, _ in events if written >= write)
                delays.append((arrival - write) * 1e3)
    return sorted(delays)


def follow(root: str, listeners: int, clip: Path) -> dict:
    """A video job followed by ``listeners`` streams that ask at once: each event's delay
    from the write it reports, each listener's wait for its first event, and the record
    store's calls meanwhile."""
    with httpx.Client(base_url=root, timeout=120) as client:
        before = client.get("/v1/stats").json()["job_records"]
        started = time.monotonic()
        response = job_bench.submit(client, clip)
        response.raise_for_status()
        job_id = response.json()["id"]
        ready = threading.Barrier(listeners)
        with concurrent.futures.ThreadPoolExecutor(listeners) as pool:
            streams = [pool.submit(_listener, root, job_id, ready) for _ in range(listeners)]
            asked_heard = [stream.result() for stream in streams]
        seconds = time.monotonic() - started
        after = client.get("/v1/stats").json()["job_records"]
    heard = [events for _, events in asked_heard]
    if any(events[-1][2] != "done" for events in heard):
        raise RuntimeError(f"the followed job {job_id} did not end done: {heard[0][-1]}")
    # A listener's first event is the job as read when it joined; every later one pushed.
    pushed = [events[1:] for events in heard]
    if not all(pushed):
        raise RuntimeError("a listener joined after the job ended: make the clip longer")
    delays = _news_delays(heard)
    arrivals: dict[float, list[float]] = collections.defaultdict(list)
    for arrival, written, _ in itertools.chain.from_iterable(pushed):
        arrivals[written].append(arrival)
    first_ms = sorted((events[0][0] - asked) * 1e3 for asked, events in asked_heard)
    calls = {op: after.get(op, 0) - before.get(op, 0) for op in {*before, *after}}
    reads = sum(calls.get(op, 0) for op in READS)
    joins = calls.get("get", 0) + calls.get("expired_at", 0) + calls.get("list", 0)
    return {
        "event_delay_p50_ms": statistics.median(delays),
        "event_delay_p95_ms": _percentile(delays, 95),
        "event_delay_max_ms": delays[-1],
        "changes_heard": len({written for events in pushed for _, written, _ in events}),
        "events_per_listener": statistics.median(len(events) for events in pushed),
        "arrival_spread_max_ms": max((max(a) - min(a)) * 1e3 for a in arrivals.values()),
        "first_event_p50_ms": statistics.median(first_ms),
        "first_event_max_ms": first_ms[-1],
        "record_calls": {op: n for op, n in sorted(calls.items()) if n},
        "record_gets": calls.get("get", 0),
        "record_changes": calls.get("changes", 0),
        "record_reads": reads,
        "reads_per_listener_after_join": (joins - listeners) / listeners,
        "event_run_s": seconds,
        "loadavg_events_end": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- the run


def store_config(base: dict, port: int, store: Path) -> dict:
    """The benchmark's service with one ingress replica and a job store in ``store``."""
    config = cold_start.app_config(base, port)
    args = config["applications"][0]["args"]
    jobs = {k: v for k, v in args.get("jobs", {}).items() if k != "records_url"}
    args["jobs"] = {**jobs, "store_url": str(store)}
    for deployment in config["applications"][0].get("deployments", []):
        if deployment["name"] == "Ingress":
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 1
    return config


def run_once(base: dict, quick: bool, rep: int, results_dir: Path) -> dict:
    total = QUICK_JOBS if quick else JOBS
    listeners = QUICK_LISTENERS if quick else LISTENERS
    picture = tiny_pictures(f"{time.time_ns()}-{rep}")
    # Short: Ray's Unix socket paths live under it (107 bytes at most).
    work = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    try:
        port, ray_tmp = cold_start.free_port(), work / "ray"
        ray_tmp.mkdir()
        config_path = results_dir / f"store_serve_config_{rep}.yaml"
        config = store_config(base, port, work / "jobs")
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        prefix = config["applications"][0].get("route_prefix", "/").rstrip("/")
        root = f"http://{cold_start.HOST}:{port}{prefix}"
        log = results_dir / f"store_serve_{rep}.log"
        probe = cold_start.Probe(
            "POST", f"/v1/stylize?size={PICTURE_PX}&format=png", multipart(picture()), CONTENT_TYPE
        )
        clip_s = QUICK_CLIP_S if quick else CLIP_S
        clip = job_bench.make_clip(work / "clip.mp4", clip_s, time.time_ns() % 2**32)
        with cold_start.serve_run(config_path, ray_tmp, log) as popen:
            cold_start.first_200(f"{root}{probe.path}", probe, popen, log)
            logger.info("job store, run %d: filling it with %d jobs", rep + 1, total)
            probes = QUICK_PROBES if quick else PROBES
            figures = {"jobs": total, "probes": probes, "listeners": listeners, "clip_s": clip_s}
            figures.update(alone(root, probes, picture, "empty"))
            figures.update(fill(root, total, picture))
            figures.update(alone(root, probes, picture, "full"))
            figures.update(probe_ratios(figures))
            logger.info("job store, run %d: %d listeners follow a video job", rep + 1, listeners)
            figures.update(follow(root, listeners, clip))
        logger.info("job store, run %d: %s", rep + 1, json.dumps(figures))
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(base: dict, repeats: int, quick: bool, results_dir: Path, command: str) -> dict:
    runs = [run_once(base, quick, rep, results_dir) for rep in range(repeats)]
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "quick": quick,
        "runs": runs,
        "targets": [
            target(name, [r[field] for r in runs], wanted, higher)
            for name, field, wanted, higher in TARGETS
        ],
    }


# --------------------------------------------------------------------------- the report


def markdown(results: dict) -> list[str]:
    """The section of docs/benchmarks.md (a list of lines)."""
    runs = results["runs"]
    first = runs[0]
    calls = collections.Counter()
    for r in runs:
        calls.update(r["record_calls"])
    by_op = ", ".join(f"`{op}` {n / len(runs):g}" for op, n in sorted(calls.items()))
    smoke = " **A smoke run (`--quick`): not a measurement.**" if results["quick"] else ""
    rows = [[what, spread([r[key] for r in runs])] for key, what in FIGURES]
    return [
        SECTION,
        "",
        f"Measured by `{results['command']}` on {results['date']} UTC, {len(runs)} "
        f"repetition(s), each a fresh `serve run` with an empty job store filled to "
        f"{first['jobs']:,} jobs; a cell is the median (min–max).{smoke}",
        "",
        targets_table(results["targets"], "target"),
        "",
        table(["figure", "median (min–max)"], rows),
        "",
        f"Probes: one client alone, with the store empty and again once the fill has ended "
        f"(full), submits {PICTURE_PX} px jobs one at a time ({PROBE_WARMUP} not counted, "
        f"then {first['probes']}), each timed, then `GET /v1/jobs/{{id}}` of it, then "
        f"`GET {CONTROL}`, then the job followed to its end before the next: the same idle "
        "service each time, only the store's size differs.",
        "",
        f"Fill: {first['jobs']:,} {PICTURE_PX} px JPEGs (each byte-unique) submitted as "
        f"jobs at {PICTURE_PX} px by {CLIENTS} client threads, each keeping at most {WINDOW} "
        "of its jobs unfinished (it follows its oldest's events until it ends), so the queue "
        "holds the same few jobs throughout; each submission is timed, then "
        "`GET /v1/jobs/{id}` of "
        f"it, then `GET {CONTROL}` (the same proxy and ingress, no job store: its own "
        "last/first ratio is how much the machine alone drifted over the fill; this one is "
        f"shared); p50s of the first {EDGE:.0%} of submissions (after {WARMUP} more, the "
        f"service warming up) and of the last {EDGE:.0%}.",
        "",
        f"Events: the store full, a {first['clip_s']:g} s "
        f"{job_bench.SOURCE[0]}×{job_bench.SOURCE[1]} video at {job_bench.FPS} fps "
        f"(size {job_bench.FRAME_SIZE}) followed by {first['listeners']} "
        "`GET /v1/jobs/{id}/events` streams, their clients made first so that all ask at "
        "once. Every change any listener heard after its first event (the job as read "
        "when it joined) is timed at each listener: the arrival of its event, or of a "
        "later one where the listener was sent only the latest progress of a state (a "
        "follower behind gets that), less the change's `updated_at`, the time the "
        "runner's write was stored (same machine, same clock). The ingress replica's "
        f"record-store calls over that run (`/v1/stats` `job_records`; mean per run: "
        f"{by_op}): one `get` as each listener joins, the "
        "replica's change feed (`changes`, one look per interval for all its followers and "
        "runs), the runner's own; reads per listener after joining = (`get` + `list` + "
        f"`expired_at` − listeners) / listeners. Largest event delay per run: "
        f"{', '.join(num(r['event_delay_max_ms']) for r in runs)} ms.",
    ]


def update_page(page: Path, section: list[str]) -> None:
    """``page`` with its SECTION replaced by ``section`` (or inserted before "How it
    measures", or appended)."""
    lines = page.read_text().splitlines() if page.exists() else ["# Benchmarks", ""]
    if SECTION in lines:
        start = lines.index(SECTION)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*section, ""]
    elif "## How it measures" in lines:
        at = lines.index("## How it measures")
        lines[at:at] = [*section, ""]
    else:
        lines += ["", *section]
    page.write_text("\n".join(lines).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m load_tests.store_bench", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS} jobs, one video")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="benchmarks.md is here")
    parser.add_argument("--results-dir", type=Path, default=REPO / "load_tests" / "results")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s store bench: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.config.read_text())
    command = shlex.join(["python", "-m", "load_tests.store_bench", *argv])
    # SIGTERM unwinds like Ctrl-C, so that the server started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(base, args.repeats, args.quick, args.results_dir.resolve(), command)
    (args.results_dir / "store_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    update_page(args.out / "benchmarks.md", markdown(results))
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
