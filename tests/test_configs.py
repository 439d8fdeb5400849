"""Every shipped config is valid: the Serve configs as `serve build` writes them (Ray's
ServeDeploySchema) with args that AppConfig accepts, the KubeRay RayService and its
serveConfigV2, the Ray cluster launcher YAML, and the nginx edge (`nginx -t`, its bounds
derived from the app's defaults); both cluster setups give every node the shared job
records (their Redis) and store. No Ray cluster is started, nothing is connected to."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from ray.serve.config import HTTPOptions
from ray.serve.schema import ServeDeploySchema
from redis.connection import parse_url

from serve_app.config import AppConfig, BatchConfig, JobsConfig
from serve_app.jobs.redis_store import RedisRecords
from serve_app.jobs.stores import open_record_store, with_environment
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
                assert deployment["max_ongoing_requests"] >= batch.largest_batch, name


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
    assert BatchConfig.model_validate(stylizer["user_config"]).largest_batch >= 16


def test_check_catches_a_batch_capped_by_max_ongoing_requests():
    config = load(REPO / "serve_config.yaml")
    [stylizer] = [d for d in config["applications"][0]["deployments"] if d["name"] == "Stylizer"]
    batch = BatchConfig.model_validate(stylizer["user_config"]).largest_batch
    stylizer["max_ongoing_requests"] = batch - 1
    with pytest.raises(AssertionError):
        check_serve_config(config)


def test_kuberay_rayservice():
    manifest = rayservice()
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
    installs = [c for c in config["setup_commands"] if " install " in c]
    assert any("animegan-serve[server]" in c for c in installs), "Ray and the service's parts"
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


# ---- Jobs on many nodes: every node told the shared job records and store ------------
# (each node's environment; serve_app.jobs.stores.with_environment reads it)

REDIS = CONFIGS / "kuberay" / "redis.yaml"
KUBERAY_METRICS_PORT = 8080  # the metrics-export-port KubeRay sets where none is given
RECORDS_ENV = JobsConfig().records_url_env
STORE_ENV = JobsConfig().store_url_env
DEPENDENT_VARIABLE = re.compile(r"\$\((\w+)\)")  # Kubernetes' $(NAME) in an env value
PASSWORD_FROM_FILE = re.compile(r"\$\(cat ([^)\s]+)\)")  # a launcher command's $(cat FILE)
HEAD_IP = "10.0.0.1"  # what the launcher puts in $RAY_HEAD_IP on a worker


def load_all(path: Path) -> dict[str, dict]:
    """A multi-document manifest's objects, by kind (one each)."""
    with path.open() as f:
        objects = [doc for doc in yaml.safe_load_all(f) if doc]
    by_kind = {obj["kind"]: obj for obj in objects}
    assert len(by_kind) == len(objects), "one object of each kind"
    return by_kind


def rayservice() -> dict:
    return load_all(KUBERAY)["RayService"]


def config_map_value(name: str, key: str) -> str:
    """A ConfigMap's value as the manifest's header creates it (`kubectl create configmap
    NAME --from-literal=KEY=VALUE`), its BUCKET filled in."""
    header = KUBERAY.read_text().split("\napiVersion:", 1)[0]
    pattern = rf"kubectl create configmap {name} --from-literal={key}=(\S+)"
    [value] = re.findall(pattern, header)
    return value.replace("BUCKET", "a-bucket")


def secret_value(name: str, key: str) -> str:
    """What a test says a Secret's value is (URL-safe, as the header's `openssl rand -hex`)."""
    return f"secret-{name}-{key}"


def container_env(container: dict) -> dict[str, str]:
    """A container's environment as Kubernetes sets it: a Secret's value as
    `secret_value`, `$(NAME)` expanded when NAME is defined earlier in the list (later or
    unknown: left as it is, as Kubernetes does)."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            value = DEPENDENT_VARIABLE.sub(
                lambda m: env.get(m.group(1), m.group(0)), variable["value"]
            )
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            value = config_map_value(ref["name"], ref["key"])
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            value = secret_value(ref["name"], ref["key"])
        env[variable["name"]] = value
    return env


def ray_pod_templates(rayservice: dict) -> dict[str, dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def ray_containers(template: dict) -> list[dict]:
    """A Ray pod's Ray container (the first, as KubeRay requires), not its edge sidecar."""
    containers = template["spec"]["containers"]
    assert containers[0]["name"].startswith("ray-")
    return containers[:1]


