"""Shared test helpers: photos and small synthetic pictures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def photos_dir() -> Path | None:
    """The shared real photos: $ANIMEGAN_PHOTOS_DIR, or ../shared/photos beside the clone."""
    candidates = [os.environ.get("ANIMEGAN_PHOTOS_DIR"), REPO.parent / "shared" / "photos"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.jpg")):
            return Path(candidate)
    return None


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
    """A real photo when ../shared is there, else a synthetic one."""
    directory = photos_dir()
    if directory is not None:
        return sorted(directory.glob("*.jpg"))[0].read_bytes()
    return synthetic_jpeg(640, 426)
