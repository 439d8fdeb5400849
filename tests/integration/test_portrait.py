"""Portrait mode through the real service: Ray Serve, HTTP, random weights."""

from __future__ import annotations

import base64
import io
from itertools import count

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from serve_app.errors import NoFace
from tests.support.faces import built_scene
from tests.support.pictures import SAMPLES
from tests.support.serve import STYLE_A, STYLE_B

pytestmark = pytest.mark.integration

_variants = count(1)


def variant(picture: np.ndarray) -> bytes:
    """``picture`` as a PNG no other request has sent (a corner pixel differs; PNG is
    lossless, so the bytes differ too), so its first request is a miss."""
    picture = np.array(picture, copy=True)
    n = next(_variants)
    picture[0, 0] = (n % 256, n // 256 % 256, 7)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def astronaut() -> bytes:
    return variant(np.asarray(Image.open(SAMPLES / "4.jpg").convert("RGB")))


def forest() -> bytes:
    return variant(np.asarray(Image.open(SAMPLES / "3.jpg").convert("RGB")))


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    """The forest photo (1280×672) with two faces pasted in, half-size: 640×336."""
    picture, _ = built_scene([((350, 330), 150, 0.0), ((930, 300), 130, 0.0)])
    return np.asarray(Image.fromarray(picture).resize((640, 336), Image.LANCZOS))


def post(client: httpx.Client, data: bytes, **params) -> httpx.Response:
    return client.post("/v1/stylize", params=params, files={"image": ("photo.jpg", data)})


def size_of(response: httpx.Response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content)).size


def test_crop_answers_a_square_of_the_requested_size(client):
    response = post(client, astronaut(), portrait="crop", size=80, style=STYLE_A)
    assert size_of(response) == (80, 80)
    assert response.headers["x-style"] == STYLE_A


def test_paste_keeps_the_photos_aspect(client, two_faces):
    response = post(client, variant(two_faces), portrait="paste", size=128)
    assert size_of(response) == (128, 68)  # 640×336 at a longer side of 128
    response = post(client, variant(two_faces), portrait="paste", size=128, background=STYLE_B)
    assert size_of(response) == (128, 68)


def test_no_face_is_a_json_422_and_whole_stylizes_the_picture(client):
    data = forest()
    response = post(client, data, portrait="crop", size=64)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "no_face"
    assert size_of(post(client, data, portrait="crop", no_face="whole", size=64)) == (64, 32)
    assert size_of(post(client, data, portrait="paste", no_face="whole", size=64)) == (64, 32)


@pytest.mark.parametrize(
    ("first", "change"),
    [
        ({}, {"portrait": "crop"}),
        ({"portrait": "crop"}, {"portrait": "paste"}),
        ({"portrait": "paste"}, {"portrait": "paste", "background": STYLE_B}),
        ({"portrait": "paste"}, {"portrait": "paste", "no_face": "whole"}),
    ],
)
def test_each_portrait_option_is_part_of_the_key(client, first, change):
    data = astronaut()
    params = {"style": STYLE_A, "size": 64}
    response = post(client, data, **params, **first)
    assert response.status_code == 200 and response.headers["x-cache"] == "miss"
    assert post(client, data, **params, **first).headers["x-cache"] == "hit"
    changed = post(client, data, **params, **change)
    assert changed.status_code == 200, changed.text
    assert changed.headers["x-cache"] == "miss"
    assert changed.headers["etag"] != response.headers["etag"]
    assert post(client, data, **params, **change).headers["x-cache"] == "hit"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"portrait": "face"}, "invalid_portrait"),
        ({"portrait": "paste", "background": "nope"}, "invalid_background"),
        ({"portrait": "crop", "no_face": "skip"}, "invalid_no_face"),
    ],
)
def test_bad_values_are_422_before_the_body_is_read(client, params, code):
    response = post(client, b"not even a picture", **params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    batch = client.post("/v1/stylize/batch", params=params, files=[("images", ("a", b"x"))])
    assert batch.status_code == 422 and batch.json()["error"]["code"] == code


def test_batch_route_takes_the_options_and_fails_faceless_items_alone(client):
    files = [("images", ("a.jpg", astronaut())), ("images", ("b.jpg", forest()))]
    response = client.post(
        "/v1/stylize/batch", params={"portrait": "crop", "size": 48}, files=files
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["status"] == 200 and (first["width"], first["height"]) == (48, 48)
    assert Image.open(io.BytesIO(base64.b64decode(first["data"]))).size == (48, 48)
    assert second["status"] == 422 and second["error"]["code"] == "no_face"


def test_handle_api_takes_the_options(client):
    app = serve.get_app_handle("animegan")
    result = app.stylize.remote(astronaut(), size=64, portrait="crop").result(timeout_s=120)
    assert (result.width, result.height) == (64, 64)
    with pytest.raises(NoFace) as raised:
        app.stylize.remote(forest(), size=64, portrait="paste").result(timeout_s=120)
    assert raised.value.code == "no_face"


def test_the_docs_list_the_options(client):
    document = client.get("/openapi.json").json()
    parameters = document["paths"]["/v1/stylize"]["post"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in parameters}
    assert schemas["portrait"]["enum"] == ["off", "crop", "paste"]
    assert schemas["background"]["enum"] == ["photo", STYLE_A, STYLE_B]
    assert schemas["no_face"]["enum"] == ["error", "whole"]
