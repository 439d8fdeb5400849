"""The Stylizer's pure parts: input checks and the self-tuning batch size choice."""

import numpy as np
import pytest

from serve_app.model.stylizer import batch_sizes_up_to, check_model_input, pick_batch_size

MODELS = {"a": object()}


def test_batch_sizes_up_to():
    assert batch_sizes_up_to(1) == [1]
    assert batch_sizes_up_to(8) == [1, 2, 4, 8]
    assert batch_sizes_up_to(6) == [1, 2, 4, 6]


@pytest.mark.parametrize(
    ("curve", "chosen"),
    [
        ({1: 2.4, 2: 2.3, 4: 1.9}, 1),  # CPU: batching does not pay
        ({1: 10.0, 2: 19.0, 4: 30.0, 8: 31.0}, 4),  # 8 is not 5% better than 4
        ({1: 10.0, 2: 10.4}, 1),
        ({1: 10.0, 2: 10.6}, 2),
    ],
)
def test_pick_batch_size_prefers_small_unless_clearly_faster(curve, chosen):
    assert pick_batch_size(curve) == chosen


def test_good_input_passes():
    check_model_input(np.zeros((16, 20, 3), np.uint8), "a", MODELS)


@pytest.mark.parametrize(
    ("rgb", "style", "message"),
    [
        (np.zeros((16, 16, 3), np.uint8), "zz", "unknown style"),
        (np.zeros((16, 16, 3), np.float32), "a", "uint8"),
        (np.zeros((16, 16), np.uint8), "a", "uint8"),
        (np.zeros((16, 16, 4), np.uint8), "a", "3 channels"),
        (np.zeros((18, 16, 3), np.uint8), "a", "multiples of 4"),
        (np.zeros((8, 16, 3), np.uint8), "a", "at least"),
        ("not an array", "a", "uint8"),
    ],
)
def test_bad_items_are_refused_clearly(rgb, style, message):
    with pytest.raises(ValueError, match=message):
        check_model_input(rgb, style, MODELS)
