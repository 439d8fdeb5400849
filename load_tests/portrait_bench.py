"""What portrait mode's face search costs, against the model's own forward pass.

Measured in a child process with one thread each (OpenCV's and torch's pools set to 1,
as one core of the ingress and of a Stylizer replica would have): ``faces.detect_faces``
with the default settings on the sample photos (a 512×512 portrait, and 1280-wide street
and train photos), and the generator on a 512×512 picture (random weights, fp32), the
face styles' native scale, which every face of portrait mode goes through. Each figure is
the median of ``repeats`` runs, with their range.

    python -m load_tests.portrait_bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "serve_app" / "samples"
PICTURES = {  # name -> (file, what it shows)
    "512x512": ("4.jpg", "portrait, one face"),
    "1280x853": ("1.jpg", "train, no face"),
    "1279x867": ("2.jpg", "street, faces under the minimum size"),
}
MODEL_SIDE = 512


def _timed(function, repeats: int) -> dict:
    function()  # warm-up: lazy loads (the cascade, oneDNN's kernels) are not measured
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs_ms": times,
    }


def _measure(repeats: int, names: list[str], queue) -> None:
    """The child process: every measurement, single-threaded."""
    import cv2
    import numpy as np
    import torch
    from PIL import Image

    from serve_app.imaging.faces import detect_faces
    from serve_app.model.generator import StyleModel, random_generator, select_runtime

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    results: dict = {"detect": {}, "repeats": repeats}
    for name in names:
        file, what = PICTURES[name]
        rgb = np.asarray(Image.open(SAMPLES / file).convert("RGB"))
        figures = _timed(lambda rgb=rgb: detect_faces(rgb), repeats)
        figures.update(file=file, what=what, faces=len(detect_faces(rgb)))
        results["detect"][name] = figures
    model = StyleModel(random_generator(), select_runtime("cpu", "fp32"))
    batch = torch.rand(1, 3, MODEL_SIDE, MODEL_SIDE) * 2 - 1
    results["model"] = _timed(lambda: model(batch), repeats)
    results["versions"] = {"opencv": cv2.__version__, "torch": torch.__version__}
    queue.put(results)


def run(quick: bool) -> dict:
    """The figures (quick: one repetition of one picture, a smoke run; else five of three)."""
    repeats = 1 if quick else 5
    names = ["512x512"] if quick else list(PICTURES)
    context = multiprocessing.get_context("spawn")  # thread settings stay in the child
    queue = context.Queue()
    child = context.Process(target=_measure, args=(repeats, names, queue))
    child.start()
    try:
        results = queue.get(timeout=1800)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.terminate()
    model_ms = results["model"]["median_ms"]
    for figures in results["detect"].values():
        figures["vs_model"] = figures["median_ms"] / model_ms
    return results


def _cell(figures: dict) -> str:
    return f"{figures['median_ms']:,.0f} ({figures['min_ms']:,.0f}–{figures['max_ms']:,.0f})"


def markdown(results: dict) -> list[str]:
    """The figures as a Markdown section (a list of lines)."""
    lines = [
        "## Portrait mode: the face search against the model",
        "",
        f"One thread each; median (min–max) of {results['repeats']} runs, in ms. The face "
        "search (OpenCV Haar cascade, upright and ±25° passes on a copy of at most 800 px, "
        "then a second look at each candidate by two cascades) runs in the ingress, once "
        "per picture; the "
        f"model's {MODEL_SIDE}×{MODEL_SIDE} forward pass (random weights, fp32) runs once "
        "per face found.",
        "",
        "| work | picture | faces found | ms | × the model's pass |",
        "|---|---|---|---|---|",
    ]
    for name, figures in results["detect"].items():
        lines.append(
            f"| face search | {name} ({figures['file']}: {figures['what']}) | "
            f"{figures['faces']} | {_cell(figures)} | {figures['vs_model']:.2f} |"
        )
    lines.append(f"| model, {MODEL_SIDE}×{MODEL_SIDE} | — | — | {_cell(results['model'])} | 1.00 |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
