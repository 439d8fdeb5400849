"""Option resolution and the result's headers."""

import pytest

from serve_app.config import AppConfig
from serve_app.errors import ServiceError
from serve_app.options import resolve_options
from serve_app.pipeline.results import StylizeResult

CONFIG = AppConfig.model_validate(
    {"styles": [{"name": "a", "weights": "random"}], "default_size": 256, "default_quality": 80}
)


def test_defaults_fill_in():
    options = resolve_options(CONFIG, None, None, None, None)
    assert (options.style, options.size, options.format, options.quality) == ("a", 256, "png", None)


def test_quality_defaults_for_lossy_formats_and_is_dropped_for_png():
    assert resolve_options(CONFIG, None, None, "JPEG", None).quality == 80
    assert resolve_options(CONFIG, None, None, "webp", 55).quality == 55
    assert resolve_options(CONFIG, None, None, "png", 55).quality is None


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("zz", None, None, None), "unknown_style"),
        ((None, 0, None, None), "invalid_size"),
        ((None, 15, None, None), "invalid_size"),
        ((None, 1025, None, None), "invalid_size"),
        ((None, None, "bmp", None), "invalid_format"),
        ((None, None, "jpeg", 101), "invalid_quality"),
        ((None, None, "jpeg", 0), "invalid_quality"),
    ],
)
def test_bad_options_are_422(args, code):
    with pytest.raises(ServiceError) as raised:
        resolve_options(CONFIG, *args)
    assert (raised.value.status, raised.value.code) == (422, code)


def test_smallest_size_is_the_generators_minimum():
    assert resolve_options(CONFIG, None, 16, None, None).size == 16


def test_result_headers():
    result = StylizeResult(b"png!", "image/png", "miss", "a", 4, 3, "k", True)
    assert result.headers() == {
        "X-Cache": "miss",
        "X-Style": "a",
        "ETag": '"k"',
        "X-Weights": "random",
    }


@pytest.mark.parametrize("strength", [-0.01, 1.01, float("nan"), float("inf")])
def test_strength_outside_0_to_1_is_422(strength):
    with pytest.raises(ServiceError) as raised:
        resolve_options(CONFIG, strength=strength)
    assert (raised.value.status, raised.value.code) == (422, "invalid_strength")


def test_controls_default_and_round():
    options = resolve_options(CONFIG)
    assert (options.strength, options.preserve_color) == (1.0, False)
    options = resolve_options(CONFIG, strength=0.50000001, preserve_color=True)
    assert (options.strength, options.preserve_color) == (0.5, True)
