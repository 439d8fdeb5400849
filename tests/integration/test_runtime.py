"""The runtime each model replica chose, as a real deployment reports and uses it."""

from __future__ import annotations

import pytest

from serve_app.model.generator import cpu_supports_bf16
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import app_args, deploy, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def auto_app(default_app):
    """The test application with the runtime chosen at replica start (the other tests
    name one, so that no test depends on the CPU's flags)."""
    deploy(app_args(runtime="auto"))
    wait_healthy(default_app)
    return default_app


def model_runtime(client) -> dict:
    return client.get("/v1/stats").json()["model"]["runtime"]


def test_auto_picks_a_runtime_of_this_node_and_says_why(auto_app, client):
    runtime = model_runtime(client)
    assert runtime["chosen"] == runtime["kind"]
    if cpu_supports_bf16():  # more than one runtime: each measured against fp32
        assert "eager-fp32" in runtime["measured"] and len(runtime["measured"]) >= 2
        chosen = runtime["measured"][runtime["chosen"]]
        assert chosen["psnr_db"] is None or chosen["psnr_db"] >= 40
    else:  # fp32 alone: taken without measuring; the others named with the reason
        assert runtime["chosen"] == "eager-fp32"
        assert runtime["reason"] == "the only runtime available"
        assert "eager-bf16" in runtime["refused"] and "bf16" in runtime["refused"]["eager-bf16"]


def test_a_named_runtime_is_used_as_configured_and_keys_the_cache(auto_app, client):
    photo = synthetic_jpeg(seed=71_000)
    before = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
    assert before.status_code == 200
    deploy(app_args(runtime="eager-fp32", precision="fp32"))
    wait_healthy(auto_app)
    runtime = model_runtime(client)
    assert (runtime["chosen"], runtime["reason"]) == ("eager-fp32", "configured")
    again = client.post("/v1/stylize", files={"image": ("p.jpg", photo)})
    assert again.status_code == 200
    # The same runtime kind as auto chose here: the same key, found in the shared cache.
    if not cpu_supports_bf16():
        assert again.headers["etag"] == before.headers["etag"]
        assert again.headers["x-cache"] == "hit"
