"""HEAD on every GET route: the GET's status and headers, no body; a job's result reports
its size and ranges without reading its bytes; the endless event stream and the live
socket's path answer HEAD with 405, as any route a method it does not take."""

from __future__ import annotations

import time
import warnings

import pytest
from fastapi.routing import APIRoute

from serve_app.http.app import ROUTERS, create_app
from tests.support.fakes import small_service
from tests.support.pictures import synthetic_jpeg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient

# Headers that differ between any two answers, whatever the method.
PER_ANSWER = {"date", "x-request-id", "server-timing"}
WITHOUT_HEAD = {"/v1/jobs/{job_id}/events", "/v1/live"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    service = small_service(str(tmp_path_factory.mktemp("jobs")))
    with TestClient(create_app(service)) as client:
        yield client


def filled(path: str) -> str:
    """A route's path with its parameters filled (a job that does not exist)."""
    return path.replace("{job_id}", "f" * 32).replace("{name}", "nosuch.jpg")


def get_routes() -> list[str]:
    """The path of every GET route of the app's routers."""
    return [
        route.path
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and "GET" in route.methods
    ]


def same_headers(get, head) -> dict:
    """The headers of two answers that differ, by name: (GET's, HEAD's)."""
    names = (set(get.headers) | set(head.headers)) - PER_ANSWER
    return {
        name: (get.headers.get(name), head.headers.get(name))
        for name in names
        if get.headers.get(name) != head.headers.get(name)
    }


def test_every_get_route_answers_head_as_get_without_a_body(client):
    walked = 0
    for route in get_routes():
        if route in WITHOUT_HEAD:
            continue
        path = filled(route)
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code, path
        assert same_headers(get, head) == {}, path
        assert head.content == b"", path
        walked += 1
    assert walked >= 9  # the page, probes, styles, stats, examples, jobs and their results


@pytest.mark.parametrize("path", sorted(WITHOUT_HEAD))
def test_the_event_stream_and_the_live_path_refuse_head(client, path):
    answer = client.head(filled(path))
    assert answer.status_code == 405 and "HEAD" not in answer.headers["allow"]


def test_head_is_checked_as_get_is(client):
    """A query the GET refuses is refused on HEAD too (the route's checks come along)."""
    assert client.head("/v1/jobs?limit=5&limit=6").status_code == 422


def test_a_result_s_head_gives_its_size_and_ranges(client):
    picture = synthetic_jpeg(seed=5, width=64, height=48)
    made = client.post("/v1/jobs", content=picture, headers={"Content-Type": "image/jpeg"})
    assert made.status_code in (200, 202), made.text
    job_id = made.json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").json()["state"] != "done":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    path = f"/v1/jobs/{job_id}/result"
    whole, head = client.get(path), client.head(path)
    ranged = client.head(path, headers={"Range": "bytes=0-9"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(whole.content))
    assert head.headers["accept-ranges"] == "bytes" and same_headers(whole, head) == {}
    assert ranged.status_code == 206 and ranged.headers["content-length"] == "10"
    assert ranged.headers["content-range"] == f"bytes 0-9/{len(whole.content)}"
    # If-Range: the range only for this version (its ETag), else the whole result.
    etag = whole.headers["etag"]
    for method in (client.get, client.head):
        for if_range, status in ((etag, 206), ('"another-version"', 200), (f"W/{etag}", 200)):
            answer = method(path, headers={"Range": "bytes=0-9", "If-Range": if_range})
            assert answer.status_code == status, (method, if_range)
            wanted = "10" if status == 206 else str(len(whole.content))
            assert answer.headers["content-length"] == wanted
        dated = method(
            path, headers={"Range": "bytes=0-9", "If-Range": "Fri, 04 Dec 2026 10:00:00 GMT"}
        )
        assert dated.status_code == 200
        # If-None-Match: the copy the client holds is current (304, no bytes), or not.
        for if_none_match, status in (
            (etag, 304),
            (f'"another-version", W/{etag}', 304),
            ("*", 304),
            ('"another-version"', 200),
        ):
            answer = method(path, headers={"If-None-Match": if_none_match})
            assert answer.status_code == status, (method, if_none_match)
            assert answer.headers["etag"] == etag
            if status == 304:
                assert answer.content == b""
    # Positions written with thousands of digits (leading zeros): still small numbers,
    # read without a 500 (Python refuses to convert integers of over 4300 digits).
    zeros = "0" * 5000
    for header, status in (
        (f"bytes={zeros}1-", 206),
        (f"bytes=-{zeros}5", 206),
        (f"bytes=2-{zeros}3", 206),
    ):
        answer = client.get(path, headers={"Range": header})
        assert answer.status_code == status, header


def test_a_static_file_s_405_names_the_methods_it_takes(client):
    refused = client.post("/static/app.js")
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"
    assert set(refused.headers["allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}
