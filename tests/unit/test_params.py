"""A route's query: a route that takes query parameters refuses a name it does not take and
a name sent twice (422 ``invalid_parameters``), on every such route and the live WebSocket;
a route that takes none ignores a query."""

from __future__ import annotations

import inspect
import warnings

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

from serve_app.http.app import ROUTERS, create_app
from tests.support.fakes import small_service

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    service = small_service(str(tmp_path_factory.mktemp("jobs")))
    with TestClient(create_app(service)) as client:
        yield client


def http_routes() -> list[tuple[str, str, list[str]]]:
    """(method, path with its parameters filled, the query parameters it takes) of every
    HTTP route of the routers ``create_app`` includes."""
    routes = []
    for route in [route for router in ROUTERS for route in router.routes]:
        if isinstance(route, APIRoute):
            taken = [param.alias for param in route.dependant.query_params]
            for dependency in route.dependant.dependencies:
                taken += [param.alias for param in dependency.query_params]
            path = route.path.replace("{job_id}", "nosuchjob").replace("{name}", "1.jpg")
            routes.append((sorted(route.methods)[0], path, taken))
    return routes


def test_the_routes_that_take_query_parameters_are_the_ones_checked():
    checked = {(method, path) for method, path, taken in http_routes() if taken}
    assert checked == {
        ("POST", "/v1/stylize"),
        ("POST", "/v1/stylize/batch"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/live"),
    }


def calls(dependant: Dependant):
    """The functions FastAPI calls for a route: its endpoint and every dependency's."""
    yield dependant.call
    for dependency in dependant.dependencies:
        yield from calls(dependency)


def test_no_route_runs_its_endpoint_or_dependencies_in_the_thread_pool():
    """FastAPI runs a plain function in its thread pool: two thread switches per call per
    request, most of a cache hit's cost in the ingress once there were three."""
    routes = [route for router in ROUTERS for route in router.routes]
    routes = [route for route in routes if isinstance(route, (APIRoute, APIWebSocketRoute))]
    assert len(routes) > 10
    for route in routes:
        for call in calls(route.dependant):
            assert inspect.iscoroutinefunction(call), (route.path, call)


def test_a_name_a_route_does_not_take_is_refused(client):
    for method, path, taken in http_routes():
        response = client.request(method, path, params={"strenght": "0.5"})
        if taken:
            assert response.status_code == 422, (method, path)
            error = response.json()["error"]
            assert error["code"] == "invalid_parameters"
            assert "'strenght'" in error["message"] and repr(taken[0]) in error["message"]
        else:  # nothing it reads could change: the query is no concern of the route's
            assert response.status_code != 422, (method, path)


def test_a_name_sent_twice_is_refused(client):
    for method, path, taken in http_routes():
        if taken:
            response = client.request(method, path, params=[(taken[0], "1"), (taken[0], "2")])
            assert response.status_code == 422, (method, path)
            error = response.json()["error"]
            assert error == {
                "code": "invalid_parameters",
                "message": f"query parameter {taken[0]!r} sent more than once",
            }


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("size=64&size=32", "query parameter 'size' sent more than once"),
        ("size=64&format=png", "unknown query parameter 'format'"),
    ],
)
def test_the_live_socket_closes_so_too(client, query, reason):
    with client.websocket_connect(f"/v1/live?{query}") as socket:
        message = socket.receive()
    assert message["type"] == "websocket.close" and message["code"] == 4422
    assert message["reason"].startswith(f"invalid_parameters: {reason}")
