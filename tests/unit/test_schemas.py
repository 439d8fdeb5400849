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
    options = resolve_options(CONFIG)
    assert (options.style, options.size, options.format, options.quality) == ("a", 256, "png", None)


def test_quality_defaults_for_lossy_formats_and_is_dropped_for_png():
    assert resolve_options(CONFIG, format="JPEG").quality == 80
    assert resolve_options(CONFIG, format="webp", quality=55).quality == 55
    assert resolve_options(CONFIG, format="png", quality=55).quality is None


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ({"style": "zz"}, "unknown_style"),
        ({"size": 0}, "invalid_size"),
        ({"size": 15}, "invalid_size"),
        ({"size": 1025}, "invalid_size"),
        ({"format": "bmp"}, "invalid_format"),
        ({"format": "jpeg", "quality": 101}, "invalid_quality"),
        ({"format": "jpeg", "quality": 0}, "invalid_quality"),
    ],
)
def test_bad_options_are_422(values, code):
    with pytest.raises(ServiceError) as raised:
        resolve_options(CONFIG, values)
    assert (raised.value.status, raised.value.code) == (422, code)


def test_smallest_size_is_the_generators_minimum():
    assert resolve_options(CONFIG, size=16).size == 16


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
