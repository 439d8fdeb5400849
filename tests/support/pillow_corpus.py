"""Pillow's own test images (its sdist's ``Tests/images``: ~1,000 odd, broken and
hostile files), for the tests that send every one of them through the service.

``.ci/run`` fetches them into ``test-artifacts/pillow-images`` (gitignored) for the
installed Pillow. Without the folder the tests skip, except in CI (``CI=true``), where
they fail: there it is a missing part, not an optional one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import ARTIFACTS

CORPUS = ARTIFACTS / "pillow-images"


def corpus_files() -> list[Path]:
    """Every file of the corpus, sorted; skips (fails in CI) when it is absent."""
    files = sorted(path for path in CORPUS.rglob("*") if path.is_file()) if CORPUS.is_dir() else []
    if not files:
        reason = f"Pillow's test images are not in {CORPUS} (.ci/run fetches them)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return files


def name(path: Path) -> str:
    return str(path.relative_to(CORPUS))
