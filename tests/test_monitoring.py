"""The monitoring configs agree with the code: the alert rules load and pass their promtool
unit tests, every alert is tested both ways, and every `ray_animegan_*` name the dashboard
or the rules query is a metric serve_app/metrics.py declares, with the suffix Prometheus
gives its kind. No Ray cluster is started."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = REPO / "serve_app" / "metrics.py"
DASHBOARD = REPO / "configs" / "grafana" / "animegan-serve.json"
ALERTS = REPO / "configs" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "configs" / "prometheus" / "alerts_test.yml"

# The series Prometheus scrapes for each Ray metric kind (Ray adds the `ray_` prefix).
SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}
QUERIED = re.compile(r"\bray_(animegan_[a-z0-9_]+)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        # CI installs it (.ci/run); only a developer machine may lack it.
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (Debian package: prometheus)")
        pytest.skip("promtool is not installed (Debian package: prometheus)")
    return path


def run_promtool(*args: str) -> None:
    result = subprocess.run(
        [promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def declared_metrics() -> dict[str, str]:
    """Metric name -> kind, as serve_app/metrics.py creates them."""
    source = METRICS.read_text()
    found = re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(animegan_[a-z0-9_]+)"', source)
    return {name: kind for kind, name in found}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_alert_rules_are_valid() -> None:
    run_promtool("check", "rules", str(ALERTS))


def test_alert_rules_pass_their_unit_tests() -> None:
    run_promtool("test", "rules", str(ALERTS_TEST))


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert len(alerts) == len(alert_rules()), "alert names repeat"
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a non-firing case"
    assert (firing | quiet) - alerts == set(), "cases for alerts that do not exist"


def test_every_alert_is_labelled_and_annotated() -> None:
    for rule in alert_rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_dashboard_panels_are_unique_and_do_not_overlap() -> None:
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells = {}
    for panel in panels:
        pos = panel["gridPos"]
        for x, y in itertools.product(
            range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        ):
            assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
            cells[(x, y)] = panel["title"]


def queried_series() -> set[str]:
    """Every `ray_animegan_*` series name (without `ray_`) the dashboard and alerts query,
    and that the alert tests feed in."""
    texts = [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    texts += [rule["expr"] for rule in alert_rules()]
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    texts += [series["series"] for test in tests for series in test.get("input_series", [])]
    return {name for text in texts for name in QUERIED.findall(text)}


def test_queries_were_found() -> None:
    assert {"animegan_requests_total", "animegan_jobs_total"} <= queried_series()


@pytest.mark.parametrize("series", sorted(queried_series()))
def test_queried_series_is_a_declared_metric(series: str) -> None:
    declared = declared_metrics()
    assert len(declared) >= 10, "could not parse serve_app/metrics.py"
    matches = [
        (name, kind)
        for name, kind in declared.items()
        for suffix in SUFFIXES[kind]
        if series == name + suffix
    ]
    assert matches, f"ray_{series} is no series of a metric in serve_app/metrics.py"
