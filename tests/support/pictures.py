"""Photos and small synthetic pictures to test with."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.paths import REPO

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
