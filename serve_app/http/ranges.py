"""HTTP ``Range: bytes=...`` requests (RFC 9110 §14), as video players send them, and the
conditions on a result's ETag (``If-Range``, ``If-None-Match``: §13)."""

from __future__ import annotations

import re

from serve_app.errors import RangeNotSatisfiable

# Positions past any real result; longer numbers are read as "past the end" without
# converting them (Python refuses to parse integers of thousands of digits).
_MAX_DIGITS = 18
_SINGLE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _position(digits: str) -> int:
    significant = digits.lstrip("0")  # thousands of leading zeros: still a small number
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte asked for, inclusive; None for the whole body (no header,
    one this server ignores: several ranges or another unit, as the RFC allows).
    Raises RangeNotSatisfiable for a range that starts past the end."""
    if not header:
        return None
    match = _SINGLE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = _position(last)
        if suffix == 0:
            raise RangeNotSatisfiable("an empty suffix range", size)
        return max(size - suffix, 0), size - 1
    start = _position(first)
    if last and _position(last) < start:
        return None  # invalid: the RFC says ignore it
    if start >= size:
        raise RangeNotSatisfiable(
            f"the range starts at {first[:40]}; the result has {size} bytes", size
        )
    end = size - 1 if not last else min(_position(last), size - 1)
    return start, end


def range_applies(if_range: str | None, etag: str) -> bool:
    """Whether a ``Range`` is served, given the request's ``If-Range``: only if it names
    this very version (its strong ETag); a date or another tag asks for the whole body
    (RFC 9110 §13.1.5: the client's copy is of another version; no date matches, since
    this server sends no Last-Modified)."""
    return if_range is None or if_range.strip() == etag


def unchanged(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names this version (or ``*``): the client's copy is
    current, answered with 304 and no body (§13.1.2: a weak comparison, so ``W/`` tags
    match too)."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"
