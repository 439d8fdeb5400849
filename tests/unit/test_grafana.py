"""The Grafana dashboard is valid JSON with a panel over every metric the code defines."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "animegan-serve.json"


def defined_metrics() -> set[str]:
    source = (REPO / "serve_app" / "metrics.py").read_text()
    return set(re.findall(r'"(animegan_[a-z_]+)"', source))


def test_dashboard_has_a_panel_for_each_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    expressions = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )
    metrics = defined_metrics()
    assert len(metrics) >= 10
    missing = {name for name in metrics if f"ray_{name}" not in expressions}
    assert not missing, missing


def test_panels_are_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["type"] in {"timeseries", "stat"}
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert all(target["expr"] and target["refId"] for target in panel["targets"])
