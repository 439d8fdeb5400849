"""Large prints: tiled inference's speed and peak memory against the model run whole.

    python -m load_tests.tiling_bench            # full: about 6 min on 2 cores
    python -m load_tests.tiling_bench --quick    # under a minute

Each point runs in a fresh process (so its peak RSS, ``ru_maxrss``, is its own) that
loads one style (random weights: the same compute as trained ones), on the runtime the
Stylizer would select but in fp32, with the Stylizer's default ``TilingConfig``, and
stylizes a real photo (``serve_app/samples``) scaled to the point's longer side:

- tiled at 2048 and 4096 px (4096 one repetition: minutes here);
- whole at 1024 px (today's ``limits.max_size``) and at 2048 px (the largest that runs
  whole in reasonable time and memory on this machine).

The quick run, a smoke run, tiles 768 px and runs 512 px whole, once each.

The first repetition of a point includes building that shape's kernels.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("load_tests.tiling_bench")

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "serve_app" / "samples" / "1.jpg"

# (longer side, tiled, repetitions): quick, then what the full run adds.
QUICK_POINTS = ((768, True, 1), (512, False, 1))  # a smoke run: tiles, and whole
FULL_POINTS = ((2048, True, 2), (4096, True, 1), (1024, False, 3), (2048, False, 1))
WORKER_TIMEOUT_S = 1800  # 4096 px takes minutes on 2 cores, more when they are shared


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: int, tiled: bool, repeats: int) -> dict:
    """One point, in this process (the worker side)."""
    import numpy as np
    import torch
    from PIL import Image

    from serve_app.config import TilingConfig
    from serve_app.imaging.pixels import target_dimensions
    from serve_app.model import tensors
    from serve_app.model.generator import StyleModel, random_generator, select_runtime
    from serve_app.model.stylizer import tile_settings
    from serve_app.model.tiling import TiledGenerator

    torch.set_num_threads(os.cpu_count() or 1)
    runtime = select_runtime("auto", "fp32")
    generator = random_generator(0)
    model = StyleModel(generator, runtime)
    tiler = TiledGenerator(generator)
    tiled_model = StyleModel(tiler.module, runtime)
    settings = tile_settings(TilingConfig())
    with Image.open(PHOTO) as image:
        width, height = target_dimensions(image.width, image.height, size)
        rgb = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    loaded_rss = _peak_rss_mib()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        if tiled:
            out = np.empty_like(rgb)
            steps = tiler.steps(
                rgb, tiled_model, tensors.to_model_batch, tensors.from_model_batch, settings, out
            )
            passes = sum(1 for _ in steps)
        else:
            out = tensors.from_model_batch(model(tensors.to_model_batch([rgb])))[0]
            passes = 1
        seconds.append(time.perf_counter() - start)
        assert out.shape == rgb.shape
    return {
        "size": size,
        "width": width,
        "height": height,
        "tiled": tiled,
        "forward_passes": passes,
        "seconds": [round(s, 2) for s in seconds],
        "loaded_rss_mib": round(loaded_rss, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "threads": torch.get_num_threads(),
        "precision": runtime.precision,
        "tile_size": settings.tile,
        "overlap": settings.overlap,
    }


def _run_point(size: int, tiled: bool, repeats: int) -> dict:
    command = [sys.executable, "-m", "load_tests.tiling_bench", "--worker"]
    command += [str(size), "tiled" if tiled else "whole", str(repeats)]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    point = json.loads(done.stdout.strip().splitlines()[-1])
    best = min(point["seconds"])
    point["s_per_image"] = best
    point["images_per_s"] = round(1 / best, 4)
    return point


def run(quick: bool) -> dict:
    """Every point of the quick or full run; each in a fresh process, one after another."""
    points = QUICK_POINTS if quick else FULL_POINTS
    started = time.perf_counter()
    results = []
    for size, tiled, repeats in points:
        logger.info("tiling bench: %d px %s x%d", size, "tiled" if tiled else "whole", repeats)
        results.append(_run_point(size, tiled, repeats))
    return {"quick": quick, "points": results, "wall_s": round(time.perf_counter() - started, 1)}


def markdown(results: dict) -> list[str]:
    """The points as a Markdown section (a list of lines)."""
    lines = [
        "## Large prints: tiled against whole",
        "",
        "Seconds per picture are the median (min–max) of the runs; the first run of a "
        "point includes building that shape's kernels. Peak RSS is the process's own.",
        "",
        "| picture | path | forward passes | runs | s/picture | pictures/s | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in results["points"]:
        path = (
            f"tiled ({point['tile_size']} px tiles, {point['overlap']} px overlap)"
            if point["tiled"]
            else "whole"
        )
        seconds = point["seconds"]
        median = statistics.median(seconds)
        lines.append(
            f"| {point['width']}×{point['height']} | {path} | {point['forward_passes']} "
            f"| {len(seconds)} | {median:.1f} ({min(seconds):.1f}–{max(seconds):.1f}) "
            f"| {1 / median:.3f} | {point['peak_rss_mib']:,.0f} MiB |"
        )
    first = results["points"][0]
    lines.append("")
    lines.append(
        f"{first['precision']}, {first['threads']} threads, one process per row (peak RSS "
        f"is that process's ru_maxrss: Python, torch, the model and the picture "
        f"included; after loading, before stylizing: {first['loaded_rss_mib']:,.0f} MiB)."
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=3, metavar=("SIZE", "PATH", "REPEATS"))
    args = parser.parse_args(argv)
    if args.worker:
        size, path, repeats = args.worker
        print(json.dumps(measure(int(size), path == "tiled", int(repeats))))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.quick)
    print("\n".join(markdown(results)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
