"""How far a reused picture is from the computed one, against how alike the frames were.

    python -m load_tests.likeness_bench [--size 512] [--crf 23] [--json out.json]

The bound of ``serve_app/media/likeness.py`` (``MIN_TILE_PSNR_DB``) comes from this. For
each sample photo (``serve_app/samples/*.jpg``) it makes short videos with the real H.264
encoder (libx264, yuv420p), each a kind of "nothing much happens": the photo still (the
codec's own refinement), with fresh sensor-like noise on every frame, panning slowly,
fading, and with a small object crossing it. It decodes them, resizes the frames as a job
does, stylizes every frame with the real generator, and for every pair of frames of one
video (the earlier one as the anchor) records the input likeness (worst-tile PSNR, and
whole-frame PSNR) and the output PSNR of reusing the anchor's picture instead of
computing the frame's own.

The repository holds no trained weights: by default the frames are stylized with the
parity fixture's weights (``tests/fixtures/generator_parity.pt``, not a trained style)
and with seeded random ones. ``--weights`` also takes a checkpoint path or a registry
name (downloaded), to measure a trained style.

It prints, per input-likeness band, the worst output PSNR, and the lowest bound at which
every reused picture stays at or above ``--target-db`` (40) from the computed one. CPU
only; about 20 minutes for the default run at 512 px on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from serve_app.imaging.pixels import DecodedImage, resize_long_side
from serve_app.media.likeness import MIN_TILE_PSNR_DB, worst_tile_psnr
from serve_app.model import tensors
from serve_app.model.generator import StyleModel, load_generator, select_runtime
from serve_app.model.weights import load_generator_for, resolve_weights

logger = logging.getLogger("load_tests.likeness_bench")

REPO = Path(__file__).resolve().parents[1]

SAMPLES = REPO / "serve_app" / "samples"
PARITY = REPO / "tests" / "fixtures" / "generator_parity.pt"
SOURCE_SIDE = 1280  # a phone video's frames are larger than the job's size
FPS = 30


@dataclass
class Pair:
    weights: str
    photo: str
    scene: str
    anchor: int
    frame: int
    input_tile_db: float  # worst 32-px tile, the likeness the job uses
    input_db: float  # whole frame
    output_db: float  # reused picture vs computed picture, whole frame
    output_tile_db: float  # the same, worst tile


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def base_picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        scale = SOURCE_SIDE / max(rgb.size)
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)))
        array = np.asarray(rgb)
    return array[: array.shape[0] // 2 * 2, : array.shape[1] // 2 * 2]  # yuv420p: even sides


def scenes(base: np.ndarray, frames: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Short sequences in which nothing much happens, each its own way."""
    height, width = base.shape[:2]
    pan_margin = frames * 2
    inner = base[:, : width - pan_margin]

    def noisy(picture: np.ndarray, sigma: float) -> np.ndarray:
        if sigma == 0:
            return picture.copy()
        noise = rng.normal(0, sigma, picture.shape)
        return np.clip(picture + noise, 0, 255).astype(np.uint8)

    made: dict[str, list[np.ndarray]] = {"still": [base.copy() for _ in range(frames)]}
    for sigma in (1, 2, 4, 8):
        made[f"noise {sigma}"] = [noisy(base, sigma) for _ in range(frames)]
    for step in (1, 2):
        made[f"pan {step} px"] = [
            noisy(np.ascontiguousarray(base[:, k * step : k * step + inner.shape[1]]), 1)
            for k in range(frames)
        ]
    made["fade"] = [
        noisy(np.clip(base.astype(np.int16) + 2 * k, 0, 255).astype(np.uint8), 1)
        for k in range(frames)
    ]
    side = max(16, min(height, width) // 20)
    moving = []
    for k in range(frames):
        picture = noisy(base, 1)
        top, left = height // 2, width // 3 + k * side // 2
        picture[top : top + side, left : left + side] = (200, 40, 40)
        moving.append(picture)
    made["small object"] = moving
    return made


def h264_round_trip(pictures: list[np.ndarray], crf: int) -> list[np.ndarray]:
    """The pictures through libx264 (as a phone or an editor would write them) and back."""
    buffer = io.BytesIO()
    height, width = pictures[0].shape[:2]
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for index, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def resized(picture: np.ndarray, size: int) -> np.ndarray:
    return resize_long_side(DecodedImage(np.ascontiguousarray(picture), None, "frame"), size).rgb


def models(specs: list[str]) -> dict[str, StyleModel]:
    """``parity`` (the test fixture's weights), ``random`` (seed 0), a checkpoint path or a
    registry name."""
    runtime = select_runtime("cpu", "fp32")
    made = {}
    for spec in specs:
        if spec == "parity":
            state = torch.load(PARITY, map_location="cpu", weights_only=True)["state_dict"]
            made[spec] = StyleModel(load_generator(state), runtime)
        else:
            made[spec] = StyleModel(load_generator_for(resolve_weights(spec)), runtime)
    return made


def stylized(model: StyleModel, frames: list[np.ndarray]) -> list[np.ndarray]:
    return tensors.from_model_batch(model(tensors.to_model_batch(frames)))


def measure(args: argparse.Namespace) -> list[Pair]:
    rng = np.random.default_rng(0)
    chosen = models(args.weights)
    pairs: list[Pair] = []
    for path in sorted(SAMPLES.glob("*.jpg"))[: args.photos]:
        base = base_picture(path)
        for scene, pictures in scenes(base, args.frames, rng).items():
            frames = [resized(p, args.size) for p in h264_round_trip(pictures, args.crf)]
            for name, model in chosen.items():
                outputs = stylized(model, frames)
                for i in range(len(frames)):
                    for j in range(i + 1, len(frames)):
                        pairs.append(
                            Pair(
                                name,
                                path.name,
                                scene,
                                i,
                                j,
                                worst_tile_psnr(frames[i], frames[j]),
                                psnr(frames[i], frames[j]),
                                psnr(outputs[i], outputs[j]),
                                worst_tile_psnr(outputs[i], outputs[j]),
                            )
                        )
            logger.info("%s %s: done", path.name, scene)
    return pairs


def safe_bound(pairs: list[Pair], target_db: float, key: str = "output_db") -> float:
    """The lowest input likeness at which every pair at or above it keeps ``key`` at or
    above ``target_db`` (just above the likeness of the worst failing pair)."""
    failing = [p.input_tile_db for p in pairs if getattr(p, key) < target_db]
    return max(failing, default=-math.inf)


def report(pairs: list[Pair], target_db: float, bound: float) -> None:
    print(f"{len(pairs)} frame pairs")
    for weights in sorted({p.weights for p in pairs}):
        mine = [p for p in pairs if p.weights == weights]
        print(f"\n== weights: {weights}")
        print("input worst-tile PSNR band | pairs | worst output PSNR | worst output tile PSNR")
        edges = [-math.inf, 30, 34, 36, 38, 40, 41, 42, 43, 44, 46, 50, math.inf]
        for low, high in itertools.pairwise(edges):
            band = [p for p in mine if low <= p.input_tile_db < high]
            if band:
                worst = min(p.output_db for p in band)
                worst_tile = min(p.output_tile_db for p in band)
                print(f"  [{low:>5}, {high:>5}) | {len(band):5} | {worst:7.2f} | {worst_tile:7.2f}")
        print(
            f"  every pair with input tile PSNR above {safe_bound(mine, target_db):.2f} dB has "
            f"output PSNR >= {target_db} dB (above "
            f"{safe_bound(mine, target_db, 'output_tile_db'):.2f} dB: worst tile too)"
        )
        at_bound = [p for p in mine if p.input_tile_db >= bound]
        if at_bound:
            print(
                f"  at the bound {bound} dB: {len(at_bound)} pairs reuse, worst output "
                f"{min(p.output_db for p in at_bound):.2f} dB, worst output tile "
                f"{min(p.output_tile_db for p in at_bound):.2f} dB"
            )
        print("  per scene, pairs at or above the bound / all:")
        for scene in dict.fromkeys(p.scene for p in mine):
            of_scene = [p for p in mine if p.scene == scene]
            kept = sum(p.input_tile_db >= bound for p in of_scene)
            print(f"    {scene:14} {kept:4}/{len(of_scene)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="the job's size, px")
    parser.add_argument("--crf", type=int, default=23, help="libx264 CRF of the test videos")
    parser.add_argument("--frames", type=int, default=5, help="frames a scene")
    parser.add_argument("--photos", type=int, default=4, help="how many sample photos")
    parser.add_argument(
        "--weights",
        nargs="+",
        default=["parity", "random"],
        help="parity, random, a checkpoint path or a registry name (default: parity random)",
    )
    parser.add_argument("--target-db", type=float, default=40.0)
    parser.add_argument("--bound", type=float, default=MIN_TILE_PSNR_DB)
    parser.add_argument("--json", type=Path, help="write every pair here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pairs = measure(args)
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in pairs], indent=1))
    report(pairs, args.target_db, args.bound)
    return 0


if __name__ == "__main__":
    sys.exit(main())
