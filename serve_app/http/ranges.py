"""HTTP ``Range: bytes=...`` requests (RFC 9110 §14), as video players send them."""

from __future__ import annotations

import re

from serve_app.errors import RangeNotSatisfiable

_SINGLE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable("an empty suffix range")
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid: the RFC says ignore it
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts at {start}; the result has {size} bytes")
    return start, end


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"
