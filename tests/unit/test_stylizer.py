"""The Stylizer's pure parts: input checks (its pass sizes: test_pass_sizes.py)."""

import numpy as np
import pytest

from serve_app.model.stylizer import check_model_input

MODELS = {"a": object()}


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
