"""Every shipped config is valid: the Serve configs as `serve build` writes them (Ray's
ServeDeploySchema) with args that AppConfig accepts, the KubeRay RayService and its
serveConfigV2, the Ray cluster launcher YAML, and the nginx edge (`nginx -t`, its bounds
derived from the app's defaults). No Ray cluster is started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ray.serve.config import HTTPOptions
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig, BatchConfig
from tests.support import nginx_edge
from tests.support.nginx_edge import directive_value, render_for

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
KUBERAY = CONFIGS / "kuberay" / "rayservice.yaml"
LAUNCHER = CONFIGS / "cluster.yaml"
BUILD_APP = "serve_app.app:build_app"
DEPLOYMENTS = {"Ingress", "Stylizer"}


def load(path: Path) -> dict:
    with path.open() as f:
        return yaml.safe_load(f)


def serve_config_paths() -> list[Path]:
    candidates = [REPO / "serve_config.yaml", *sorted(CONFIGS.glob("*.yaml"))]
    return [p for p in candidates if isinstance(load(p), dict) and "applications" in load(p)]


def check_serve_config(config: dict) -> None:
    """What every shipped serve config must satisfy (raises AssertionError/ValidationError)."""
    schema = ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "127.0.0.1", "Serve listens on loopback only"
    assert schema.applications, "no application"
    for app in config["applications"]:
        assert app["import_path"] == BUILD_APP
        AppConfig.model_validate(app["args"])  # what build_app checks at deploy time
        names = {d["name"] for d in app.get("deployments", [])}
        assert names <= DEPLOYMENTS, f"unknown deployments {names - DEPLOYMENTS}"
        for deployment in app.get("deployments", []):
            name = deployment["name"]
            assert "max_queued_requests" in deployment, f"{name}: set max_queued_requests"
            assert "max_ongoing_requests" in deployment, f"{name}: set max_ongoing_requests"
            user_config = deployment.get("user_config")
            if user_config is not None:
                batch = BatchConfig.model_validate(user_config)
                # Ray admits at most max_ongoing_requests per replica: a smaller value caps
                # every batch below max_batch_size.
                assert deployment["max_ongoing_requests"] >= batch.max_batch_size, name


def test_there_are_serve_configs():
    names = {p.relative_to(REPO).as_posix() for p in serve_config_paths()}
    assert {"serve_config.yaml", "configs/dev.yaml", "configs/gpu.yaml"} <= names


@pytest.mark.parametrize("path", serve_config_paths(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_serve_config_is_valid(path):
    check_serve_config(load(path))


def test_gpu_config_runs_fp16_batches_on_one_gpu_per_replica():
    [app] = load(CONFIGS / "gpu.yaml")["applications"]
    assert app["args"]["device"] == "cuda" and app["args"]["precision"] == "fp16"
    [stylizer] = [d for d in app["deployments"] if d["name"] == "Stylizer"]
    assert stylizer["ray_actor_options"]["num_gpus"] == 1
    assert stylizer["user_config"]["max_batch_size"] >= 16


def test_check_catches_a_batch_capped_by_max_ongoing_requests():
    config = load(REPO / "serve_config.yaml")
    [stylizer] = [d for d in config["applications"][0]["deployments"] if d["name"] == "Stylizer"]
    stylizer["max_ongoing_requests"] = stylizer["user_config"]["max_batch_size"] - 1
    with pytest.raises(AssertionError):
        check_serve_config(config)


def test_kuberay_rayservice():
    manifest = load(KUBERAY)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"]
    spec = manifest["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])  # a string holding YAML
    check_serve_config(serve_config)
    # The same app as configs/gpu.yaml, so that the two cannot drift apart.
    assert serve_config["applications"] == load(CONFIGS / "gpu.yaml")["applications"]

    cluster = spec["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)

    def gpus(group: dict) -> int:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        return int(limits.get("nvidia.com/gpu", 0))

    assert gpus(groups["gpu"]) >= 1 and gpus(groups["cpu"]) == 0
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_cluster_launcher_yaml():
    config = load(LAUNCHER)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert config.get(key), key
    assert config["provider"]["type"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values()), "a GPU type"
    assert any(not t["resources"].get("GPU") for t in workers.values()), "a CPU type"
    for node_type in types.values():
        assert "node_config" in node_type and "resources" in node_type
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard stays on loopback"
    assert "RAY_AUTH_MODE=token" in head_start


def test_cluster_launcher_yaml_matches_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip("this Ray has no ray-schema.json")
    jsonschema.validate(load(LAUNCHER), json.loads(schema_path.read_text()))


# ---- The nginx edge (configs/nginx/animegan.conf) ------------------------------------

EDGE_JOBS = "location = /v1/jobs"
EDGE_EVENTS = "location ~ ^/v1/jobs/[^/]+/events$"
EDGE_RESULT = "location ~ ^/v1/jobs/[^/]+/result$"


def app_defaults(**overrides) -> AppConfig:
    return AppConfig.model_validate({"styles": [{"name": "a", "weights": "random"}], **overrides})


def seconds(value: str) -> float:
    """An nginx time (``60s``, ``1h``) in seconds."""
    number, unit = int(value[:-1]), value[-1]
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


def test_nginx_edge_is_valid_as_shipped(tmp_path):
    """`nginx -t` on the shipped file, only its log path moved (-t opens log files)."""
    check = nginx_edge.check_config(tmp_path, nginx_edge.SHIPPED.read_text())
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


def test_nginx_edge_bounds_are_derived_from_the_apps_defaults():
    """The shipped file is exactly its own rendering for AppConfig's defaults: each body
    bound is the most the app reads on that route, rounded up to whole MiB (so the edge
    never refuses what the app accepts, and the app's own 413 answers the rest)."""
    shipped = nginx_edge.SHIPPED.read_text()
    assert render_for(app_defaults(), shipped) == shipped


def test_the_derivation_check_catches_a_bound_that_disagrees():
    shipped = nginx_edge.SHIPPED.read_text()
    bigger_videos = app_defaults(media={"max_bytes": 512 * 2**20})
    rendered = render_for(bigger_videos, shipped)
    assert rendered != shipped
    assert directive_value(rendered, "client_max_body_size", EDGE_JOBS) == "513m"


def test_nginx_edge_waits_longer_than_the_app():
    """nginx gives up after the app does, so the app's own answer (a 504 JSON, a job that
    `Prefer: wait` waited for) reaches the client; it drops an idle upstream connection
    before Serve's uvicorn does (else a request sent on it fails with 502)."""
    text = nginx_edge.SHIPPED.read_text()
    defaults = app_defaults()
    assert seconds(directive_value(text, "proxy_read_timeout")) > defaults.request_timeout_s
    jobs_wait = max(defaults.request_timeout_s, defaults.jobs.max_wait_s)
    assert seconds(directive_value(text, "proxy_read_timeout", EDGE_JOBS)) > jobs_wait
    upstream_idle = directive_value(text, "keepalive_timeout", "upstream animegan_serve")
    assert seconds(upstream_idle) < HTTPOptions().keep_alive_timeout_s


def test_nginx_edge_streams_job_uploads_results_and_events():
    """Bodies of jobs go to Serve as they arrive; results and events leave as Serve writes
    them; WebSocket upgrades pass (tests/integration/test_edge.py runs each through nginx)."""
    text = nginx_edge.SHIPPED.read_text()
    assert directive_value(text, "proxy_request_buffering", EDGE_JOBS) == "off"
    assert directive_value(text, "proxy_buffering", EDGE_RESULT) == "off"
    assert directive_value(text, "proxy_buffering", EDGE_EVENTS) == "off"
    assert "map $http_upgrade $animegan_connection {" in text
    headers = [line.split()[1:] for line in text.splitlines() if "proxy_set_header" in line]
    assert ["Upgrade", "$http_upgrade;"] in headers
    assert ["Connection", "$animegan_connection;"] in headers
