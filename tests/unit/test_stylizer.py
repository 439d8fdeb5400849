"""The Stylizer's pure parts: input checks (its pass sizes: test_pass_sizes.py), and its
deployment: a torch-free shell over the model replica."""

import subprocess
import sys

import numpy as np
import pytest

from serve_app.model.deployment import Stylizer
from serve_app.model.stylizer import ModelReplica, check_model_input

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


def test_building_the_app_imports_neither_the_model_nor_the_media_stack():
    """`serve run` and `serve deploy` import the app in a process before any replica
    starts; torch's, PyAV's or Pillow's import there would lengthen every deploy (checked
    in a fresh interpreter)."""
    heavy = "{'torch', 'av', 'PIL'} & set(sys.modules)"
    code = f"import sys, serve_app.app; assert not {heavy}, {heavy}"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_deployment_hands_over_every_call_the_model_replica_answers():
    def public(cls) -> set[str]:
        return {
            name for name in vars(cls) if not name.startswith("_") and callable(getattr(cls, name))
        }

    assert public(ModelReplica) == public(Stylizer.func_or_class)
