"""The Serve application end to end: real local Ray, real HTTP, random weights."""

from __future__ import annotations

import io
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from ray import serve

from serve_app.errors import UnknownStyle
from serve_app.pipeline.cache_actor import CACHE_NAMESPACE, shard_names
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import STYLE_A, STYLE_B, deploy, make_config, stylizer_deployment

pytestmark = pytest.mark.integration

_seeds = iter(range(1000, 100_000))


def fresh_jpeg(width: int = 160, height: int = 120) -> bytes:
    """A picture no other test has sent (so its first request is a miss)."""
    return synthetic_jpeg(width, height, seed=next(_seeds))


def post(client: httpx.Client, data: bytes, **params) -> httpx.Response:
    return client.post("/v1/stylize", params=params, files={"image": ("photo.jpg", data)})


def stylizer_stats() -> dict:
    return serve.get_deployment_handle("Stylizer", "animegan").stats.remote().result()


def parallel(function, arguments: list) -> list:
    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(function, arguments))


def test_photo_returns_image_of_requested_size_and_format(client, photo_bytes):
    response = post(client, photo_bytes, style=STYLE_A, size=128, format="jpeg", quality=80)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-style"] == STYLE_A
    assert response.headers["x-weights"] == "random"
    assert response.headers["etag"].strip('"')
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "JPEG"
    source = Image.open(io.BytesIO(photo_bytes))
    assert max(picture.size) == 128
    assert picture.size[0] / picture.size[1] == pytest.approx(
        source.size[0] / source.size[1], rel=0.05
    )


def test_raw_body_upload_works_like_multipart(client):
    data = fresh_jpeg()
    response = client.post(
        "/v1/stylize", content=data, headers={"content-type": "image/jpeg"}, params={"size": 64}
    )
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).format == "PNG"


def test_repeat_is_a_hit_without_inference(client):
    data = fresh_jpeg()
    first = post(client, data, style=STYLE_A)
    assert first.headers["x-cache"] == "miss"
    before = stylizer_stats()["images"]
    second = post(client, data, style=STYLE_A)
    assert second.status_code == 200
    assert second.headers["x-cache"] == "hit"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert stylizer_stats()["images"] == before


@pytest.mark.parametrize(
    "change",
    [
        {"style": STYLE_B},
        {"size": 64},
        {"format": "webp"},
        {"format": "jpeg"},
        {"strength": 0.5},
        {"preserve_color": "true"},
    ],
)
def test_every_option_is_part_of_the_key(client, change):
    data = fresh_jpeg()
    first = post(client, data, style=STYLE_A)
    assert first.headers["x-cache"] == "miss"
    changed = post(client, data, **{"style": STYLE_A, **change})
    assert changed.status_code == 200
    assert changed.headers["x-cache"] == "miss"
    assert changed.content != first.content
    assert post(client, data, **{"style": STYLE_A, **change}).headers["x-cache"] == "hit"


def test_concurrent_identical_requests_share_one_inference(client):
    data = fresh_jpeg()
    before = stylizer_stats()["images"]
    responses = parallel(lambda _: post(client, data, style=STYLE_A), list(range(8)))
    assert all(r.status_code == 200 for r in responses)
    statuses = sorted(r.headers["x-cache"] for r in responses)
    assert statuses.count("miss") == 1, statuses
    assert set(statuses) <= {"miss", "coalesced", "hit"}
    assert stylizer_stats()["images"] == before + 1
    assert len({r.content for r in responses}) == 1


def test_concurrent_different_requests_form_batches(client):
    pictures = [fresh_jpeg() for _ in range(8)]
    responses = parallel(lambda data: post(client, data, style=STYLE_A), pictures)
    assert all(r.status_code == 200 for r in responses)
    model = client.get("/v1/stats").json()["model"]
    assert max(int(size) for size in model["batch_sizes"]) > 1, model


def test_poisoned_item_fails_alone():
    handle = serve.get_deployment_handle("Stylizer", "animegan")
    good = [np.full((64, 96, 3), i * 20, np.uint8) for i in range(7)]
    poisoned = np.zeros((63, 97, 3), np.uint8)  # sides the generator cannot take
    responses = [handle.stylize.remote(rgb, STYLE_A) for rgb in [*good[:3], poisoned, *good[3:]]]
    results, errors = [], []
    for response in responses:
        try:
            results.append(response.result(timeout_s=60))
        except Exception as error:
            errors.append(error)
    assert len(results) == 7 and len(errors) == 1
    assert "multiples of 4" in str(errors[0])
    assert all(result.rgb.shape == (64, 96, 3) for result in results)
    assert max(result.batch_size for result in results) > 1


