"""The jobs routes' own parsing: ``Prefer: wait`` (RFC 7240)."""

from __future__ import annotations

import pytest

from serve_app.http.jobs import _prefer_wait_s

MOST_S = 60.0


@pytest.mark.parametrize(
    ("prefer", "wait_s"),
    [
        (None, 0.0),
        ("wait=5", 5.0),
        ("respond-async, wait=10", 10.0),
        ("WAIT = 7; x=1", 7.0),
        ('wait="5"', 5.0),  # a quoted-string value
        ("wait=0", 0.0),
        ("wait=600", MOST_S),  # capped
        ("wait=4294967296", MOST_S),  # any number, however long, is capped
        ("wait=" + "9" * 4000, MOST_S),
        ("wait=abc", 0.0),
        ("wait=5s", 0.0),
        ("nowait=5", 0.0),
        ("wait=-5", 0.0),
    ],
)
def test_prefer_wait_is_read_and_capped(prefer, wait_s):
    assert _prefer_wait_s(prefer, MOST_S) == wait_s
