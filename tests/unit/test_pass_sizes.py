"""Pass sizes learned per shape from timed passes (serve_app/model/pass_sizes.py): tried
upward one step at a time, the kernel-building first pass of each size not counted, a
larger size taken only when clearly faster, revisited now and then, per shape."""

import pytest

from serve_app.model.pass_sizes import (
    RECHECK_EVERY,
    SHAPES_KEPT,
    PassSizes,
    batch_sizes_up_to,
    pick_pass_size,
)

SHAPE = (192, 256, 3)
OTHER = (256, 192, 3)


def test_batch_sizes_up_to():
    assert batch_sizes_up_to(1) == [1]
    assert batch_sizes_up_to(8) == [1, 2, 4, 8]
    assert batch_sizes_up_to(6) == [1, 2, 4, 6]


@pytest.mark.parametrize(
    ("rates", "chosen"),
    [
        ({1: 2.4, 2: 2.3, 4: 1.9}, 1),  # CPU: batching does not pay
        ({1: 10.0, 2: 19.0, 4: 30.0, 8: 31.0}, 4),  # 8 is not 5% better than 4
        ({1: 10.0, 2: 10.4}, 1),
        ({1: 10.0, 2: 10.6}, 2),
    ],
)
def test_pick_pass_size_prefers_small_unless_clearly_faster(rates, chosen):
    assert pick_pass_size(rates) == chosen


def run(sizes: PassSizes, shape, waiting: int, seconds_per_picture: dict[int, float]) -> list[int]:
    """One group of ``waiting`` pictures through the passes ``sizes`` chooses, each pass
    timed as ``seconds_per_picture`` says for its size; the pass sizes, in order."""
    passes = []
    while waiting:
        size = sizes.next_pass(shape, waiting)
        assert 1 <= size <= waiting
        sizes.record(shape, size, size * seconds_per_picture[size])
        passes.append(size)
        waiting -= size
    return passes


def test_where_batching_loses_every_pass_settles_on_one():
    sizes = PassSizes(4)
    cpu = {1: 0.030, 2: 0.036, 4: 0.045}  # per picture: larger passes are slower
    history = [run(sizes, SHAPE, 4, cpu) for _ in range(6)]
    assert history[0][:2] == [1, 1]  # the first pass of 1 built the kernels; then timed
    assert 2 in history[0] or 2 in history[1]  # 2 tried...
    assert history[-1] == [1, 1, 1, 1]  # ...and dropped: 4 never tried, since 2 lost
    assert 4 not in {size for passes in history for size in passes}
    assert sizes.figures()["256x192"]["chosen"] == 1


def test_where_batching_wins_passes_grow_to_the_fastest_size():
    sizes = PassSizes(8)
    gpu = {1: 0.010, 2: 0.005, 4: 0.003, 8: 0.0029}  # 8 is not 5% better than 4
    history = [run(sizes, SHAPE, 8, gpu) for _ in range(8)]
    assert history[-1] == [4, 4]
    figures = sizes.figures()["256x192"]
    assert figures["chosen"] == 4 and set(figures["rates"]) == {1, 2, 4, 8}


def test_a_pass_never_takes_more_than_wait_nor_a_size_not_in_the_list():
    sizes = PassSizes(6)
    fast = {1: 0.01, 2: 0.004, 4: 0.002, 6: 0.001}
    for waiting in (1, 3, 5, 6, 7, 2, 6, 6, 6, 6, 5):
        passes = run(sizes, SHAPE, waiting, fast)
        assert sum(passes) == waiting and set(passes) <= {1, 2, 4, 6}


def test_shapes_learn_apart():
    sizes = PassSizes(4)
    for _ in range(6):
        run(sizes, SHAPE, 4, {1: 0.03, 2: 0.02, 4: 0.01})
        run(sizes, OTHER, 4, {1: 0.03, 2: 0.04, 4: 0.05})
    figures = sizes.figures()
    assert figures["256x192"]["chosen"] == 4 and figures["192x256"]["chosen"] == 1


def test_a_choice_is_revisited_and_follows_a_change():
    sizes = PassSizes(2)
    slow_pairs = {1: 0.03, 2: 0.05}
    for _ in range(RECHECK_EVERY):
        run(sizes, SHAPE, 2, slow_pairs)
    assert sizes.figures()["256x192"]["chosen"] == 1
    # Pairs became cheap (the machine quieted, say): the periodic retry of 2 sees it.
    fast_pairs = {1: 0.03, 2: 0.01}
    for _ in range(4 * RECHECK_EVERY):
        run(sizes, SHAPE, 2, fast_pairs)
    assert sizes.figures()["256x192"]["chosen"] == 2


def test_only_the_latest_shapes_are_kept():
    sizes = PassSizes(2)
    for side in range(SHAPES_KEPT + 10):
        run(sizes, (4 * (side + 1), 8, 3), 1, {1: 0.01})
        run(sizes, (4 * (side + 1), 8, 3), 1, {1: 0.01})
    figures = sizes.figures()
    assert len(figures) == SHAPES_KEPT
    assert "8x4" not in figures and f"8x{4 * (SHAPES_KEPT + 10)}" in figures