def test_killing_the_cache_actor_loses_no_request(client):
    config = make_config()
    pictures = [fresh_jpeg() for _ in range(6)]
    assert all(post(client, p, size=64).status_code == 200 for p in pictures)

    def kill(no_restart: bool) -> None:
        [name] = shard_names(config.cache.name, config.cache.shards)
        actor = ray.get_actor(name, namespace=CACHE_NAMESPACE)
        ray.kill(actor, no_restart=no_restart)

    for no_restart in (False, True):
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, client, p, size=64) for p in pictures]
            kill(no_restart)
            futures += [pool.submit(post, client, p, size=64) for p in pictures]
            responses = [future.result() for future in futures]
        assert [r.status_code for r in responses] == [200] * len(responses)
    # The cache comes back (recreated by name, empty) and serves hits again.
    data = fresh_jpeg()
    post(client, data, size=64)
    assert post(client, data, size=64).headers["x-cache"] == "hit"


def test_reconfigure_changes_batch_size_live(client):
    before = stylizer_stats()
    user_config = {"max_batch_size": 2, "batch_wait_timeout_s": 0.25}
    deploy(stylizer=stylizer_deployment(user_config=user_config))
    try:
        after = stylizer_stats()
        assert after["max_batch_size"] == 2
        assert after["replica"] == before["replica"]  # same replica: no restart
        assert after["loads"] == before["loads"]  # no reload of the weights
        pictures = [fresh_jpeg() for _ in range(6)]
        handle = serve.get_deployment_handle("Stylizer", "animegan")
        rgbs = [np.full((64, 64, 3), i, np.uint8) for i in range(6)]
        results = [
            r.result(timeout_s=60) for r in [handle.stylize.remote(x, STYLE_A) for x in rgbs]
        ]
        assert max(result.batch_size for result in results) == 2
        assert all(post(client, p).status_code == 200 for p in pictures[:2])
    finally:
        deploy()
    assert stylizer_stats()["max_batch_size"] == 8


def test_auto_batch_size_times_each_shape_s_passes_and_chooses(client):
    auto = {"max_batch_size": "auto", "auto_max_batch_size": 4, "batch_wait_timeout_s": 0.25}
    deploy(stylizer=stylizer_deployment(user_config=auto))
    try:
        before = Counter(stylizer_stats()["batch_sizes"])
        handle = serve.get_deployment_handle("Stylizer", "animegan")
        for round_ in range(4):  # batches of 4 pictures of one shape
            rgbs = [np.full((64, 96, 3), 10 * round_ + i, np.uint8) for i in range(4)]
            calls = [handle.stylize.remote(rgb, STYLE_A) for rgb in rgbs]
            results = [call.result(timeout_s=60) for call in calls]
            assert all(result.rgb.shape == (64, 96, 3) for result in results)
            assert all(result.batch_size in (1, 2, 4) for result in results)
        # A job's frames take the same passes (one per turn on the model), in order.
        noise = [np.random.default_rng(i) for i in range(4)]
        frames = [rng.integers(0, 256, (64, 96, 3), np.uint8) for rng in noise]
        made = handle.stylize_frames.remote(frames, STYLE_A).result(timeout_s=60)
        assert [result.rgb.shape for result in made] == [(64, 96, 3)] * 4
        assert all(result.batch_size in (1, 2, 4) for result in made)
        alone = [handle.stylize.remote(frame, STYLE_A).result(timeout_s=60) for frame in frames]
        for index, result in enumerate(made):  # each closest to its own frame's (bf16 may
            # round a pass of 2 apart from a pass of 1 by a level or so)
            distance = [np.abs(result.rgb.astype(int) - a.rgb).mean() for a in alone]
            assert int(np.argmin(distance)) == index and min(distance) < 2, distance
        replica = stylizer_stats()
        assert replica["batch_config"]["max_batch_size"] == "auto"
        assert replica["max_batch_size"] == 4  # the batch; each shape's passes within it
        learned = replica["pass_sizes"]["96x64"]
        assert {1, 2} <= set(learned["rates"])  # tried upward from 1
        assert all(rate > 0 for rate in learned["rates"].values())
        assert learned["chosen"] in learned["rates"]
        passes = Counter(replica["batch_sizes"]) - before
        assert set(passes) <= {1, 2, 4} and passes[1] > 0  # only the sizes tried
        # The same figures in /v1/stats, as JSON.
        reported = client.get("/v1/stats").json()["model"]["pass_sizes"]["96x64"]
        assert reported["chosen"] == learned["chosen"]
        assert post(client, fresh_jpeg()).status_code == 200
    finally:
        deploy()


