"""Application arguments and batch knobs: defaults in one place, clear refusals."""

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig, BatchConfig

STYLES = [{"name": "a", "weights": "random"}, {"name": "b", "weights": "random"}]


def test_defaults_and_default_style():
    config = AppConfig.model_validate({"styles": STYLES})
    assert config.default_style_name == "a"
    assert config.style("b").name == "b" and config.style("zz") is None
    assert config.cors_origins == [] and config.api_key_env == "ANIMEGAN_API_KEYS"
    assert config.default_size <= config.limits.max_size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"styles": []}, "at least 1"),
        ({"styles": [STYLES[0], STYLES[0]]}, "unique"),
        ({"styles": STYLES, "default_style": "c"}, "not one of"),
        ({"styles": STYLES, "default_size": 2048}, "exceeds limits.max_size"),
        # A default past a bound refused every request that named no size.
        ({"styles": STYLES, "default_size": 8}, "greater than or equal to 16"),
        (
            {"styles": STYLES, "default_size": 1024, "limits": {"max_sync_size": 512}},
            "exceeds limits.max_sync_size 512",
        ),
        ({"styles": STYLES, "typo_field": 1}, "Extra inputs"),
        ({"styles": [{"name": "bad name!", "weights": "random"}]}, "pattern"),
        ({"styles": STYLES, "cache": {"shards": 0}}, "greater than or equal"),
        # The model takes sides on the 4-px grid: every face crop failed at the replica.
        ({"styles": STYLES, "portrait": {"face_size": 510}}, "multiple of 4"),
        # A 4 px overlap left a grey line at every tile seam (the weights summed to 0.75).
        ({"styles": STYLES, "tiling": {"overlap": 4}}, "0 or at least 8"),
        # One batch of a key's would refuse its own last pictures with 429.
        ({"styles": STYLES, "max_in_flight_per_key": 4}, "one batch would refuse its own"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(args, message):
    with pytest.raises(ValidationError) as raised:
        AppConfig.model_validate(args)
    assert message in str(raised.value)


def test_a_lower_synchronous_bound_lowers_the_live_default_too():
    limits = {"max_sync_size": 128}
    config = AppConfig.model_validate({"styles": STYLES, "limits": limits, "default_size": 96})
    assert (config.live.default_size, config.live_default_size) == (256, 128)


def test_batch_config_accepts_auto_and_bounds_integers():
    assert BatchConfig().max_batch_size == "auto"  # each shape's passes timed
    # The batch the batcher collects: auto's bound, or the fixed size.
    assert BatchConfig().largest_batch == BatchConfig().auto_max_batch_size
    auto = {"max_batch_size": "auto", "auto_max_batch_size": 16}
    assert BatchConfig.model_validate(auto).largest_batch == 16
    assert BatchConfig.model_validate({"max_batch_size": 4}).largest_batch == 4
    for bad in (0, 257, "big"):
        with pytest.raises(ValidationError):
            BatchConfig.model_validate({"max_batch_size": bad})
