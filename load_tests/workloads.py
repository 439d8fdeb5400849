"""What the load tests send: upload bodies for unique, hot and repeated photos.

Every upload is a JPEG of one fixed size (``CANVAS``, the first shared photo's 1280×853),
so every request resizes to one model shape per output size (256×172 at 256 px) and the
service batches them as the in-process model limit runs them.

A few *pixel* variants (a random crop of a shared photo, rescaled to the canvas, plus
faint noise) are made once; each request's bytes are then made unique by a JPEG comment
segment carrying a counter. The service keys its cache on the upload's bytes, so two
uploads differing only in that comment are two misses, yet generating one costs nothing
on the client, which shares the CPU with the server.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CANVAS = (1280, 853)
JPEG_QUALITY = 90
NOISE_LEVEL = 3  # ± grey levels of uniform noise on each variant
BOUNDARY = "animeganbenchboundary"
MULTIPART_CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"

UploadSource = Callable[[], bytes]


def default_photos_dir(repo: Path) -> Path:
    return repo.parent / "shared" / "photos"


def load_photos(directory: Path | None) -> list[Image.Image]:
    """The RGB photos of ``directory`` (``*.jpg``); synthetic pictures if there are none."""
    paths = sorted(directory.glob("*.jpg")) if directory and directory.is_dir() else []
    if paths:
        return [Image.open(path).convert("RGB") for path in paths]
    return [synthetic_photo(seed) for seed in range(3)]


def synthetic_photo(seed: int) -> Image.Image:
    """A smooth photo-like picture (gradients plus noise) of the canvas size."""
    width, height = CANVAS
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = seed * 0.7
    base = np.stack(
        [
            127 + 100 * np.sin(x / 97 + phase),
            127 + 100 * np.cos(y / 61 - phase),
            (x + y) / (width + height) * 255,
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_variant(photo: Image.Image, rng: random.Random) -> bytes:
    """A random crop of ``photo`` with the canvas's aspect, rescaled to it, plus noise."""
    width, height = CANVAS
    scale = min(photo.width / width, photo.height / height) * rng.uniform(0.8, 1.0)
    crop_w, crop_h = round(width * scale), round(height * scale)
    left = rng.randint(0, photo.width - crop_w)
    top = rng.randint(0, photo.height - crop_h)
    cropped = photo.resize(
        CANVAS, Image.Resampling.BILINEAR, (left, top, left + crop_w, top + crop_h)
    )
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    noise = noise_rng.integers(-NOISE_LEVEL, NOISE_LEVEL + 1, (height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(cropped, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def make_variants(photos: list[Image.Image], count: int, seed: int = 0) -> list[bytes]:
    """``count`` pixel variants, taking the photos in turn."""
    rng = random.Random(seed)
    return [make_variant(photos[i % len(photos)], rng) for i in range(count)]


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a comment (COM) segment right after its start marker: same pixels,
    other bytes."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    payload = text.encode()
    segment = b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def multipart_body(data: bytes, filename: str = "photo.jpg") -> bytes:
    """A multipart/form-data body with ``data`` as the field ``image`` (see
    MULTIPART_CONTENT_TYPE); what the service and the Flask baseline both take."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class Uploads:
    """Upload bodies for one run; ``unique()`` never returns the same bytes twice.

    ``tag`` goes into every comment, so that two runs (or two locust workers) with
    different tags never send the same bytes either.
    """

    variants: list[bytes]
    tag: str = "bench"
    _counter: itertools.count = field(default_factory=itertools.count, repr=False)

    def unique(self) -> bytes:
        n = next(self._counter)
        return with_comment(self.variants[n % len(self.variants)], f"{self.tag}-{n}")

    def hot_set(self, count: int) -> list[bytes]:
        """``count`` popular photos: the same bytes for every ``Uploads`` made from the same
        variants (so that several locust workers share one hot set)."""
        return [
            with_comment(self.variants[i % len(self.variants)], f"hot-{i}") for i in range(count)
        ]

    def all_misses(self) -> UploadSource:
        return self.unique

    def pick(self, hot: list[bytes], hot_ratio: float, rng: random.Random) -> tuple[str, bytes]:
        """("hot", one of ``hot``) with probability ``hot_ratio``, else ("unique", new bytes)."""
        if not 0.0 <= hot_ratio <= 1.0:
            raise ValueError(f"hot_ratio must be in [0, 1], got {hot_ratio}")
        if hot_ratio > 0 and not hot:
            raise ValueError("a hot ratio above 0 needs a hot set")
        if rng.random() < hot_ratio:
            return "hot", rng.choice(hot)
        return "unique", self.unique()

    def mixed(self, hot: list[bytes], hot_ratio: float, seed: int = 0) -> UploadSource:
        """Uploads from ``hot`` with probability ``hot_ratio``, else unique ones."""
        rng = random.Random(seed)
        return lambda: self.pick(hot, hot_ratio, rng)[1]


def repeated(data: bytes) -> UploadSource:
    return lambda: data
