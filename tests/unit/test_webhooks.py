"""Which webhook URLs a submission may name: inside the allow list, plain http(s), no
credentials; anything else, however malformed, is refused with 422 (never a 500)."""

from __future__ import annotations

import pytest

from serve_app.config import WebhookConfig
from serve_app.errors import WebhookRefused
from serve_app.jobs.webhooks import Webhooks

ALLOWED = "https://hooks.example.test/animegan/"


async def _save(job_id, delivery) -> None:  # nothing is delivered here
    raise AssertionError("no delivery expected")


@pytest.fixture
def webhooks() -> Webhooks:
    return Webhooks(WebhookConfig(allow=[ALLOWED]), _save)


def test_a_url_inside_the_allow_list_is_taken(webhooks):
    info = webhooks.check(ALLOWED + "job-done", "done")
    assert info is not None and info.url == ALLOWED + "job-done"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.test/elsewhere",  # another path
        "http://hooks.example.test/animegan/",  # another scheme
        "https://hooks.example.test:8443/animegan/",  # another port
        "http://169.254.169.254/latest/",
        "ftp://hooks.example.test/animegan/",
        "https://user:secret@hooks.example.test/animegan/",
        "https://hooks.example.test:99999/animegan/",  # a port out of range
        "http://[x]/",  # a bracketed host that is no IPv6 address: urlsplit raises
        "http://[::1/",
        "http://a\uff03b/",  # a host NFKC normalisation changes: urlsplit raises
        "not a url",
        # Inside the prefix as written, outside it once the dot segments are resolved.
        ALLOWED + "../admin/x",
        ALLOWED + "%2e%2e/admin/x",
        ALLOWED + "./%2E%2E/x",
    ],
)
def test_anything_else_is_refused_with_422(webhooks, url):
    with pytest.raises(WebhookRefused) as refused:
        webhooks.check(url, None)
    assert refused.value.status == 422
