"""Every operation of the live OpenAPI document, through the shipped nginx edge in front of
the real service with API keys and CORS on.

The operations come from the running service's own ``/openapi.json``, so a route added
later is walked without anyone listing it here; the walk knows how to fill what the
document asks for (a path parameter's value, a multipart picture) and fails by name when
an operation asks for something it does not know. Each answer is checked to be the
service's own: the edge's access log shows Serve's status for the request, so a refusal
or a mangled answer of nginx (its 404, 405, 413, 502, 504) cannot pass for one.

The edge is the shipped file rendered for this module's application; its per-client
request budget is raised, since the walk sends some fifty requests in a few seconds from
one address (the budget has its own test in test_edge.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.metrics import wait_for_routes
from tests.support.nginx_edge import (
    Edge,
    new_id,
    open_socket,
    running_edge,
    websocket_messages,
    with_rate,
)
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import app_args, deploy, ingress_deployment, make_config, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = "edge-key-one,edge-key-two"
KEY = "edge-key-two"
ORIGIN = "https://app.example.test"
ARGS = app_args(cors_origins=[ORIGIN], warm_examples=["4.jpg"])
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
EVENTS_PROTOCOL = "animegan.jobs.v1"
LIVE_PROTOCOL = "animegan.live.v1"
# Response headers a browser reads without their being exposed (CORS-safelisted), and
# those meant for the connection or for proxies rather than for the client's code.
NOT_FOR_CLIENTS = {
    "cache-control",
    "content-language",
    "content-length",
    "content-type",
    "expires",
    "last-modified",
    "pragma",
    "connection",
    "date",
    "keep-alive",
    "server",
    "transfer-encoding",
    "upgrade",
    "vary",
    "x-accel-buffering",
}


@pytest.fixture(scope="module")
def keyed_app(default_app) -> str:
    """Keys required, one CORS origin, one example photo (so /examples/{name} has one)."""
    env = {"env_vars": {"ANIMEGAN_API_KEYS": KEYS}}
    deploy(ARGS, ingress=ingress_deployment(ray_actor_options={"num_cpus": 0, "runtime_env": env}))
    wait_ready(default_app)  # /readyz is walked too
    return default_app


def generous_budget(text: str) -> str:
    return with_rate(text, per_s=1000, burst=1000)


@pytest.fixture(scope="module")
def edge(keyed_app, tmp_path_factory) -> Iterator[Edge]:
    upstream = urlsplit(keyed_app).netloc
    directory = tmp_path_factory.mktemp("edge-routes")
    with running_edge(directory, upstream, make_config(**ARGS), generous_budget) as running:
        yield running


@pytest.fixture
def client(edge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=120) as http:
        yield http


def keyed(headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **(headers or {})}


@dataclass
class Operation:
    method: str
    path: str
    spec: dict

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def requires_key(self) -> bool:
        """Declared: some scheme is required (no empty alternative in ``security``)."""
        security = self.spec.get("security", [])
        return bool(security) and all(security)

    @property
    def header_parameters(self) -> list[str]:
        return [p["name"] for p in self.spec.get("parameters", []) if p["in"] == "header"]

    def answered(self, response: httpx.Response) -> bool:
        """A success, or, for an operation that documents no 2xx (``GET /v1/live``, a
        WebSocket's path), the one answer it documents for plain HTTP."""
        statuses = self.spec["responses"]
        if any(status.startswith("2") for status in statuses):
            return response.is_success
        return str(response.status_code) in statuses and response.status_code not in (401, 422)

    @property
    def path_parameters(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


def operations(client: httpx.Client) -> list[Operation]:
    """Every operation of the document the service serves (through the edge), deletions
    last (they end the job the others read)."""
    document = client.get("/openapi.json")
    assert document.status_code == 200, document.text
    found = [
        Operation(method, path, spec)
        for path, item in document.json()["paths"].items()
        for method, spec in item.items()
        if method in METHODS
    ]
    assert {"post /v1/jobs", "delete /v1/jobs/{job_id}", "get /healthz"} <= {
        f"{o.method} {o.path}" for o in found
    }
    return sorted(found, key=lambda o: o.method == "delete")


def finished_job(client: httpx.Client, seed: int) -> str:
    """A job of this module's key, submitted through the edge and followed to its end."""
    photo = synthetic_jpeg(64, 48, seed=seed)
    files = {"file": ("job.jpg", photo, "image/jpeg")}
    submitted = client.post("/v1/jobs", files=files, headers=keyed())
    assert submitted.status_code == 202, submitted.text
    with client.stream("GET", submitted.json()["links"]["events"], headers=keyed()) as events:
        states = [line for line in events.iter_lines() if line.startswith("event: ")]
    assert states[-1] == "event: done", states
    return submitted.json()["id"]


def path_values(client: httpx.Client, job_id: str) -> dict[str, str]:
    examples = client.get("/v1/examples", headers=keyed()).json()["examples"]
    assert examples, "the module's app has an example photo"
    return {"job_id": job_id, "name": examples[0]["name"]}


def request_for(operation: Operation, values: dict[str, str]) -> dict:
    """httpx arguments for a cheap, valid call of ``operation``."""
    unknown = [name for name in operation.path_parameters if name not in values]
    if unknown:
        pytest.fail(f"{operation}: the walk has no value for path parameters {unknown}")
    arguments: dict = {"method": operation.method.upper(), "url": operation.path.format(**values)}
    body = operation.spec.get("requestBody")
    if body is not None:
        arguments["files"] = multipart_files(operation, body["content"])
    return arguments


def multipart_files(operation: Operation, content: dict) -> list[tuple]:
    """A tiny real JPEG in every required field of the multipart body."""
    if "multipart/form-data" not in content:
        pytest.fail(f"{operation}: the walk sends multipart bodies only, not {list(content)}")
    schema = content["multipart/form-data"]["schema"]
    photo = synthetic_jpeg(48, 32, seed=424_270)
    return [(field, ("tiny.jpg", photo, "image/jpeg")) for field in schema["required"]]


def answered_by_the_service(edge: Edge, operation: Operation, request_id: str, status: int):
    """The access log names Serve's answer to this request, with the status the client got."""
    entry = edge.log_entry(request_id)
    assert entry["upstream_addr"], f"{operation}: nginx answered {status} by itself: {entry}"
    assert entry["upstream_status"] == str(status), f"{operation}: {entry}"


def unexposed_headers(response: httpx.Response) -> set[str]:
    """Headers of the answer a browser client could not read."""
    exposed = response.headers.get("access-control-expose-headers", "")
    readable = {name.strip().lower() for name in exposed.split(",")} | NOT_FOR_CLIENTS
    return {
        name for name in response.headers if name not in readable and "access-control" not in name
    }


def test_the_document_declares_the_bearer_key(client):
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    for operation in operations(client):
        for requirement in operation.spec.get("security", []):
            for name in requirement:
                assert (schemes[name]["type"], schemes[name]["scheme"]) == ("http", "bearer")
    keyed_paths = {o.path for o in operations(client) if o.requires_key}
    assert {"/v1/stylize", "/v1/jobs", "/v1/jobs/{job_id}"} <= keyed_paths
    assert not keyed_paths & {"/healthz", "/examples/{name}"}


def test_every_operation_refuses_a_missing_key_as_the_service_or_is_public(edge, client):
    """No key: the operations the document secures get the service's own 401 JSON through
    the edge, and the others answer (so the document's `security` is what the service
    does, route by route)."""
    values = path_values(client, job_id="0" * 32)  # a 401 comes before any lookup
    failures = []
    for operation in operations(client):
        request_id = new_id("nokey")
        arguments = request_for(operation, values)
        response = client.request(**arguments, headers={"X-Request-ID": request_id})
        try:
            answered_by_the_service(edge, operation, request_id, response.status_code)
            if operation.requires_key:
                assert response.status_code == 401, f"{operation}: {response.status_code}"
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
            else:
                assert operation.answered(response), f"{operation}: {response.status_code}"
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, "\n".join(failures)


def test_every_operation_passes_a_cors_preflight(edge, client):
    """The preflight a browser sends before each call (its method, and the headers it
    would set: the key, the id, a body's type, the operation's own header parameters, a
    Range where the answer can be partial) is allowed, by the service, through the edge."""
    values = path_values(client, job_id="0" * 32)
    failures = []
    for operation in operations(client):
        wanted = ["authorization", "x-request-id", *operation.header_parameters]
        if "requestBody" in operation.spec:
            wanted.append("content-type")
        if "206" in operation.spec["responses"]:
            wanted.append("range")
        request_id = new_id("preflight")
        response = client.options(
            request_for(operation, values)["url"],
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": operation.method.upper(),
                "Access-Control-Request-Headers": ", ".join(wanted),
                "X-Request-ID": request_id,
            },
        )
        try:
            assert response.status_code == 200, f"{operation}: {response.status_code}"
            answered_by_the_service(edge, operation, request_id, 200)
            assert response.headers["access-control-allow-origin"] == ORIGIN
            methods = response.headers["access-control-allow-methods"].split(", ")
            assert operation.method.upper() in methods, f"{operation}: {methods}"
        except AssertionError as failure:
            failures.append(f"{failure} {response.text}")
    assert not failures, "\n".join(failures)


def test_the_events_websocket_takes_the_key_through_the_edge(edge, client):
    """The WebSocket form of a job's events, through the edge: the key offered as a
    subprotocol gets the events to the end; no key gets the 4401 close."""
    events_path = f"/v1/jobs/{finished_job(client, seed=424_271)}/events"
    url = f"ws://{edge.host}:{edge.port}{events_path}"
    protocols = [EVENTS_PROTOCOL, f"bearer.{KEY}"]
    events, code = websocket_messages(url, open_socket(edge), subprotocols=protocols)
    assert code == 1000
    assert events and events[-1]["event"] == "done", events
    refused, code = websocket_messages(url, open_socket(edge), subprotocols=[EVENTS_PROTOCOL])
    assert (refused, code) == ([], 4401)
    # A page of another site, key or not: browsers apply no CORS to WebSockets.
    foreign = {"subprotocols": protocols, "origin": "https://elsewhere.test"}
    assert websocket_messages(url, open_socket(edge), **foreign) == ([], 4403)


def test_the_live_websocket_streams_through_the_edge(edge):
    """Frames in and stylized frames out through the edge, the key offered as a
    subprotocol, from a page of a CORS origin and of the edge's own host (nginx passes
    the host without its port); no key gets the 4401 close, another site's page 4403."""
    url = f"ws://{edge.host}:{edge.port}/v1/live?size=64"
    protocols = [LIVE_PROTOCOL, f"bearer.{KEY}"]
    for seed, origin in ((424_273, ORIGIN), (424_274, f"http://{edge.host}:{edge.port}")):
        options = {"open_timeout": 30, "subprotocols": protocols, "origin": origin}
        with connect(url, sock=open_socket(edge), **options) as ws:
            ws.send(synthetic_jpeg(96, 72, seed=seed))
            header = json.loads(ws.recv(timeout=120))
            frame = ws.recv(timeout=120)
            assert (header["width"], header["height"], frame[:3]) == (64, 48, b"\xff\xd8\xff")
    refused, code = websocket_messages(url, open_socket(edge), subprotocols=[LIVE_PROTOCOL])
    assert (refused, code) == ([], 4401)
    foreign = {"subprotocols": protocols, "origin": "https://elsewhere.test"}
    assert websocket_messages(url, open_socket(edge), **foreign) == ([], 4403)


def test_every_operation_answers_through_the_edge_with_a_key(edge, client):
    """With the key (and an Origin, as a browser sends): every operation succeeds with the
    service's own answer, every header a client needs is exposed to the browser, and the
    job operations act on a real job (deleted last)."""
    values = path_values(client, finished_job(client, seed=424_272))
    failures = []
    for operation in operations(client):
        request_id = new_id("walk")
        headers = keyed({"Origin": ORIGIN, "X-Request-ID": request_id})
        response = client.request(**request_for(operation, values), headers=headers)
        print(f"{operation}: {response.status_code}")
        try:
            answer = f"{operation}: {response.status_code} {response.text}"
            assert operation.answered(response), answer
            answered_by_the_service(edge, operation, request_id, response.status_code)
            assert response.headers["x-request-id"] == request_id
            assert response.headers["access-control-allow-origin"] == ORIGIN
            hidden = unexposed_headers(response)
            assert not hidden, f"{operation}: not exposed to browsers: {sorted(hidden)}"
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, "\n".join(failures)


def test_every_operation_is_counted_under_its_route_in_the_request_metrics(
    edge, client, metrics_url
):
    """Each operation of the document, and the events WebSocket, called through the edge
    (without a key: a 401 is counted like any answer), shows up in the request counter
    under its path template, never under "other" or a URL of its own."""
    values = path_values(client, job_id="0" * 32)
    paths = set()
    for operation in operations(client):
        client.request(**request_for(operation, values))
        paths.add(operation.path)
    sockets = {"/v1/jobs/{job_id}/events": EVENTS_PROTOCOL, "/v1/live": LIVE_PROTOCOL}
    for socket_path, protocol in sockets.items():
        url = f"ws://{edge.host}:{edge.port}{socket_path.format(**values)}"
        websocket_messages(url, open_socket(edge), subprotocols=[protocol])
    routes = wait_for_routes(metrics_url, paths | set(sockets))
    assert paths | set(sockets) <= routes, sorted(paths - routes)
    job_urls = {route for route in routes if "0" * 32 in route}
    assert not job_urls, job_urls


def test_every_get_operation_answers_head_through_the_edge(edge, client):
    """HEAD on each GET operation: the GET's status and type, no body, from the service
    through the edge (Serve's proxy and nginx send no body either: the connection serves
    the next request); an event stream, whose answer never ends, refuses HEAD (405)."""
    values = path_values(client, finished_job(client, seed=424_275))
    walked, failures = [], []
    for operation in operations(client):
        documented = operation.spec["responses"]
        if operation.method != "get" or not any(s.startswith("2") for s in documented):
            continue  # GET /v1/live: a WebSocket's path
        url = request_for(operation, values)["url"]
        request_id = new_id("head")
        get = client.get(url, headers=keyed({"Accept-Encoding": "identity"}))
        head = client.head(url, headers=keyed({"X-Request-ID": request_id}))
        streams = "text/event-stream" in documented["200"].get("content", {})
        try:
            answered_by_the_service(edge, operation, request_id, head.status_code)
            assert head.content == b"", f"{operation}: a body on HEAD"
            if streams:
                assert head.status_code == 405, f"{operation}: {head.status_code}"
                continue
            assert head.status_code == get.status_code, f"{operation}: {head.status_code}"
            assert head.headers["content-type"] == get.headers["content-type"], str(operation)
            if "content-length" in head.headers:
                assert int(head.headers["content-length"]) == len(get.content), str(operation)
            walked.append(operation.path)
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, "\n".join(failures)
    assert "/v1/jobs/{job_id}/result" in walked and len(walked) >= 8, walked
