"""Peak memory of an AnimationWriter making the largest animation the default bound
takes (``MediaConfig.max_animation_pixels`` output pixels), in each format.

Pillow writes animations whole, so the writer holds every stylized frame until the end;
that is what ``config.ANIMATION_BYTES_PER_PIXEL`` states and the bound derives from.
Each format is written in a fresh Python process, which reports how far its resident set
rose above where it stood before the first frame was added: the kernel's high-water mark
(VmHWM) is reset right before, so imports and the warm-up do not count. The frames are
noise, which no encoder compresses (its copies are then largest).

``python -m tests.unit.test_animation_memory`` prints the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.config import ANIMATION_BYTES_PER_PIXEL, MediaConfig

SIDE = 512
MIB = 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)"),
]

_CHILD = r"""
import gc, json, os, sys
import numpy as np
from serve_app.media.probe import MediaInfo
from serve_app.media.writers import AnimationWriter

fmt, frames, side, alpha = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def high_water():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

def info(count):
    return MediaInfo("animation", fmt, "x", side, side, 0, count, 1.0, 1.0, None, (), 0, alpha)

noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
mask = np.full((side, side), 255, np.uint8)
mask[:, : side // 3] = 0

def write(count):
    writer = AnimationWriter(info(count), None)  # quality None: lossless WebP, the largest
    for index in range(count):
        writer.add(np.roll(noise, index, axis=1), mask if alpha else None, 40)
    return writer.finish()

write(2)  # warm-up: the encoder's library, its first allocations
gc.collect()
before = resident()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident set
data = write(frames)
print(json.dumps({"peak": high_water() - before, "bytes": len(data)}))
"""


def measure(fmt: str, frames: int, alpha: bool) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, fmt, str(frames), str(SIDE), "1" if alpha else "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


CASES = [("gif", False), ("gif", True), ("apng", False), ("apng", True)]
CASES += [("webp", False), ("webp", True)]


@pytest.mark.parametrize("fmt, alpha", CASES)
def test_the_largest_animation_stays_within_the_documented_bytes_per_pixel(fmt, alpha):
    pixels = MediaConfig().max_animation_pixels
    frames = pixels // (SIDE * SIDE)
    measured = measure(fmt, frames, alpha)
    bound = ANIMATION_BYTES_PER_PIXEL * frames * SIDE * SIDE
    assert measured["peak"] <= bound, (
        f"{fmt} (alpha {alpha}): {measured['peak'] / MIB:.0f} MiB for {frames} frames of "
        f"{SIDE}x{SIDE}, over the {bound / MIB:.0f} MiB ANIMATION_BYTES_PER_PIXEL promises"
    )


if __name__ == "__main__":
    total = MediaConfig().max_animation_pixels
    count = total // (SIDE * SIDE)
    for fmt, alpha in CASES:
        result = measure(fmt, count, alpha)
        per_pixel = result["peak"] / (count * SIDE * SIDE)
        print(
            f"{fmt:5} alpha={alpha!s:5} {count} frames {SIDE}x{SIDE}: peak "
            f"{result['peak'] / MIB:6.0f} MiB = {per_pixel:5.2f} B/px, output "
            f"{result['bytes'] / MIB:.0f} MiB"
        )
