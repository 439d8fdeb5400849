"""The controls over the look: strength (a blend) and preserve_color (CIELAB transfer)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageCms

from serve_app.imaging import pixels

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8)
STYLED = 255 - PHOTO


def lab(rgb: np.ndarray) -> np.ndarray:
    srgb = ImageCms.createProfile("sRGB")
    to_lab = ImageCms.buildTransform(srgb, ImageCms.createProfile("LAB"), "RGB", "LAB")
    return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), to_lab)).astype(int)


def test_defaults_return_the_models_output_unchanged():
    assert np.array_equal(pixels.apply_controls(PHOTO, STYLED, 1.0, False), STYLED)


def test_strength_blends_from_the_photo_to_the_style():
    assert np.array_equal(pixels.apply_controls(PHOTO, STYLED, 0.0, False), PHOTO)
    half = pixels.apply_controls(PHOTO, STYLED, 0.5, False).astype(int)
    expected = np.rint((PHOTO.astype(float) + STYLED.astype(float)) / 2)
    assert np.abs(half - expected).max() == 0


def test_preserve_color_takes_lightness_from_the_style_and_colour_from_the_photo():
    red = np.zeros((32, 32, 3), np.uint8)
    red[...] = (170, 50, 50)
    light_grey = np.full((32, 32, 3), 190, np.uint8)
    out_lab, red_lab, grey_lab = (
        lab(x)[0, 0] for x in (pixels.apply_controls(red, light_grey, 1.0, True), red, light_grey)
    )
    # Pillow's LAB: L* scaled to 0..255, a* and b* as signed bytes.
    lightness, colour = out_lab[0], out_lab[1:].astype(np.int8)
    assert abs(lightness - grey_lab[0]) < abs(lightness - red_lab[0]) / 4
    # The colour is the photo's, up to what the lighter colour's gamut allows; far from the
    # style's grey (a* = b* = 0).
    photo_colour = red_lab[1:].astype(np.int8)
    assert np.abs(colour.astype(int) - photo_colour).max() < np.abs(photo_colour).min() / 2
    assert np.abs(colour).min() > 20


def test_preserve_color_of_a_picture_with_itself_is_nearly_the_picture():
    columns, rows = np.meshgrid(np.arange(96), np.arange(64))
    smooth = np.stack([columns * 2, rows * 3, np.full((64, 96), 120)], -1).astype(np.uint8)
    out = pixels.transfer_lightness(smooth, smooth)
    assert np.abs(out.astype(int) - smooth).mean() < 2


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_bad_strength_is_refused(strength):
    with pytest.raises(ValueError, match="strength"):
        pixels.apply_controls(PHOTO, STYLED, strength, False)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape"):
        pixels.apply_controls(PHOTO, STYLED[:32], 1.0, False)
