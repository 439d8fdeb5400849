"""`python -m load_tests.bench --quick` runs end to end: the model limit, `serve run` with
the floor, jobs and live streams, the Flask baseline, the ratios and the report; and it
stops what it started. No timing checks: quick figures are a few requests each."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from PIL import Image

from load_tests import live_bench
from load_tests.bench_report import POINTS, TARGETS, targets
from load_tests.store_bench import TARGETS as STORE_TARGETS
from load_tests.workloads import load_samples
from tests.support.paths import REPO
from tests.support.serve import TEST_RUNTIME

# One repetition: the smoke run shows every part runs end to end; how repetitions become a
# median and a range is checked on its own below, without a service.
REPEATS = 1

# The quick run starts the service, the Flask baseline and two cold starts: about 5 min
# on two cores, past the suite's per-test timeout.
BENCH_TIMEOUT_S = 1300
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(BENCH_TIMEOUT_S + 200),
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    # The default config with one named runtime: its Stylizer replicas (one per CPU) would
    # otherwise each choose by timing, and on a CPU with bf16 may key results apart.
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["runtime"] = TEST_RUNTIME
    config_path = out / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "load_tests.bench", "--quick", "--repeats", str(REPEATS)]
    command += ["--config", str(config_path)]
    command += ["--out", str(out / "docs"), "--results-dir", str(out / "results")]
    bench = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = bench.communicate(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        bench.terminate()  # the bench stops the servers it started before it exits
        _, stderr = bench.communicate(timeout=100)
        message = f"the quick benchmark ran past {BENCH_TIMEOUT_S} s: "
        pytest.fail(message + stderr.decode()[-4000:])
    assert bench.returncode == 0, stderr.decode()[-4000:]
    return out


@pytest.fixture(scope="module")
def results(bench_run) -> dict:
    return json.loads((bench_run / "results" / "bench.json").read_text())


def test_every_point_measured_in_every_repetition(results):
    points = results["points"]
    live = {f"live {n}" for n in live_bench.QUICK.streams} | {"live photos"}
    assert set(points) == {*POINTS, "job", "cold start", *live}
    assert all(len(runs) == REPEATS for runs in points.values())
    for size in (256, 512):
        assert all(run["rps"] > 0 for run in points[f"model {size}"] + points[f"pipeline {size}"])
    for name, runs in points.items():
        if not name.startswith(("model", "pipeline", "job", "cold start", "live photos")):
            assert sum(run["ok"] for run in runs) > 0, name
    for name in ("misses 256", "misses 512", "mixed", "hits c1", "hits c8", "floor c8"):
        assert all(run["errors"] == 0 for run in points[name]), name


def test_the_service_answers_as_each_workload_means(results):
    points = results["points"]
    for size in (256, 512):
        assert {key for run in points[f"misses {size}"] for key in run["cache"]} == {"miss"}
    assert {key for run in points["hits c8"] for key in run["cache"]} == {"hit"}
    mixed = {key for run in points["mixed"] for key in run["cache"]}
    assert "miss" in mixed and mixed & {"hit", "coalesced"}  # hot photos computed once
    assert results["cold_start_s"] > 0
    assert results["meta"]["layout"]["processes"] >= 1


def test_targets_are_medians_with_their_range(results):
    assert [t["target"] for t in results["targets"]] == [t[0] for t in TARGETS]
    for target in results["targets"]:
        assert len(target["values"]) == REPEATS
        measured = [v for v in target["values"] if v is not None]
        if measured:
            assert target["median"] == statistics.median(measured)
            assert target["min"] <= target["median"] <= target["max"]
            assert target["passed"] in (True, False)


def test_each_target_is_a_ratio_within_each_repetition():
    """Three repetitions of made-up figures: each ratio is taken within one repetition,
    then the median and range over them; a missing figure leaves its repetition out."""
    points: dict[str, list[dict]] = {}
    for (top, top_field), denominator in ((t[1], t[2]) for t in TARGETS):
        for name, field in filter(None, [(top, top_field), denominator]):
            runs = points.setdefault(name, [{}, {}, {}])
            for rep, run in enumerate(runs):
                run[field] = float(rep + 1)
    points["job"][1]["frames_per_s"] = None
    points["model frames"][2]["rps"] = 4.0  # rep 3: 3 / 4
    by_name = {t["target"]: t for t in targets(points, 3)}

    frames = by_name["job frames/s / model limit, 256 px frames"]
    assert frames["values"] == [1.0, None, 0.75]
    assert frames["median"] == 0.875 and (frames["min"], frames["max"]) == (0.75, 1.0)
    assert frames["passed"] is False  # wanted >= 0.9
    resubmit = by_name["resubmitted clip: answer, s"]  # no denominator: the figure itself
    assert resubmit["values"] == [1.0, 2.0, 3.0] and resubmit["median"] == 2.0
    assert resubmit["passed"] is False  # wanted <= 1.0


def test_report_is_written(results, bench_run):
    markdown = (bench_run / "docs" / "benchmarks.md").read_text()
    assert "python -m load_tests.bench --quick" in markdown and "smoke run" in markdown
    assert all(target[0] in markdown for target in TARGETS)
    assert "## Figures" in markdown and "Cold start" in markdown
    assert "## Portrait mode" in markdown and "## Large prints" in markdown
    assert "## Jobs: videos" in markdown
    assert "## Job store at scale" in markdown
    assert "## Live: camera streams" in markdown


def test_a_misss_cpu_is_profiled_by_component(results, bench_run):
    for size in (256, 512):
        for run in results["points"][f"misses {size}"]:
            profile = run["cpu_ms_per_picture"]
            assert profile["model replicas"] > 0 and profile["ingress replica"] > 0
            # Per picture answered over what the CPU was read over: the warm-up too.
            assert run["ok_all"] >= run["ok"]
            assert run["model_replicas_cpu_ms"] == profile["model replicas"]
        assert all(run["cpu_ms"] > 0 for run in results["points"][f"model {size}"])
    markdown = (bench_run / "docs" / "benchmarks.md").read_text()
    assert "## Where a miss's CPU goes" in markdown
    assert "the model alone, in-process" in markdown


def test_the_job_workload_runs_videos_next_to_photos(results):
    for run in results["points"]["job"]:
        assert run["frames_per_s"] > 0 and run["frames"] > 0
        # the half-still clip: its still half made once
        assert run["still_repeated"] > 0
        assert run["still_model_passes"] + run["still_repeated"] <= run["still_frames"]
        assert run["resubmit_ms"] > 0
        assert run["photo_idle_p50_ms"] > 0 and run["photo_during_job_p50_ms"] > 0


def test_the_job_store_is_filled_then_a_job_followed(results):
    store = results["store"]
    assert [t["target"] for t in store["targets"]] == [t[0] for t in STORE_TARGETS]
    assert len(store["runs"]) == REPEATS
    for run in store["runs"]:
        assert run["done"] == run["jobs"] and run["failed"] == 0
        assert run["submit_start_p50_ms"] > 0 and run["read_end_p50_ms"] > 0
        for store in ("empty", "full"):  # one client alone, before and after the fill
            assert run[f"probe_submit_{store}_p50_ms"] > 0 and run[f"probe_read_{store}_p50_ms"] > 0
        assert run["probe_submit_ratio"] > 0 and run["probe_read_ratio"] > 0
        assert run["events_per_listener"] > 0 and run["changes_heard"] > 0
        assert 0 < run["first_event_p50_ms"] <= run["first_event_max_ms"]
        # One record read as each listener joins; every change after it is pushed.
        assert run["record_gets"] == run["listeners"]
        assert run["reads_per_listener_after_join"] == 0


def test_portrait_search_is_measured_against_the_model(results):
    portrait = results["portrait"]
    assert portrait["model"]["median_ms"] > 0
    for figures in portrait["detect"].values():
        assert figures["median_ms"] > 0 and figures["vs_model"] > 0


def test_the_servers_it_started_are_gone(bench_run):
    config = str(bench_run / "results" / "bench_serve_config.yaml")
    store_configs = str(bench_run / "results" / "store_serve_config_")
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        assert config not in cmdline and "load_tests/flask_reference.py" not in cmdline
        assert store_configs not in cmdline


def test_live_streams_are_answered_next_to_photos(results):
    points = results["points"]
    for run in points["model live"]:
        assert run["rps"] > 0 and run["pass_ms"] > 0
    for count in live_bench.QUICK.streams:
        for run in points[f"live {count}"]:
            assert run["streams"] == count == len(run["per_stream"])
            assert run["ok"] > 0 and run["errors"] == 0
            assert run["p50_ms"] > 0 and run["p95_ms"] >= run["p50_ms"]
            assert run["sent_fps"] > 0 and 0 < run["bound_fps"] <= run["sent_fps"]
            assert all(stream["closed_by_server"] is None for stream in run["per_stream"])
    for run in points["live photos"]:
        assert run["streams"] == live_bench.QUICK.photo_streams and run["errors"] == 0
        assert run["photo_idle_p50_ms"] > 0 and run["photo_during_p50_ms"] > 0


def test_live_figures_count_the_window_and_match_answers_by_seq():
    """Made-up stream logs: answers inside the window only, each latency from its own
    frame's send, the service's skipped count over the frames sent meanwhile (its count
    runs ahead of the answer's seq: frames skipped while that answer was being made)."""
    Answer = live_bench.Answer
    log = live_bench.StreamLog(sent=[0.1 * n for n in range(20)])  # 0.0 .. 1.9 s
    log.answers = [
        Answer(at=0.45, latency_s=0.45, seq=0, skipped=2),  # before the window
        Answer(at=1.2, latency_s=1.2 - 0.3, seq=3, skipped=7),
        Answer(at=1.85, latency_s=1.85 - 0.75, seq=7, skipped=12),
        Answer(at=2.5, latency_s=9.0, seq=8, skipped=15),  # after it
    ]
    log.errors = [1.5]
    point = live_bench._point([log, live_bench.StreamLog()], opens=1.0, closes=2.0)
    stream, idle = point["per_stream"]
    assert stream["answered"] == 2 and stream["fps"] == 2.0
    assert stream["p50_ms"] == pytest.approx(1000.0) and stream["p95_ms"] == pytest.approx(1100)
    # sent by 0.45 s: 5 frames; by 1.85 s: 19
    assert (stream["skipped"], stream["received"]) == (12 - 2, 19 - 5)
    assert stream["errors"] == 1 and idle["answered"] == 0 and idle["skipped"] == 0
    assert point["ok"] == 2 and point["slowest_stream_fps"] == 0.0
    assert point["skipped_share"] == 10 / 14 and point["errors"] == 1

    # the bound: the model's limit, or the frames sent where fewer
    points = {"model live": [{"rps": 4.0}, {"rps": 9.0}]}
    points["live 4"] = [{"sent_fps": 60.0}, {"sent_fps": 6.0}]
    live_bench.add_bounds(points)
    assert [run["bound_fps"] for run in points["live 4"]] == [4.0, 6.0]
    assert live_bench.stream_counts({**points, "live photos": [], "job": []}) == [4]


def test_live_frames_are_distinct_camera_frames():
    frames = live_bench.make_frames(load_samples())
    assert len(set(frames)) == len(frames) == live_bench.FRAMES
    for frame in frames:
        with Image.open(io.BytesIO(frame)) as picture:
            assert picture.format == "JPEG" and picture.size == live_bench.FRAME


def test_a_quick_run_leaves_the_live_targets_it_does_not_measure_open():
    """A target whose point the run did not measure (8 streams in a quick run) is n/a,
    not an error."""
    points = {"live 1": [{"p95_ms": 300.0}], "model live": [{"pass_ms": 200.0}]}
    by_name = {t["target"]: t for t in targets(points, 1)}
    assert by_name["live, 1 stream: frame p95 / one model pass"]["values"] == [1.5]
    eight = by_name["live, 8 streams: answered frames/s / min(model limit, frames sent)"]
    assert eight["values"] == [None] and eight["passed"] is None