def redis_pod(manifest: dict[str, dict]) -> tuple[dict, dict]:
    """The Redis StatefulSet's pod template and its one container."""
    template = manifest["StatefulSet"]["spec"]["template"]
    [container] = template["spec"]["containers"]
    return template, container


def redis_conf(manifest: dict[str, dict]) -> dict[str, str]:
    lines = manifest["ConfigMap"]["data"]["redis.conf"].splitlines()
    pairs = [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def the_stores_a_node_opens(environment: dict[str, str], monkeypatch) -> tuple[JobsConfig, Any]:
    """The jobs config a replica runs with in ``environment`` (the shipped Serve config
    sets neither URL) and the record store it opens: nothing is connected to."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = with_environment(JobsConfig())
    records, _ = open_record_store(config, local_root=None)  # object storage: not local
    asyncio.run(records.close())
    return config, records.store


def test_every_ray_container_is_told_the_kuberay_redis_and_object_storage(monkeypatch):
    """Each container's ANIMEGAN_JOBS_RECORDS_URL names redis.yaml's Service and carries
    the password of the Secret that Redis itself requires; ANIMEGAN_JOBS_STORE_URL is
    object storage; the app would open Redis for them."""
    redis_manifest = load_all(REDIS)
    service = redis_manifest["Service"]
    [port] = service["spec"]["ports"]
    redis_password = container_env(redis_pod(redis_manifest)[1])["REDIS_PASSWORD"]
    for group, template in ray_pod_templates(rayservice()).items():
        for container in ray_containers(template):
            where = f"{group}/{container['name']}"
            env = container_env(container)
            assert RECORDS_ENV in env and STORE_ENV in env, where
            records_url = env[RECORDS_ENV]
            assert "$(" not in records_url, f"{where}: unexpanded (defined after?) {records_url}"
            config, store = the_stores_a_node_opens(
                {RECORDS_ENV: records_url, STORE_ENV: env[STORE_ENV]}, monkeypatch
            )
            assert isinstance(store, RedisRecords) and store.url == records_url, where
            assert urlsplit(config.store_url).scheme in ("s3", "gs"), where
            assert parse_url(records_url) == {
                "host": service["metadata"]["name"],
                "port": port["port"],
                "password": redis_password,
                "db": 0,
            }, where


def test_the_kuberay_redis_keeps_its_records_and_requires_a_password():
    manifest = load_all(REDIS)
    conf = redis_conf(manifest)
    assert conf["appendonly"] == "yes", "finished jobs survive a restart"
    assert conf["maxmemory-policy"] == "noeviction", "a record is never evicted"
    template, container = redis_pod(manifest)
    assert manifest["StatefulSet"]["spec"]["replicas"] == 1
    # The password: from the Secret, given to redis-server on stdin after the config file.
    assert container_env(container)["REDIS_PASSWORD"] == secret_value("animegan-redis", "password")
    script = " ".join(container["command"] + container["args"])
    started = re.search(r"exec redis-server (\S+) - <<", script)
    assert started and "\nrequirepass $REDIS_PASSWORD\n" in script, script
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    conf_folder = started.group(1).rsplit("/", 1)[0]
    [config_volume] = [name for name, path in mounts.items() if path == conf_folder]
    assert volumes[config_volume]["configMap"]["name"] == manifest["ConfigMap"]["metadata"]["name"]
    # The append-only file on a claimed volume, not in the container.
    claims = manifest["StatefulSet"]["spec"]["volumeClaimTemplates"]
    data_volumes = [name for name, path in mounts.items() if path == conf["dir"]]
    assert data_volumes == [claim["metadata"]["name"] for claim in claims]
    assert container["resources"]["limits"]["memory"]


def test_the_kuberay_redis_is_reached_by_the_ray_pods_only():
    manifest = load_all(REDIS)
    template, _ = redis_pod(manifest)
    pod_labels = template["metadata"]["labels"]
    service = manifest["Service"]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP", "no public exposure"
    assert service["selector"].items() <= pod_labels.items()
    assert "Ingress" not in manifest
    policy = manifest["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    [rule] = policy["ingress"]
    [source] = rule["from"]
    clients = source["podSelector"]["matchLabels"]
    for group, ray_template in ray_pod_templates(rayservice()).items():
        labels = ray_template.get("metadata", {}).get("labels", {})
        assert clients.items() <= labels.items(), f"{group}: not admitted to Redis"


def start_command_env(command: str) -> dict[str, str]:
    """The NAME=value assignments just before `ray start` in a launcher command."""
    words = shlex.split(command)
    at = next(i for i in range(len(words)) if words[i : i + 2] == ["ray", "start"])
    env = {}
    for word in reversed(words[:at]):
        name, equals, value = word.partition("=")
        if not equals or not name.isidentifier():
            break
        env[name] = value
    return env


def option(words: list[str], name: str) -> str:
    """The value of ``--name value`` or ``--name=value`` in a command's words."""
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1]
        if word.startswith(f"{name}="):
            return word.partition("=")[2]
    raise AssertionError(f"no {name} in {words}")


