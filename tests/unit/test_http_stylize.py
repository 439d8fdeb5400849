"""The picture routes hand the service the caller's owner: its API key's, which bounds
that key's misses in progress, or the anonymous one on a service without keys."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from serve_app.errors import TooManyPictures
from serve_app.http.app import create_app
from serve_app.jobs.records import ANONYMOUS, owner_of
from tests.support.fakes import HeldModel, small_service
from tests.support.pictures import synthetic_jpeg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's deprecation note about httpx
    from fastapi.testclient import TestClient

KEY = "tenant-key"


@pytest.mark.parametrize("keys", [None, KEY])
def test_the_picture_routes_pass_the_caller_s_owner(tmp_path, monkeypatch, keys):
    monkeypatch.setenv("TEST_API_KEYS", keys or "")
    service = small_service(str(tmp_path), api_key_env="TEST_API_KEYS")
    owners = []

    async def refuse(files, options, owner):
        owners.append(owner)
        return [TooManyPictures("busy") for _ in files]

    async def refuse_one(data, options, owner):
        owners.append(owner)
        raise TooManyPictures("busy")

    monkeypatch.setattr(service, "stylize", refuse_one)
    monkeypatch.setattr(service, "stylize_many", refuse)
    headers = {"Authorization": f"Bearer {KEY}"}
    picture = synthetic_jpeg(seed=5)
    with TestClient(create_app(service)) as client:
        one = client.post(
            "/v1/stylize", content=picture, headers={**headers, "Content-Type": "image/jpeg"}
        )
        files = [("images", ("a.jpg", picture, "image/jpeg"))]
        batch = client.post("/v1/stylize/batch", files=files, headers=headers)
    expected = owner_of(KEY) if keys else ANONYMOUS
    assert owners == [expected, expected]
    assert one.status_code == 429 and one.headers["retry-after"] == "1"
    assert one.json()["error"]["code"] == "too_many_pictures"
    [item] = batch.json()["results"]
    assert item["status"] == 429 and item["error"]["code"] == "too_many_pictures"


def test_the_service_bounds_keyed_callers_only(tmp_path):
    """Without keys every caller is the anonymous owner: no bound of its own."""

    async def scenario():
        model = HeldModel(["alpha"])
        service = small_service(
            str(tmp_path), model=model, max_in_flight_per_key=1, max_batch_images=1
        )
        options = service.options({})
        first = asyncio.create_task(service.stylize(synthetic_jpeg(seed=1), options, "a" * 32))
        keyless = [
            asyncio.create_task(service.stylize(synthetic_jpeg(seed=s), options)) for s in (2, 3)
        ]
        while service.pipeline.in_flight < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(TooManyPictures):
            await service.stylize(synthetic_jpeg(seed=4), options, "a" * 32)
        model.release.set()
        return [result.cache for result in await asyncio.gather(first, *keyless)]

    assert asyncio.run(scenario()) == ["miss", "miss", "miss"]
