"""Example photos configured in `warm_examples` are ready before the first visitor."""

from __future__ import annotations

import time

import pytest

from tests.support.pictures import synthetic_jpeg
from tests.support.serve import STYLE_A, STYLE_B, app_args, deploy, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_examples_are_computed_for_every_style_at_start(default_app, client, tmp_path):
    example = tmp_path / "example.jpg"
    example.write_bytes(synthetic_jpeg(seed=90_001))
    args = app_args(warm_examples=[str(example), str(tmp_path / "missing.jpg")])
    args["cache"]["name"] = f"{args['cache']['name']}-warm"  # an empty cache to start from
    deploy(args)
    wait_healthy(default_app)
    for style in (STYLE_A, STYLE_B):
        deadline = time.monotonic() + 60
        while True:
            stats = client.get("/v1/stats").json()["requests"]
            if stats.get("miss", 0) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        response = client.post(
            "/v1/stylize", params={"style": style}, files={"image": ("e.jpg", example.read_bytes())}
        )
        assert response.status_code == 200
        assert response.headers["x-cache"] == "hit", style