def test_the_launchers_head_runs_redis_for_the_job_records():
    config = load(LAUNCHER)
    setup = " ".join(config["head_setup_commands"])
    assert "apt-get install" in setup and "redis-server" in setup
    # The package's own service would hold 6379, the port GCS needs.
    assert "systemctl disable --now redis-server" in setup
    head = config["head_start_ray_commands"]
    [started] = [i for i, command in enumerate(head) if "redis-server -" in command]
    [ray_start] = [i for i, command in enumerate(head) if "ray start" in command]
    assert started < ray_start, "Redis is up before the first replica looks for it"
    piped, redis_server = head[started].split("|")
    words = shlex.split(redis_server)
    # "-" first: config from stdin (Ubuntu 22.04's Redis 6.0 reads stdin only there).
    assert words[:2] == ["redis-server", "-"]
    assert option(words, "--appendonly") == "yes" and option(words, "--dir")
    assert option(words, "--bind") == "0.0.0.0", "workers reach it on the private network"
    gcs_port = option(shlex.split(head[ray_start]), "--port")
    assert option(words, "--port") != gcs_port
    [password_file] = PASSWORD_FROM_FILE.findall(piped)
    assert "requirepass" in piped and password_file in config["file_mounts"]


def test_every_launcher_node_starts_ray_told_the_shared_job_stores(monkeypatch):
    config = load(LAUNCHER)
    redis_command = next(c for c in config["head_start_ray_commands"] if "redis-server -" in c)
    redis_port = int(option(shlex.split(redis_command.split("|")[1]), "--port"))
    starts = {
        "head": [c for c in config["head_start_ray_commands"] if "ray start" in c],
        "worker": [c for c in config["worker_start_ray_commands"] if "ray start" in c],
    }
    for node, commands in starts.items():
        assert commands, node
        for command in commands:
            env = start_command_env(command)
            assert RECORDS_ENV in env and STORE_ENV in env, f"{node}: {command}"
            [password_file] = PASSWORD_FROM_FILE.findall(env[RECORDS_ENV])
            assert password_file in config["file_mounts"], "the password on every node"
            records_url = PASSWORD_FROM_FILE.sub("launcher-password", env[RECORDS_ENV])
            records_url = records_url.replace("$RAY_HEAD_IP", HEAD_IP)
            _, store = the_stores_a_node_opens(
                {RECORDS_ENV: records_url, STORE_ENV: env[STORE_ENV]}, monkeypatch
            )
            assert isinstance(store, RedisRecords), node
            parsed = parse_url(records_url)
            assert (parsed["port"], parsed["password"]) == (redis_port, "launcher-password")
            assert parsed["host"] == {"head": "127.0.0.1", "worker": HEAD_IP}[node]
            assert urlsplit(env[STORE_ENV]).scheme == "s3", "every node reaches the store"


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


# --- the image and the way in ----------------------------------------------------------

RAYSERVICE_CRD = REPO / "tests" / "fixtures" / "kuberay" / "ray.io_rayservices.yaml.gz"


