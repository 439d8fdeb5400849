"""The model's own limit: the generator alone, in worker processes, no serving.

A setting is (device, precision, processes × threads, batch size). Each worker process
runs forward passes on a ready tensor for a fixed time; a two-process setting runs two
workers at once (started together behind a barrier) and adds their rates, which is what
two one-thread replicas could do at best.

``python -m load_tests.model_limit cold-start --styles 2 --threads 1`` is the model's own
cold start: a fresh interpreter importing torch, building each style's generator and
running the Stylizer's warm-up pass; it prints JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_barrier = None  # set in each worker by _init_worker


@dataclass(frozen=True)
class Setting:
    device: str  # "cpu" or "cuda"
    precision: str  # fp32, bf16, fp16
    processes: int
    threads: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.device} {self.precision} {self.processes}x{self.threads}t b{self.batch}"


@dataclass(frozen=True)
class Measurement:
    setting: Setting
    height: int
    width: int
    images_per_s: float
    pass_ms: float  # mean time of one forward pass (one batch), per process
    other_cpu_cores: float | None = None  # CPU used by processes outside the benchmark

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.setting.label}


def grid(
    cpu_count: int, precisions: list[str], batches: list[int], cuda: bool = False
) -> list[Setting]:
    """Settings to try: every precision × (1×1, 1×N, N×1 processes×threads) × batch."""
    layouts = sorted({(1, 1), (1, cpu_count), (cpu_count, 1)})
    settings = [
        Setting("cpu", precision, processes, threads, batch)
        for precision in precisions
        for processes, threads in layouts
        for batch in batches
    ]
    if cuda:
        settings += [Setting("cuda", p, 1, 1, b) for p in ("fp32", "fp16") for b in batches]
    return settings


# --------------------------------------------------------------------------- in workers


def _init_worker(barrier) -> None:
    global _barrier
    _barrier = barrier


@functools.cache
def _model(device: str, precision: str):
    from serve_app.model import StyleModel, random_generator, select_runtime

    return StyleModel(random_generator(seed=0), select_runtime(device, precision))


def measure_in_worker(
    setting: Setting, height: int, width: int, min_time_s: float, synced: bool
) -> tuple[float, float]:
    """(images/s, ms per pass) of ``setting`` in this process."""
    import torch

    torch.set_num_threads(setting.threads)
    model = _model(setting.device, setting.precision)
    batch = torch.rand(setting.batch, 3, height, width).mul_(2).sub_(1)
    model(batch)  # the first pass at a shape builds the oneDNN kernels
    if synced:
        _barrier.wait(timeout=300)
    passes, start = 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - start < min_time_s:
        model(batch)
        passes += 1
    elapsed = time.perf_counter() - start
    return passes * setting.batch / elapsed, elapsed / passes * 1e3


def stylize_png_in_worker(rgb, threads: int) -> bytes:
    """The service's answer for ``rgb`` (default runtime, seed-0 random weights), as PNG."""
    import torch

    from serve_app import imaging

    torch.set_num_threads(threads)
    output = _model("cpu", "auto")(imaging.to_model_batch([rgb]))
    return imaging.encode_image(imaging.from_model_batch(output)[0], None, "png")


def trace_in_worker(path: str, side: int) -> None:
    """A TorchScript file of the seed-0 random generator (fp32), traced at 1×3×side×side."""
    import torch

    from serve_app.model import random_generator

    generator = random_generator(seed=0).eval()
    with torch.no_grad():
        traced = torch.jit.trace(generator, torch.rand(1, 3, side, side).mul_(2).sub_(1))
    traced.save(path)


# --------------------------------------------------------------------------- the pool


class ModelBench:
    """A pool of ``cpu_count`` spawned worker processes (torch never runs in the caller)."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(workers)
        self._workers = workers
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(self._barrier,)
        )

    def __enter__(self) -> ModelBench:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def measure(self, setting: Setting, height: int, width: int, min_time_s: float) -> Measurement:
        if setting.processes not in (1, self._workers):
            raise ValueError(f"{setting.processes} processes; the pool has {self._workers}")
        synced = setting.processes > 1
        futures = [
            self._pool.submit(measure_in_worker, setting, height, width, min_time_s, synced)
            for _ in range(setting.processes)
        ]
        results = [future.result() for future in futures]
        return Measurement(
            setting=setting,
            height=height,
            width=width,
            images_per_s=sum(rate for rate, _ in results),
            pass_ms=sum(ms for _, ms in results) / len(results),
        )

    def stylize_png(self, rgb, threads: int) -> bytes:
        return self._pool.submit(stylize_png_in_worker, rgb, threads).result()

    def trace(self, path: Path, side: int = 256) -> None:
        self._pool.submit(trace_in_worker, str(path), side).result()


# --------------------------------------------------------------------------- cold start


def cold_start(styles: int, threads: int, side: int) -> dict:
    """What a Stylizer replica does before it can serve, timed, in this fresh process."""
    started = time.perf_counter()
    import numpy as np
    import torch

    from serve_app import imaging
    from serve_app.model import StyleModel, select_runtime
    from serve_app.weights import load_generator_for, resolve_weights

    imported = time.perf_counter()
    torch.set_num_threads(threads)
    runtime = select_runtime("auto", "auto")
    models = [
        StyleModel(load_generator_for(resolve_weights("random", seed=0)), runtime)
        for _ in range(styles)
    ]
    loaded = time.perf_counter()
    sample = imaging.to_model_batch([np.zeros((side, side, 3), np.uint8)])
    for model in models:
        model(sample)
    warmed = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "warmup_s": warmed - loaded,
        "load_and_warmup_s": warmed - imported,
        "styles": styles,
        "threads": threads,
        "precision": runtime.precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.model_limit")
    commands = parser.add_subparsers(dest="command", required=True)
    cold = commands.add_parser("cold-start", help="time the model's own load and warm-up")
    cold.add_argument("--styles", type=int, default=1)
    cold.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    cold.add_argument("--side", type=int, default=256, help="warm-up picture side, px")
    args = parser.parse_args(argv)
    print(json.dumps(cold_start(args.styles, args.threads, args.side)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
