"""Every shipped config is valid: the Serve configs as `serve build` writes them (Ray's
ServeDeploySchema) with args that AppConfig accepts, the KubeRay RayService and its
serveConfigV2, and the Ray cluster launcher YAML. No Ray cluster is started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig, BatchConfig

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
