"""How many pictures of one shape go through the model in one forward pass, learned per
shape from the replica's own passes (`max_batch_size: auto`).

Whether batching pays depends on the device and on the shape: on a GPU a pass of 16 costs
little more than a pass of 1; on a CPU a pass of 4 is often slower per picture than four
passes of 1 (the larger working set falls out of the caches), and where it turns depends
on the picture's size. So nothing is assumed and nothing is timed at start-up (a start on
a slow CPU would pay seconds for it): every real pass is timed, per shape and pass size
(the caller says in what: the replica's CPU seconds on a CPU, wall-clock seconds on a
GPU), and a group of same-shape pictures runs in passes of the size that has cost least
per picture for that shape so far.

The sizes tried are 1, 2, 4, … up to the batcher's bound (``batch_sizes_up_to``), so a
shape builds kernels for a few batch sizes only. A size is tried upward from 1, one step
at a time, whenever enough pictures of the shape wait; the first pass of each (shape,
size) is not counted (it builds that shape's kernels). A larger size is taken only if it
is ``MIN_GAIN`` faster per picture. Every ``RECHECK_EVERY`` passes of a shape the next
size above the choice is timed again, so a choice made on a noisy moment is revisited.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

# A larger pass must beat a smaller one by this factor (pictures per second) to be chosen.
MIN_GAIN = 1.05
# Passes of one shape between two timings of the size above the current choice.
RECHECK_EVERY = 64
# Shapes remembered (least recently used go first): pictures come in many shapes.
SHAPES_KEPT = 256
# Weight of a new timing in a size's running mean seconds per picture.
NEW_WEIGHT = 0.3


def batch_sizes_up_to(largest: int) -> list[int]:
    """1, 2, 4, ... and largest itself."""
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i <= largest]
    return sizes if sizes[-1] == largest else [*sizes, largest]


def pick_pass_size(rates: dict[int, float]) -> int:
    """The smallest size whose pictures per second no larger one beats by MIN_GAIN."""
    best = min(rates)
    for size in sorted(rates):
        if rates[size] > rates[best] * MIN_GAIN:
            best = size
    return best


@dataclass
class _ShapeTimings:
    seconds_per_picture: dict[int, float] = field(default_factory=dict)  # timed sizes
    warmed: set[int] = field(default_factory=set)  # sizes whose first pass ran
    passes_since_check: int = 0  # since the size above the choice was last tried

    def rates(self) -> dict[int, float]:
        return {size: 1 / seconds for size, seconds in self.seconds_per_picture.items()}


class PassSizes:
    """The pass size for each shape, from the timings of the passes run so far.
    Thread-safe: passes run in worker threads, figures are read from the event loop."""

    def __init__(self, largest: int):
        self.sizes = batch_sizes_up_to(largest)
        self._shapes: OrderedDict[tuple[int, ...], _ShapeTimings] = OrderedDict()
        self._lock = threading.Lock()

    def next_pass(self, shape: tuple[int, ...], waiting: int) -> int:
        """How many of ``waiting`` pictures of ``shape`` the next pass takes."""
        fitting = [size for size in self.sizes if size <= waiting] or [1]
        with self._lock:
            timings = self._shapes.get(shape)
            if timings is None or not timings.seconds_per_picture:
                return 1  # the baseline every other size is judged against
            chosen = pick_pass_size(timings.rates())
            above = next((size for size in fitting if size > chosen), None)
            if above is not None:
                untried = above not in timings.seconds_per_picture
                nothing_larger_lost = chosen == max(timings.seconds_per_picture)
                due = timings.passes_since_check >= RECHECK_EVERY
                if (untried and nothing_larger_lost) or due:
                    timings.passes_since_check = 0
                    return above
            return max(size for size in fitting if size <= chosen)

    def record(self, shape: tuple[int, ...], size: int, seconds: float) -> None:
        """One pass of ``size`` pictures of ``shape`` took ``seconds``."""
        with self._lock:
            timings = self._shapes.pop(shape, None) or _ShapeTimings()
            self._shapes[shape] = timings  # the most recently used, last
            while len(self._shapes) > SHAPES_KEPT:
                self._shapes.popitem(last=False)
            timings.passes_since_check += 1
            if size not in timings.warmed:
                timings.warmed.add(size)  # this pass built the kernels: not a fair timing
                return
            per_picture = max(seconds, 1e-9) / size  # a clock's tick is never free
            before = timings.seconds_per_picture.get(size)
            timings.seconds_per_picture[size] = (
                per_picture if before is None else before + NEW_WEIGHT * (per_picture - before)
            )

    def figures(self) -> dict[str, dict]:
        """Per shape ("WxH"): pictures per second of each timed size, and the choice."""
        with self._lock:  # passes record meanwhile, from worker threads
            rates = {shape: t.rates() for shape, t in self._shapes.items() if t.seconds_per_picture}
        return {
            f"{shape[1]}x{shape[0]}": {
                "rates": {size: round(rate, 2) for size, rate in sorted(timed.items())},
                "chosen": pick_pass_size(timed),
            }
            for shape, timed in rates.items()
        }
