"""Peak memory of one decode_resized of the largest pictures the default limits accept.

Each picture is decoded in a fresh Python process, which reports how far its resident
set rose above where it stood just before the decode: the kernel's high-water mark
(VmHWM, the figure ``getrusage().ru_maxrss`` reports) is reset right before the call, so
imports and warm-up do not count. The pictures are made here, 7000×7000 (49 M pixels,
under the default 50 M limit, and each file under the 20 MiB one).

``python -m tests.unit.test_decode_memory`` prints the table.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.config import ImageLimits
from serve_app.imaging.decode import decode_peak_bytes

SIDE = 7000
MIB = 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)"),
]


# --------------------------------------------------------------------------- measuring

_CHILD = r"""
import gc, io, json, os, resource, sys
from PIL import Image
from serve_app.imaging import decode as imaging
from serve_app.config import ImageLimits

path, size = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
limits = ImageLimits()

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def high_water():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

# Warm up on a small picture of the same format: plugins, codecs, the sRGB profile.
with Image.open(io.BytesIO(data)) as image:
    image_format, mode, pixels = image.format, image.mode, image.width * image.height
small = io.BytesIO()
Image.new("RGB", (64, 48), (1, 2, 3)).save(small, image_format)
imaging.decode_resized(small.getvalue(), limits, 32)
gc.collect()
before = resident()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set
    reset = True
except OSError:
    reset = False  # then the warm-up's own peak may count too: an overestimate
decoded = imaging.decode_resized(data, limits, size)
print(json.dumps({
    "format": image_format, "mode": mode, "pixels": pixels, "bytes": len(data),
    "peak": high_water() - before, "reset": reset,
    "output": [decoded.width, decoded.height],
}))
"""


def measure_decode_peak(path: Path, size: int = 1024) -> dict:
    """One decode_resized of the file at ``path`` in a fresh process; ``peak`` in bytes."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(size)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


# --------------------------------------------------------------------------- pictures


def _photo(side: int) -> np.ndarray:
    """Smooth gradients with some texture: compresses like a photo-sized PNG should.

    Made 500 rows at a time, so the float temporaries stay small.
    """
    photo = np.empty((side, side, 3), np.uint8)
    x = np.arange(side, dtype=np.float32)[None, :]
    for top in range(0, side, 500):
        y = np.arange(top, min(top + 500, side), dtype=np.float32)[:, None]
        block = photo[top : top + 500]
        block[..., 0] = np.clip(x / side * 255 + 20 * np.sin(y / 37), 0, 255)
        block[..., 1] = np.clip(y / side * 255 + 20 * np.cos(x / 53), 0, 255)
        block[..., 2] = (x + y) / (2 * side) * 255
    return photo


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png16(pixels: np.ndarray, colour_type: int) -> bytes:
    """8-bit ``pixels`` widened to a 16-bit PNG (Pillow writes none), a block at a time.

    Rows are filtered "Up" so the gradients compress under the upload limit.
    """
    height, width = pixels.shape[:2]
    compressor = zlib.compressobj(6)
    chunks = []
    above = np.zeros((1, pixels[0].size * 2), np.uint8)
    for top in range(0, height, 500):
        wide = pixels[top : top + 500].astype(">u2") * np.uint16(257)
        block = wide.astype(">u2").reshape(len(wide), -1).view(np.uint8)
        up = block - np.vstack([above, block[:-1]])  # wraps modulo 256, as PNG wants
        above = block[-1:]
        filters = np.full((len(block), 1), 2, np.uint8)
        chunks.append(compressor.compress(np.hstack([filters, up]).tobytes()))
    chunks.append(compressor.flush())

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(chunks))
        + chunk(b"IEND", b"")
    )


