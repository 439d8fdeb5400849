"""What the benchmark uploads: JPEGs made from the repository's sample photos.

Every upload has one canvas size, so each output size maps to one model input shape
(256 px -> 256×172) and the model limit runs that very shape. A few pixel variants (a
random crop of a sample, rescaled to the canvas) are made once; each request's bytes are
then made unique by a JPEG comment carrying a counter. The service keys its cache on the
bytes, so each unique upload is a miss, yet making one costs the client (which shares the
CPU with the server) nothing.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
from collections.abc import Callable
from pathlib import Path

from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "serve_app" / "samples"
SAMPLE_NAMES = ("1.jpg", "2.jpg", "3.jpg")
CANVAS = (1280, 853)
BOUNDARY = "animegan-bench-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"

UploadSource = Callable[[], bytes]


def load_samples(directory: Path = SAMPLES) -> list[Image.Image]:
    paths = [directory / name for name in SAMPLE_NAMES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            "the benchmark uploads the repository's sample photos; missing: " + ", ".join(missing)
        )
    return [Image.open(path).convert("RGB") for path in paths]


def variant(photo: Image.Image, rng: random.Random) -> bytes:
    """A random crop of ``photo`` with the canvas's aspect ratio, rescaled to the canvas."""
    width, height = CANVAS
    scale = min(photo.width / width, photo.height / height) * rng.uniform(0.8, 1.0)
    crop_w, crop_h = round(width * scale), round(height * scale)
    left, top = rng.randint(0, photo.width - crop_w), rng.randint(0, photo.height - crop_h)
    box = (left, top, left + crop_w, top + crop_h)
    buffer = io.BytesIO()
    photo.resize(CANVAS, Image.Resampling.BILINEAR, box).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a comment segment after its start marker: same pixels, other bytes."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def multipart(data: bytes) -> bytes:
    """A body of type CONTENT_TYPE with ``data`` as the field ``image`` (what the service,
    the floor and the Flask baseline all take)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"'
        "\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class Uploads:
    """Upload bodies for one run; ``unique()`` never returns the same bytes twice (``tag``
    keeps two runs apart too)."""

    def __init__(self, photos: list[Image.Image], variants: int, tag: str):
        rng = random.Random(0)
        self.variants = [variant(photos[i % len(photos)], rng) for i in range(variants)]
        self.tag = tag
        self._counter = itertools.count()

    def unique(self) -> bytes:
        n = next(self._counter)
        return with_comment(self.variants[n % len(self.variants)], f"{self.tag}-{n}")

    def mixed(self, hot: list[bytes], hot_ratio: float, seed: int) -> UploadSource:
        """One of ``hot`` with probability ``hot_ratio``, else a unique upload."""
        rng = random.Random(seed)
        return lambda: rng.choice(hot) if rng.random() < hot_ratio else self.unique()


def repeated(data: bytes) -> UploadSource:
    return lambda: data
