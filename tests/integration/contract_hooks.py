"""Schemathesis hooks for the contract test (loaded by the `st` process it starts).

A schema can say "a binary string labelled image/png" but not "a decodable picture whose
shorter side is at least 16 px". Left to itself, schemathesis fills such a body with
random bytes or a 1×1 sample file, which the service rightly refuses (400/415), so a
positive test case would never reach the stylized answer. These strategies make every
image media type of the document produce a real, small picture of that format; the bytes
the fuzzer sends as a *negative* case are still its own.
"""

from __future__ import annotations

import io

import numpy as np
import pillow_heif
import schemathesis
from hypothesis import strategies as st
from PIL import Image

# Square pictures of 16..40 px: any `size` in the documented 16.. range keeps the shorter
# side at or above the generator's minimum, and they stay tiny (a few KB at most).
MIN_SIDE, MAX_SIDE = 16, 40

# Media type -> Pillow format; application/octet-stream is the raw body without a label.
PILLOW_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
    "image/heic": "HEIF",
    "image/heif": "HEIF",
    "image/avif": "AVIF",
    "application/octet-stream": "PNG",
}


def encode_picture(side: int, seed: int, pillow_format: str) -> bytes:
    """A smooth gradient with noise, so that every seed gives other bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    base = np.stack([x / side * 255, y / side * 255, (x + y) / (2 * side) * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, pillow_format)
    return buffer.getvalue()


def pictures(pillow_format: str) -> st.SearchStrategy[bytes]:
    return st.builds(
        encode_picture,
        side=st.integers(MIN_SIDE, MAX_SIDE),
        seed=st.integers(0, 2**16),
        pillow_format=st.just(pillow_format),
    )


pillow_heif.register_heif_opener()  # HEIF encoding for image/heic and image/heif
for media_type, pillow_format in PILLOW_FORMATS.items():
    schemathesis.openapi.media_type(media_type, pictures(pillow_format))


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but "schema-valid request rejected" answered 422 `no_face`.

    Nor can a schema say "a picture with a face": `portrait=crop|paste` with the default
    `no_face=error` rightly refuses a face-less picture, and the fuzzer's pictures have
    none. Any other rejection of valid data still fails the run.
    """
    if getattr(failure, "code", None) != "ST202" or response.status_code != 422:
        return True
    try:
        return response.json()["error"]["code"] != "no_face"
    except Exception:
        return True