def _rgba(photo: np.ndarray) -> Image.Image:
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[: len(alpha) // 2, : len(alpha) // 2] = 128  # translucent: composited over white
    return Image.fromarray(np.dstack([photo, alpha]))


# name: (make the file from the 7000×7000 photo, ceiling on the peak in bytes a pixel).
# The ceilings are the measurements (Pillow 13 with its bundled libjpeg-turbo and
# libwebp) plus a little: a change that brings back a full-size copy fails here long
# before it reaches decode_peak_bytes.
PICTURES: dict[str, tuple[Callable[[np.ndarray], bytes], float]] = {
    # Pillow keeps RGB as 4 bytes a pixel; the reduced copy adds 4/9.
    "png-rgb": (lambda p: _save(Image.fromarray(p), "PNG", compress_level=1), 5),
    "png-rgba": (lambda p: _save(_rgba(p), "PNG", compress_level=1), 5),
    # Pillow decodes 16-bit RGB PNGs straight to 8 bits; 16-bit grey stays "I;16".
    "png-rgb-16bit": (lambda p: _png16(p, 2), 5),
    "png-gray-16bit": (lambda p: _png16(p[..., 0], 0), 3),
    # libjpeg keeps every DCT coefficient (2 bytes a sample) of a progressive file.
    "jpeg-progressive": (
        lambda p: _save(Image.fromarray(p), "JPEG", quality=90, progressive=True),
        4.5,
    ),
    "jpeg-progressive-cmyk": (
        lambda p: _save(Image.fromarray(p).convert("CMYK"), "JPEG", quality=90, progressive=True),
        9.5,
    ),
    "gif-palette": (lambda p: _save(Image.fromarray(p).quantize(64), "GIF"), 2),
    # libwebp's animation decoder (all Pillow uses) keeps two RGBA canvases, Pillow a
    # copy of the frame and the picture: 16 bytes a pixel before anything of ours.
    "webp": (lambda p: _save(Image.fromarray(p), "WEBP", quality=80, method=0), 17),
    # The worst per pixel: just under 4× the output side, so no box reduction, and
    # the converted picture is a full-size copy next to everything WebP holds.
    "webp-rgba-no-reduction": (
        lambda p: _save(_rgba(p[:4095, :4095]), "WEBP", quality=80, method=0),
        18,
    ),
}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("decode-memory")
    photo = _photo(SIDE)
    for name, (make, _) in PICTURES.items():
        (folder / name).write_bytes(make(photo))
    return folder


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", PICTURES)
def test_decode_peak_stays_under_the_bound(name: str, pictures: Path) -> None:
    path = pictures / name
    assert path.stat().st_size <= ImageLimits().max_bytes  # an accepted upload
    measured = measure_decode_peak(path)
    pixels = measured["pixels"]
    assert pixels <= ImageLimits().max_pixels
    assert measured["output"] == [1024, 1024]
    ceiling = PICTURES[name][1] * pixels + 16 * MIB
    assert measured["peak"] <= ceiling, (
        f"{name}: {measured['peak'] / MIB:.0f} MiB, {measured['peak'] / pixels:.2f} B/px"
    )
    assert measured["peak"] <= decode_peak_bytes(pixels)


def test_decode_peak_bytes_covers_every_ceiling() -> None:
    pixels = ImageLimits().max_pixels
    for _, ceiling in PICTURES.values():
        assert ceiling * pixels + 16 * MIB <= decode_peak_bytes(pixels)
    assert decode_peak_bytes(pixels) < 1024 * MIB  # what the lead's RSS bound is built on


if __name__ == "__main__":
    photo = _photo(SIDE)
    with tempfile.TemporaryDirectory() as folder:
        for name, (make, _) in PICTURES.items():
            path = Path(folder) / name
            path.write_bytes(make(photo))
            found = measure_decode_peak(path)
            print(
                f"{name:24} {found['mode']:5} {found['bytes'] / 1e6:5.1f} MB "
                f"{found['pixels'] / 1e6:4.1f} Mpx  peak {found['peak'] / MIB:6.1f} MiB "
                f"= {found['peak'] / found['pixels']:5.2f} B/px"
            )