def strict(schema: Any) -> Any:
    """A CRD's structural schema as ``kubectl apply --validate=strict`` reads it: a field an
    object does not declare is an error, unless it keeps unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {name: strict(value) for name, value in schema.items()}
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not keeps_unknown:
        schema["additionalProperties"] = False
    return schema


def test_the_kuberay_manifest_validates_against_the_rayservice_crd():
    """The RayService CRD of KubeRay (ray-project/kuberay v1.7.0-rc.0-5-gfeeaf72fa,
    ray-operator/config/crd/bases/ray.io_rayservices.yaml, gzipped here)."""
    crd = yaml.safe_load(gzip.decompress(RAYSERVICE_CRD.read_bytes()))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    manifest = rayservice()
    jsonschema.validate(manifest, schema)
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}  # a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_every_worker_pod_has_the_edge_and_the_service_reaches_it_only():
    """The edge container runs configs/nginx/animegan.conf (the ConfigMap the header makes
    from it), which forwards to Serve's proxy in the same pod; the Service selects every
    worker pod and targets the edge's port, never Serve's. The head has none: it must be
    Ready before the operator deploys the app, which an edge there probing ``/readyz``
    never let it be. The edge's port is not KubeRay's ``metrics-export-port`` (8080, in
    every Ray container): the edge and Ray's metrics agent could not both bind it."""
    objects = load_all(KUBERAY)
    header = KUBERAY.read_text().split("\napiVersion:", 1)[0]
    [config_map] = re.findall(r"kubectl create configmap (\S+) --from-file=(\S+)", header)
    assert (REPO / config_map[1]).is_file()
    edge_conf = (REPO / config_map[1]).read_text()
    serve = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])["http_options"]
    assert f"server {serve['host']}:{serve['port']};" in edge_conf
    [listen] = re.findall(r"^\s*listen (\d+);", edge_conf, re.M)
    assert int(listen) != KUBERAY_METRICS_PORT
    service = objects["Service"]["spec"]
    templates = ray_pod_templates(rayservice())
    head = templates.pop("head")
    assert [container["name"] for container in head["spec"]["containers"]] == ["ray-head"]
    assert not service["selector"].items() <= head["metadata"]["labels"].items()
    for group, template in templates.items():
        [edge] = [c for c in template["spec"]["containers"] if c["name"] == "edge"]
        [port] = edge["ports"]
        assert (
            port["containerPort"] == int(listen)
            and port["name"] == service["ports"][0]["targetPort"]
        )
        # Traffic once the app can serve: the app's readiness route, through the edge.
        assert edge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": int(listen)}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        [mount] = edge["volumeMounts"]
        assert volumes[mount["name"]]["configMap"]["name"] == config_map[0], group
        labels = template["metadata"]["labels"]
        assert service["selector"].items() <= labels.items(), group
    assert service.get("type", "ClusterIP") == "ClusterIP"


def test_the_images_the_manifest_runs_are_the_dockerfiles():
    """Every Ray container runs an image named as the Dockerfile's header builds it, the
    GPU group the GPU variant; the Ray versions agree."""
    dockerfile = (REPO / "Dockerfile").read_text()
    built = set(re.findall(r"docker build -t (\S+)", dockerfile))
    cluster = rayservice()["spec"]["rayClusterConfig"]
    for group, template in ray_pod_templates(rayservice()).items():
        [container] = ray_containers(template)
        assert container["image"] in built, group
        assert container["image"].endswith("-gpu") == (group == "gpu"), group
    [ray_version] = re.findall(r"^ARG RAY_VERSION=(\S+)", dockerfile, re.M)
    assert cluster["rayVersion"] == ray_version


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    run = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def dockerfile_pip_installs() -> list[list[str]]:
    """The Dockerfile's `pip install` commands, its ARGs' defaults filled in."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    commands = []
    for run in re.findall(r"^RUN (.+)$", text, re.M):
        for command in run.split("&&"):
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], command))
            if words[:2] == ["pip", "install"]:
                commands.append(words[2:])
    return commands


@pytest.mark.slow
def test_the_dockerfiles_install_commands_resolve_in_a_fresh_venv(tmp_path):
    """What `docker build` would install, resolved by pip in a fresh venv (`--dry-run`: no
    image builder here). The CPU index is not reachable from CI: this machine's index,
    whose torch==2.13.0 is the CPU build (README), stands in for it."""
    commands = dockerfile_pip_installs()
    assert any(c[-1].startswith("torch==") for c in commands) and any(
        ".[" in c[-1] for c in commands
    )
    venv.create(tmp_path / "venv", with_pip=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install", "--dry-run", "-q"]
    for words in commands:
        kept = [w for i, w in enumerate(words) if "--index-url" not in words[max(0, i - 1) : i + 1]]
        report = tmp_path / "report.json"
        run = subprocess.run(
            [*pip, "--report", str(report), *kept], cwd=REPO, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]
        names = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
        assert names, words
