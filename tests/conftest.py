"""Shared test helpers: photos and small synthetic pictures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# The real photos shipped with the package (see its README for what they are); the
# benchmark reads the same folder.
SAMPLES = REPO / "serve_app" / "samples"
PHOTOS_ENV = "ANIMEGAN_PHOTOS_DIR"


def photos_dir() -> Path:
    """``$ANIMEGAN_PHOTOS_DIR`` (other photos to test with) or the repository's samples."""
    override = os.environ.get(PHOTOS_ENV)
    directory = Path(override).expanduser() if override else SAMPLES
    if not (directory.is_dir() and any(directory.glob("*.jpg"))):
        where = f"{PHOTOS_ENV}={override!r}" if override else "the repository's samples"
        raise FileNotFoundError(f"no *.jpg in {directory} ({where})")
    return directory


def sample_photos() -> list[Path]:
    """The real photos the tests use (``*.jpg`` of :func:`photos_dir`), sorted by name."""
    return sorted(photos_dir().glob("*.jpg"))


def synthetic_jpeg(width: int = 160, height: int = 120, seed: int = 0, quality: int = 90) -> bytes:
    """A smooth, photo-like JPEG (gradients plus noise); each seed gives other bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photo_bytes() -> bytes:
    """The first real photo (the samples' ``1.jpg``, 1280×853, unless overridden)."""
    return sample_photos()[0].read_bytes()


# Tests that start no Ray first, then the top-level ones (the benchmark's smoke run starts
# its own `serve run`), then those that start Ray clusters, and the one Ray the integration
# tests share last: no idle Ray of another group runs next to a test that loads the CPU.
TEST_GROUP_ORDER = ("unit", "", "cluster", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def group_rank(item: pytest.Item) -> int:
        parts = item.path.relative_to(REPO / "tests").parts
        group = parts[0] if len(parts) > 1 else ""
        return TEST_GROUP_ORDER.index(group) if group in TEST_GROUP_ORDER else len(TEST_GROUP_ORDER)

    items.sort(key=group_rank)  # stable: the usual order within a group
