"""The model replica: every style loaded once, requests batched dynamically (the Serve
deployment, ``deployment.py``, builds one per replica).

A request is a validated, resized RGB array (from ``imaging.py``); the answer is the
stylized array plus figures about the batch that computed it. Encoding, caching and
HTTP live in the ingress.

Longer than most modules, on purpose: the replica's batching, frames, tiled steps and
figures share one lock on the model and one replica's state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

import numpy as np
import ray
import torch
from ray import serve

from serve_app.concurrency import run_to_completion
from serve_app.config import (
    DEFAULT_BATCH_WAIT_S,
    MIN_SIDE,
    SIDE_MULTIPLE,
    AppConfig,
    BatchConfig,
    StyleConfig,
    TilingConfig,
)
from serve_app.metrics import ModelMetrics
from serve_app.model import tensors
from serve_app.model.choice_board import RayChoiceBoard
from serve_app.model.generator import StyleModel
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.model.kept_choices import KeptChoices, kept_choices_path
from serve_app.model.pass_sizes import PassSizes
from serve_app.model.runtime_sharing import RuntimeSettings, decide_runtime
from serve_app.model.runtimes import runtime_identity
from serve_app.model.tiling import TiledGenerator, TileSettings, step_count
from serve_app.model.weights import (
    ResolvedWeights,
    load_generator_for,
    resolve_weights,
    weights_identity,
)
from serve_app.replica_logging import log_through_serve

logger = logging.getLogger(__name__)

WARM_UP_SIDE = 64
# The model runs at a lower CPU priority than request handling on the same node, so that
# hits, 503s and health checks stay fast while the model soaks up the cores (it still gets
# every cycle nobody else wants).
MODEL_NICENESS = 5
_DONE = object()  # what a finished tiled run's next step returns


class PassOutcome(NamedTuple):
    """One picture's share of a forward pass: its result (or why it failed alone)."""

    result: np.ndarray | Exception
    seconds: float  # the whole pass's
    pass_size: int  # pictures in that pass


def tile_settings(tiling: TilingConfig) -> TileSettings:
    return TileSettings(
        tile=tiling.tile_size,
        overlap=tiling.overlap,
        batch=tiling.tile_batch,
        stats_pixels=tiling.stats_pixels,
    )


def replica_cpu_count() -> int:
    """CPUs Ray assigned to this replica (at least 1); the whole machine outside Ray."""
    if ray.is_initialized():
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if assigned:
            return max(1, int(assigned))
    return os.cpu_count() or 1


def lower_cpu_priority(increment: int) -> None:
    """Raise this process's niceness (no-op where the platform has none)."""
    try:
        os.nice(increment)
    except (AttributeError, OSError) as error:
        logger.debug("cannot lower CPU priority: %s", error)


def check_model_input(rgb: object, style: str, models: dict[str, StyleModel]) -> None:
    """Refuse what the generator cannot take, so a bad item fails alone and clearly."""
    if style not in models:
        raise ValueError(f"unknown style {style!r}; served: {sorted(models)}")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ValueError("expected an (H, W, 3) uint8 array")
    height, width, channels = rgb.shape
    if channels != 3:
        raise ValueError(f"expected 3 channels, got {channels}")
    if min(height, width) < MIN_SIDE or height % SIDE_MULTIPLE or (width % SIDE_MULTIPLE):
        raise ValueError(
            f"sides must be multiples of {SIDE_MULTIPLE} and at least "
            f"{MIN_SIDE} px, got {width}x{height}"
        )


