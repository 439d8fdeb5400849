"""What one Stylizer replica and one request's ingress work cost on this machine's CPU.

    python -m load_tests.replica_bench                # about 2 min on 2 cores
    python -m load_tests.replica_bench --quick

Replica: the real ``Stylizer`` class (grouping by style and shape, to/from tensors, the
forward pass), built outside Serve in a spawned process with random weights, fed a real
photo resized as the ingress would (``--sides``), in batches of 1 or 4 for a fixed time
(``_infer_batch``: what ``@serve.batch`` runs, without Serve). Layouts: one replica with
1 or all threads, and one single-thread replica per core running at once (their rates
add). Precision ``auto`` is what the service picks (bf16 autocast where the CPU has it),
next to fp32.

Ingress: the per-request CPU work outside the model (hash, decode, resize, encode), one
thread, and the encoded sizes (what the cache stores).

Prints tables and writes ``load_tests/results/replica_bench.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "photos"

_barrier = None


def _init(barrier) -> None:
    global _barrier
    _barrier = barrier


def photo_bytes() -> bytes:
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if photos:
        return photos[0].read_bytes()
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (850, 1280, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@functools.cache
def _stylizer(device: str, precision: str):
    from serve_app.config import AppConfig
    from serve_app.stylizer import Stylizer

    styles = [{"name": "s", "weights": "random"}]
    config = AppConfig(styles=styles, device=device, precision=precision)
    return Stylizer.func_or_class(config)


def _rgb(side: int):
    from serve_app import imaging

    decoded = imaging.decode_upload(photo_bytes(), imaging.ImageLimits())
    return imaging.resize_long_side(decoded, side).rgb


def replica_in_worker(
    device: str,
    precision: str,
    side: int,
    threads: int,
    batch: int,
    seconds: float,
    synced: bool,
) -> dict:
    """images/s of one Stylizer in this process, batches of ``batch`` pictures.

    ``@serve.batch`` runs only inside a replica; its body's work is ``_infer_batch`` (group
    by style and shape, to tensor, forward pass, back to arrays), called here directly.
    """
    import torch

    stylizer = _stylizer(device, precision)
    torch.set_num_threads(threads)
    rgb = _rgb(side)
    images, styles = [rgb] * batch, ["s"] * batch
    stylizer._infer_batch(images, styles)  # the first pass at a shape builds the kernels
    if synced:
        _barrier.wait(300)
    passes, start = 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - start < seconds:
        outcomes = stylizer._infer_batch(images, styles)
        assert not any(isinstance(outcome, Exception) for outcome, _, _ in outcomes)
        passes += 1
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": passes * batch / elapsed,
        "runtime": str(stylizer._runtime.precision),
        "shape": list(rgb.shape[:2]),
    }


@dataclass
class ReplicaResult:
    device: str
    precision: str  # asked for
    runtime: str  # what select_runtime picked
    side: int
    shape: list[int]
    replicas: int
    threads: int
    batch: int
    images_per_s: float  # all replicas together


def measure_replicas(pool, workers, layout, side, seconds):
    device, precision, replicas, threads, batch = layout
    synced = replicas > 1
    if synced and replicas != workers:
        raise ValueError("a multi-replica layout uses every worker")
    futures = [
        pool.submit(replica_in_worker, device, precision, side, threads, batch, seconds, synced)
        for _ in range(replicas)
    ]
    results = [f.result() for f in futures]
    return ReplicaResult(
        device=device,
        precision=precision,
        runtime=results[0]["runtime"],
        side=side,
        shape=results[0]["shape"],
        replicas=replicas,
        threads=threads,
        batch=batch,
        images_per_s=sum(r["images_per_s"] for r in results),
    )


def ingress_costs(sides: list[int], repeats: int) -> list[dict]:
    """ms per request of the ingress's own CPU work, and the encoded sizes."""
    import numpy as np

    from serve_app import imaging
    from serve_app.cache import image_digest

    data = photo_bytes()
    rng = np.random.default_rng(0)
    rows = []

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    hash_ms = timed(lambda: image_digest(data))
    decode_ms = timed(lambda: imaging.decode_upload(data, imaging.ImageLimits()))
    decoded = imaging.decode_upload(data, imaging.ImageLimits())
    for side in sides:
        resize_ms = timed(lambda side=side: imaging.resize_long_side(decoded, side))
        rgb = imaging.resize_long_side(decoded, side).rgb
        # A stand-in for the model's output: the photo with mild noise (random weights give
        # flat colours that compress unrealistically well).
        noisy = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        for fmt in ("png", "webp", "jpeg"):
            encode_ms = timed(lambda f=fmt, x=noisy: imaging.encode_image(x, None, f, 90))
            size = len(imaging.encode_image(noisy, None, fmt, 90))
            rows.append(
                {
                    "side": side,
                    "shape": list(rgb.shape[:2]),
                    "format": fmt,
                    "upload_bytes": len(data),
                    "hash_ms": hash_ms,
                    "decode_ms": decode_ms,
                    "resize_ms": resize_ms,
                    "encode_ms": encode_ms,
                    "total_ms": hash_ms + decode_ms + resize_ms + encode_ms,
                    "encoded_bytes": size,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.replica_bench")
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--seconds", type=float, default=4.0, help="per setting")
    parser.add_argument("--quick", action="store_true", help="1 s per setting")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU, fp16/fp32"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "load_tests" / "results" / "replica_bench.json"
    )
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    cores = os.cpu_count() or 1
    started = time.time()
    load_before = os.getloadavg()

    if args.device == "cuda":
        layouts = [  # (device, precision, replicas, threads, batch)
            ("cuda", "fp16", 1, 1, 1),
            ("cuda", "fp16", 1, 1, 16),
            ("cuda", "fp32", 1, 1, 16),
        ]
        cores = 1  # one GPU, one process
    else:
        layouts = [
            ("cpu", "auto", 1, 1, 1),
            ("cpu", "auto", 1, 1, 4),
            ("cpu", "auto", 1, cores, 1),
            ("cpu", "auto", cores, 1, 1),
            ("cpu", "fp32", 1, cores, 1),
            ("cpu", "fp32", cores, 1, 1),
        ]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(cores)
    replicas = []
    print("| device | precision (runtime) | side (shape) | replicas × threads | batch | img/s |")
    print("|---|---|---|---|---:|---:|")
    with concurrent.futures.ProcessPoolExecutor(
        cores, mp_context=context, initializer=_init, initargs=(barrier,)
    ) as pool:
        for side in args.sides:
            for layout in layouts:
                r = measure_replicas(pool, cores, layout, side, seconds)
                replicas.append(r)
                print(
                    f"| {r.device} | {r.precision} ({r.runtime}) "
                    f"| {r.side} ({r.shape[1]}×{r.shape[0]}) "
                    f"| {r.replicas} × {r.threads} | {r.batch} | {r.images_per_s:.2f} |",
                    flush=True,
                )
    ingress = ingress_costs(args.sides, repeats=5 if args.quick else 20)
    print("\n| side | format | hash+decode+resize+encode ms | encoded KiB |")
    print("|---|---|---:|---:|")
    for row in ingress:
        print(
            f"| {row['side']} | {row['format']} | {row['hash_ms']:.1f}+{row['decode_ms']:.1f}"
            f"+{row['resize_ms']:.1f}+{row['encode_ms']:.1f} = {row['total_ms']:.1f} "
            f"| {row['encoded_bytes'] / 1024:.0f} |"
        )
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.time() - started, 1),
            "cpus": cores,
            "machine": platform.machine(),
            "python": platform.python_version(),
            # Other work on the machine skews every figure: the 1-minute load before/after.
            "loadavg_before": load_before[0],
            "loadavg_after": os.getloadavg()[0],
        },
        "replica": [asdict(r) for r in replicas],
        "ingress": ingress,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