def test_handle_api_returns_the_same_bytes_as_http(client):
    data = fresh_jpeg()
    app = serve.get_app_handle("animegan")
    result = app.stylize.remote(data, style=STYLE_B, size=64, format="webp").result(timeout_s=60)
    assert result.cache == "miss"
    assert (result.media_type, result.style) == ("image/webp", STYLE_B)
    assert max(result.width, result.height) == 64
    response = post(client, data, style=STYLE_B, size=64, format="webp")
    assert response.headers["x-cache"] == "hit"
    assert response.content == result.data
    assert response.headers["etag"] == f'"{result.key}"'


def test_handle_api_raises_the_api_error():
    app = serve.get_app_handle("animegan")
    with pytest.raises(UnknownStyle) as raised:
        app.stylize.remote(fresh_jpeg(), style="nope").result(timeout_s=60)
    assert raised.value.status == 422 and raised.value.code == "unknown_style"


def test_batch_route_fails_bad_items_alone(client):
    files = [
        ("images", ("a.jpg", fresh_jpeg())),
        ("images", ("b.jpg", b"not a picture")),
        ("images", ("c.jpg", fresh_jpeg())),
    ]
    response = client.post("/v1/stylize/batch", files=files, params={"size": 64})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["status"] for item in results] == [200, 400, 200]
    assert results[1]["error"]["code"] == "undecodable_image"
    assert results[0]["media_type"] == "image/png" and results[0]["data"]


def test_styles_stats_health_docs(client):
    styles = client.get("/v1/styles").json()
    assert [s["name"] for s in styles["styles"]] == [STYLE_A, STYLE_B]
    assert all(s["random_weights"] for s in styles["styles"])
    assert all("weights" not in s for s in styles["styles"])  # no file paths published
    assert styles["default_style"] == STYLE_A
    stats = client.get("/v1/stats").json()
    for field in ("entries", "bytes", "max_bytes", "hits", "misses", "evictions", "hit_ratio"):
        assert field in stats["cache"]["shared"]
    assert "coalesced" in stats["cache"]
    assert stats["model"]["loads"] == 2  # two styles, each loaded once by this replica
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/v1/stylize"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"style": "nope"}, "unknown_style"),
        ({"size": 0}, "invalid_size"),
        ({"size": 100_000}, "invalid_size"),
        ({"format": "bmp"}, "invalid_format"),
        ({"quality": 1000}, "invalid_quality"),
        ({"strength": 1.5}, "invalid_strength"),
        ({"strength": -0.1}, "invalid_strength"),
        ({"preserve_color": "maybe"}, "invalid_parameters"),
        ({"size": "big"}, "invalid_parameters"),
    ],
)
def test_bad_parameters_are_422(client, params, code):
    response = post(client, fresh_jpeg(), **params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"", "image/jpeg", 400, "empty_upload"),
        (b"hello, I am text", "image/jpeg", 400, "undecodable_image"),
        (b"{}", "application/json", 415, "unsupported_media_type"),
    ],
)
def test_bad_uploads_get_json_errors(client, content, content_type, status, code):
    response = client.post("/v1/stylize", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_missing_field_and_oversize_body(client):
    misnamed = client.post("/v1/stylize", files={"picture": ("a.jpg", fresh_jpeg())})
    assert misnamed.status_code == 422
    assert misnamed.json()["error"]["code"] == "missing_image"
    oversize = client.post(
        "/v1/stylize", content=b"\xff" * (3 * 2**20), headers={"content-type": "image/jpeg"}
    )
    assert oversize.status_code == 413


def test_batch_without_content_type_is_a_json_415(client):
    response = client.post("/v1/stylize/batch", content=b"some bytes")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("route", ["/v1/stylize", "/v1/stylize/batch"])
def test_a_size_too_small_to_stylize_is_refused_before_the_body_is_read(base_url, route):
    """Headers only, with a large declared body that never comes: the answer must not wait."""
    url = httpx.URL(base_url)
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(
            f"POST {route}?size=8 HTTP/1.1\r\nHost: {url.netloc.decode()}\r\n"
            "Content-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n".encode()
        )
        answer = b""
        while b'"invalid_size"' not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 422"), answer
    assert b'"invalid_size"' in answer