class ModelReplica:
    """What a Stylizer replica runs (``deployment.py`` is the Serve deployment over it):
    every style loaded once, requests batched dynamically, tiles and frames in turn."""

    def __init__(self, config: AppConfig, board: RayChoiceBoard | None = None):
        """``board``: the deployment's runtime choices (None outside Serve: decide alone)."""
        log_through_serve()
        self._threads = replica_cpu_count()
        torch.set_num_threads(self._threads)
        self._replica = self._replica_name()
        weights = {
            s.name: resolve_weights(s.weights, seed=config.seed, progress=False)
            for s in config.styles
        }
        identities = [weights_identity(weights[s.name], s.align_corners) for s in config.styles]
        # `runtime: auto`: the deployment's choice for this node class, measured with the
        # styles' own weights by the first replica of the class (runtime_sharing.py).
        self._runtime_choice = decide_runtime(
            RuntimeSettings.of(config, identities),
            self._threads,
            lambda: [load_generator_for(weights[s.name], s.align_corners) for s in config.styles],
            board,
            self._replica,
            KeptChoices(kept_choices_path()),
        )
        self._runtime = self._runtime_choice.runtime
        self._metrics = ModelMetrics()
        self._tiling = config.tiling
        self._tile_settings = tile_settings(config.tiling)
        self._loads = 0
        self._identities: dict[str, ModelIdentity] = {}
        self._tiled: dict[str, tuple[TiledGenerator, StyleModel]] = {}
        self._models = {s.name: self._load(s, weights[s.name]) for s in config.styles}
        # One forward pass at a time on this replica (batches and tiles take turns), and
        # one tiled picture at a time (its tiles share the norms' picture-wide state).
        self._model_lock = asyncio.Lock()
        self._tiled_lock = asyncio.Lock()
        self._tiled_images = 0
        self._tiles_run = 0
        # `max_batch_size: auto`: each shape's pass size, learned from the passes' timings;
        # None: a fixed max_batch_size, one pass per (style, shape) group.
        self._pass_sizes: PassSizes | None = None
        self.reconfigure({})  # the defaults, until Serve applies the user_config
        # The figures below change in the passes' worker threads and, for a tiled picture,
        # on the event loop: each change is made under this lock, so none is lost.
        self._counting = threading.Lock()
        self._batch_sizes: Counter[int] = Counter()  # pictures per forward pass
        self._images = 0
        self._inference_s: defaultdict[str, float] = defaultdict(float)
        # With a fixed max_batch_size: on CPU a batch computes no faster than its frames one
        # by one (docs/benchmarks.md: the jobs' frames at batch 1 and 4), so a job's frames
        # take the model one at a time and a photo in between waits for one frame; on a GPU
        # a call is one batched pass.
        self._frames_per_pass = 1 if self._runtime.device == "cpu" else None
        self._warm_up()
        # Only now: the start itself (imports, measurements, warm-up) runs at full priority.
        lower_cpu_priority(MODEL_NICENESS)
        logger.info(
            "Stylizer %s ready: styles=%s runtime=%s (%s) threads=%d",
            self._replica,
            sorted(self._models),
            self._runtime,
            self._runtime_choice.describe(),
            self._threads,
        )

    @staticmethod
    def _replica_name() -> str:
        try:
            return serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit tests)
            return f"local-{os.getpid()}"

    def _load(self, style: StyleConfig, weights: ResolvedWeights) -> StyleModel:
        generator = load_generator_for(weights, align_corners=style.align_corners)
        self._identities[style.name] = ModelIdentity(
            weights_identity(weights, style.align_corners),
            runtime_identity(self._runtime, self._tiling),
        )
        self._loads += 1
        self._metrics.loads.inc()
        tiled = TiledGenerator(generator)
        self._tiled[style.name] = (tiled, StyleModel(tiled.module, self._runtime))
        return StyleModel(generator, self._runtime)

    def _warm_up(self) -> None:
        # A process's first pass initialises the backend (oneDNN's or CUDA's libraries):
        # paid before traffic, once. Each shape's kernels are built on its own first pass
        # whatever was warmed before, so one small pass of one style is all it takes
        # (256 px passes of every style cost the start about 3 s for nothing).
        sample = np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8)
        next(iter(self._models.values()))(tensors.to_model_batch([sample]))

    def reconfigure(self, user_config: dict) -> None:
        config = BatchConfig.model_validate(user_config or {})
        self._max_batch_size = config.largest_batch
        if config.max_batch_size != "auto":
            self._pass_sizes = None
        elif self._pass_sizes is None or max(self._pass_sizes.sizes) != self._max_batch_size:
            self._pass_sizes = PassSizes(self._max_batch_size)  # else: what it learned stays
        self._batch_config = config
        self._run_batch.set_max_batch_size(self._max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        logger.info(
            "Stylizer %s: max_batch_size=%d (%s) batch_wait_timeout_s=%g",
            self._replica,
            self._max_batch_size,
            config.max_batch_size,
            config.batch_wait_timeout_s,
        )

    async def stylize(self, rgb: np.ndarray, style: str) -> StylizedArray:
        """One (H, W, 3) uint8 array -> its stylized twin. Raises ValueError for a bad item."""
        if self._is_tiled(rgb):
            return await self._run_tiled(rgb, style, time.perf_counter())
        result = await self._run_batch(rgb, style, time.perf_counter())
        if isinstance(result, Exception):
            raise result
        return result

    async def stylize_frames(self, frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        """A job's frames (one shape) -> their stylized twins, in order. They come batched
        already, so they skip the dynamic batcher; photos' batches take their turn on the
        model between two of the frames' passes. Raises ValueError for a bad frame."""
        arrival = time.perf_counter()
        started, outcomes = None, []
        while len(outcomes) < len(frames):
            # The lock is taken again for each pass: a photo waiting for the model waits
            # for one pass of a job's frames, not for all of them.
            async with self._model_lock:
                started = started or time.perf_counter()
                left = frames[len(outcomes) :]
                shape = getattr(left[0], "shape", None)  # a bad frame fails in the pass
                chunk = left[: self._pass_size(shape, len(left), self._frames_per_pass)]
                outcomes += await run_to_completion(
                    self._infer_batch, chunk, [style] * len(chunk), False
                )
        queue_ms = (started - arrival) * 1e3
        results = []
        for outcome in outcomes:
            if isinstance(outcome.result, Exception):
                raise outcome.result
            results.append(self._stylized(outcome, style, queue_ms))
        return results

    def _pass_size(self, shape: tuple[int, ...] | None, waiting: int, fixed: int | None) -> int:
        """How many of ``waiting`` pictures of ``shape`` the next pass takes: the size
        learned for the shape with `auto`, else ``fixed``, else all of them."""
        learned = self._pass_sizes  # read once: a reconfigure may swap it meanwhile
        if learned is not None and shape is not None:
            return learned.next_pass(shape, waiting)
        return min(fixed or waiting, waiting)

    # Only the batcher's first bounds: reconfigure sets them (the user_config's, or defaults).
    @serve.batch(
        max_batch_size=BatchConfig().largest_batch, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S
    )
    async def _run_batch(
        self, images: list[np.ndarray], styles: list[str], arrivals: list[float]
    ) -> list[StylizedArray | Exception]:
        started = time.perf_counter()
        # A worker thread runs the forward passes so this replica's event loop stays free.
        async with self._model_lock:
            outcomes = await run_to_completion(self._infer_batch, images, styles)
        results: list[StylizedArray | Exception] = []
        for outcome, arrival, style in zip(outcomes, arrivals, styles, strict=True):
            if isinstance(outcome.result, Exception):
                results.append(outcome.result)
                continue
            queue_ms = (started - arrival) * 1e3
            self._metrics.queue_ms.observe(queue_ms, tags={"style": style})
            results.append(self._stylized(outcome, style, queue_ms))
        return results

    def _stylized(self, outcome: PassOutcome, style: str, queue_ms: float) -> StylizedArray:
        return StylizedArray(
            rgb=outcome.result,
            identity=self._identities[style],
            queue_ms=queue_ms,
            inference_ms=outcome.seconds * 1e3,
            batch_size=outcome.pass_size,
        )

    def _infer_batch(
        self, images: list[np.ndarray], styles: list[str], split: bool = True
    ) -> list[PassOutcome]:
        """Group by (style, shape), each group in one pass, or (``split``, with `auto`) in
        passes of the size learned for its shape; a bad item fails alone."""
        outcomes: list[PassOutcome] = [None] * len(images)  # type: ignore[list-item]
        groups: defaultdict[tuple[str, tuple[int, ...]], list[int]] = defaultdict(list)
        for index, (rgb, style) in enumerate(zip(images, styles, strict=True)):
            try:
                check_model_input(rgb, style, self._models)
            except ValueError as error:
                outcomes[index] = PassOutcome(error, 0.0, 1)
                continue
            groups[(style, rgb.shape)].append(index)
        for (style, shape), indices in groups.items():
            for chunk in self._passes(shape, indices) if split else [indices]:
                group = self._infer_group(style, [images[i] for i in chunk])
                for index, outcome in zip(chunk, group, strict=True):
                    outcomes[index] = outcome
        return outcomes

    def _passes(self, shape: tuple[int, ...], items: list[int]) -> Iterator[list[int]]:
        """``items`` (of one shape) cut into the passes that run them."""
        first = 0
        while first < len(items):
            step = self._pass_size(shape, len(items) - first, None)
            yield items[first : first + step]
            first += step

    def _infer_group(self, style: str, images: list[np.ndarray]) -> list[PassOutcome]:
        """One forward pass; if it fails (e.g. out of memory), one pass per item."""
        try:
            return self._forward(style, images)
        except Exception as error:
            if len(images) == 1:
                logger.exception("inference failed for one %s item", style)
                return [PassOutcome(RuntimeError(f"inference failed: {error}"), 0.0, 1)]
            logger.warning("batch of %d failed for %s; retrying one by one", len(images), style)
            return [self._infer_group(style, [rgb])[0] for rgb in images]

    def _forward(self, style: str, images: list[np.ndarray]) -> list[PassOutcome]:
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = tensors.from_model_batch(self._models[style](tensors.to_model_batch(images)))
        seconds = time.perf_counter() - start
        learned = self._pass_sizes  # read once: a reconfigure (in the loop) may swap it
        if learned is not None:
            # On a CPU, what a pass costs is this process's CPU time: its wall time also
            # counts every other process's turns on the cores (the model runs niced), which
            # made a noisy moment pick batches that are slower per picture. On a GPU the
            # wall time is the device's (the copy back waits for it).
            cost = time.process_time() - cpu_start if self._runtime.device == "cpu" else seconds
            learned.record(images[0].shape, len(images), cost)
        with self._counting:
            self._images += len(images)
            self._inference_s[style] += seconds
            self._batch_sizes[len(images)] += 1
        self._metrics.batch_size.observe(len(images))
        self._metrics.images.inc(len(images), tags={"style": style})
        self._metrics.inference_ms.observe(seconds * 1e3, tags={"style": style})
        return [PassOutcome(rgb, seconds, len(images)) for rgb in outputs]

    def _is_tiled(self, rgb: object) -> bool:
        """Whether a picture goes through the model in tiles (more than max_whole_pixels)."""
        shape = getattr(rgb, "shape", ())
        return len(shape) == 3 and shape[0] * shape[1] > self._tiling.max_whole_pixels

    async def stylize_with_progress(
        self, rgb: np.ndarray, style: str
    ) -> AsyncIterator[tuple[int, int] | StylizedArray]:
        """``stylize`` as a stream: (steps done, steps in all) after each forward pass of
        a tiled picture, then the stylized array (a small picture: the array alone)."""
        if not self._is_tiled(rgb):
            yield await self.stylize(rgb, style)
            return
        async for item in self._tiled_steps(rgb, style, time.perf_counter()):
            yield item

    async def _run_tiled(self, rgb: np.ndarray, style: str, arrival: float) -> StylizedArray:
        async for item in self._tiled_steps(rgb, style, arrival):
            if isinstance(item, StylizedArray):
                return item
        raise RuntimeError("tiled inference ended without a result")

    async def _tiled_steps(
        self, rgb: np.ndarray, style: str, arrival: float
    ) -> AsyncIterator[tuple[int, int] | StylizedArray]:
        """One large picture alone, in tiles; between two of its forward passes, batches
        of small pictures take their turn on the model."""
        check_model_input(rgb, style, self._models)
        tiled, model = self._tiled[style]
        total = step_count(rgb.shape[0], rgb.shape[1], self._tile_settings)
        async with self._tiled_lock:
            started = time.perf_counter()
            out = np.empty_like(rgb)
            steps = tiled.steps(
                rgb,
                model,
                tensors.to_model_batch,
                tensors.from_model_batch,
                self._tile_settings,
                out,
            )
            seconds, done = 0.0, 0
            try:
                while True:
                    async with self._model_lock:
                        step_start = time.perf_counter()
                        step = await run_to_completion(next, steps, _DONE)
                        seconds += time.perf_counter() - step_start
                    if step is _DONE:
                        break
                    self._tiles_run += 1
                    done += 1
                    yield done, max(total, done)
            except Exception as error:
                logger.exception("tiled inference failed for one %s picture", style)
                raise RuntimeError(f"inference failed: {error}") from error
            finally:
                steps.close()
        with self._counting:
            self._images += 1
            self._tiled_images += 1
            self._inference_s[style] += seconds
        self._metrics.images.inc(1, tags={"style": style})
        self._metrics.inference_ms.observe(seconds * 1e3, tags={"style": style})
        queue_ms = (started - arrival) * 1e3
        self._metrics.queue_ms.observe(queue_ms, tags={"style": style})
        yield StylizedArray(
            rgb=out,
            identity=self._identities[style],
            queue_ms=queue_ms,
            inference_ms=seconds * 1e3,
            batch_size=1,
        )

    def identities(self) -> dict[str, ModelIdentity]:
        """What this replica runs for each style (the cache keys its results may take)."""
        return dict(self._identities)

    def stats(self) -> dict:
        """This replica's figures (the ingress reports what it saw across replicas)."""
        with self._counting:  # one moment's figures
            passes, images = dict(self._batch_sizes), self._images
            inference_s, tiled = dict(self._inference_s), self._tiled_images
        return {
            "replica": self._replica,
            "loads": self._loads,
            "images": images,
            "batches": sum(passes.values()),
            "batch_sizes": dict(sorted(passes.items())),
            "inference_s": inference_s,
            "threads": self._threads,
            "runtime": {
                "device": self._runtime.device,
                "precision": self._runtime.precision,
                "channels_last": self._runtime.channels_last,
                "kind": self._runtime.kind,
                "identity": runtime_identity(self._runtime, self._tiling),  # in the cache keys
                **self._runtime_choice.summary(),
            },
            "max_batch_size": self._max_batch_size,
            "batch_config": self._batch_config.model_dump(),
            "pass_sizes": self._pass_sizes.figures() if self._pass_sizes else {},
            "tiled_images": tiled,
            "tiled_steps": self._tiles_run,
            "tiling": self._tiling.model_dump(),
        }

    def check_health(self) -> None:
        if not self._models:
            raise RuntimeError("no style loaded")
