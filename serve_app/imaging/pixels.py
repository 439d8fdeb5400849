"""Pictures as arrays: the decoded picture's shape, resizing, the user's controls over
the model's output, and encoding to PNG, JPEG or WebP.

Pure functions over numpy arrays and Pillow; nothing here knows about Ray or HTTP.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

from serve_app.config import MIN_SIDE, SIDE_MULTIPLE, OutputFormat
from serve_app.errors import ImageTooSmall

MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


_DEFAULT_QUALITY = {"jpeg": 90, "webp": 90}


# zlib level 3 gives about level 6's (Pillow's default) size on photo-like images in
# about half its time (measured: 512 px, 18 ms vs 37 ms, within 1 %); PNG is lossless
# either way, so speed wins.
_PNG_COMPRESS_LEVEL = 3


# Downscaling: Pillow first shrinks by an integer factor with a cheap box filter, then
# runs Lanczos over the last 2× or more. Measured 1280 → 256 px: 5 ms instead of 11 ms.
# Pillow documents 2.0 as close to plain Lanczos (3.0, "indistinguishable", seldom
# reduces anything at the ratios served here).
REDUCING_GAP = 2.0


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit sRGB image, with its transparency kept apart.

    ``rgb`` is already composited over white where ``alpha`` is below 255. The arrays
    may be read-only (Pillow and Ray both hand out read-only arrays); copy before
    writing to them.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    source_format: str

    def __post_init__(self) -> None:
        check_rgb(self.rgb)
        if not self.rgb.flags.c_contiguous:
            raise ValueError("rgb must be C-contiguous.")
        if self.alpha is not None:
            _check_alpha(self.alpha, self.rgb.shape[:2])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


@functools.cache
def srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def target_dimensions(width: int, height: int, size: int) -> tuple[int, int]:
    """The (width, height) of an image scaled so its longer side is ``size``.

    The longer side is ``size`` rounded down to a multiple of SIDE_MULTIPLE (never above
    ``size``); the shorter side keeps the aspect ratio, rounded to the nearest multiple
    (halves round up). Small images are scaled up. Raises ImageTooSmall when the shorter
    side would fall under MIN_SIDE.
    """
    if width <= 0 or height <= 0 or size <= 0:
        raise ValueError(f"Sides and size must be positive, got {width}×{height} at {size}.")
    long_in, short_in = max(width, height), min(width, height)
    long_out = size // SIDE_MULTIPLE * SIDE_MULTIPLE
    # round(short_in * long_out / long_in / M) * M, in exact integer arithmetic.
    step = SIDE_MULTIPLE * long_in
    short_out = (2 * short_in * long_out + step) // (2 * step) * SIDE_MULTIPLE
    if short_out < MIN_SIDE:
        raise ImageTooSmall(
            f"A {width}×{height} image scaled to a longer side of {size} px would have a "
            f"shorter side of {short_out} px; the minimum is {MIN_SIDE} px."
        )
    return (long_out, short_out) if width >= height else (short_out, long_out)


def resize_long_side(image: DecodedImage, size: int) -> DecodedImage:
    """Resize (Lanczos) so the longer side is ``size``; see target_dimensions."""
    return resize_to(image, target_dimensions(image.width, image.height, size))


def resize_to(image: DecodedImage, dimensions: tuple[int, int]) -> DecodedImage:
    """Resize (Lanczos) to ``dimensions`` (width, height), whatever the aspect: an
    anamorphic video's frames become square pixels."""
    if dimensions == (image.width, image.height):
        return image
    alpha = None if image.alpha is None else _resize_array(image.alpha, dimensions)
    return DecodedImage(
        rgb=_resize_array(image.rgb, dimensions),
        alpha=alpha,
        source_format=image.source_format,
    )


def _resize_array(array: np.ndarray, dimensions: tuple[int, int]) -> np.ndarray:
    resized = Image.fromarray(array).resize(
        dimensions, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP
    )
    return np.asarray(resized)


def apply_controls(
    photo: np.ndarray, stylized: np.ndarray, strength: float, preserve_color: bool
) -> np.ndarray:
    """The user's controls over the look, applied to the model's output.

    ``preserve_color`` keeps the photo's colours and takes the style's lightness and lines
    (in CIELAB, where lightness and colour are separate, unlike RGB channels); then
    ``strength`` blends from the photo (0) to that result (1). Both arrays are (H, W, 3)
    uint8 of one shape; with the defaults (1.0, False) the output is the model's own.
    """
    check_rgb(photo, "photo")
    check_rgb(stylized, "stylized")
    if photo.shape != stylized.shape:
        raise ValueError(f"photo {photo.shape} and stylized {stylized.shape} differ in shape")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be 0..1, got {strength}")
    styled = transfer_lightness(photo, stylized) if preserve_color else stylized
    if strength == 1.0:
        return styled
    mixed = photo.astype(np.float32) * (1.0 - strength) + styled.astype(np.float32) * strength
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def transfer_lightness(photo: np.ndarray, stylized: np.ndarray) -> np.ndarray:
    """CIELAB L* of ``stylized`` with the a*, b* (colour) of ``photo``, back in sRGB."""
    to_lab, to_rgb = _lab_transforms()
    photo_lab = ImageCms.applyTransform(Image.fromarray(photo), to_lab)
    styled_lab = ImageCms.applyTransform(Image.fromarray(stylized), to_lab)
    lightness = styled_lab.getchannel("L")
    merged = Image.merge("LAB", (lightness, photo_lab.getchannel("A"), photo_lab.getchannel("B")))
    return np.asarray(ImageCms.applyTransform(merged, to_rgb))


@functools.cache
def _lab_transforms() -> tuple[ImageCms.ImageCmsTransform, ImageCms.ImageCmsTransform]:
    lab = ImageCms.createProfile("LAB", colorTemp=6500)  # D65, sRGB's white point
    srgb = srgb_profile()
    return (
        ImageCms.buildTransform(srgb, lab, "RGB", "LAB"),
        ImageCms.buildTransform(lab, srgb, "LAB", "RGB"),
    )


def encode_image(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    fmt: OutputFormat,
    quality: int | None = None,
) -> bytes:
    """Encode to PNG, JPEG or WebP, with no metadata (no EXIF, ICC profile or text).

    ``quality`` (1..100, default 90) applies to JPEG and WebP; PNG is lossless and
    ignores it. Alpha is kept for PNG and WebP and dropped for JPEG, whose ``rgb`` is
    already composited over white.
    """
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"Unknown output format {fmt!r}; use one of {', '.join(MEDIA_TYPES)}.")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
    ):
        raise ValueError(f"quality must be an integer from 1 to 100, got {quality!r}.")
    check_rgb(rgb)
    image = Image.fromarray(rgb)
    if alpha is not None and fmt != "jpeg":
        _check_alpha(alpha, rgb.shape[:2])
        image.putalpha(Image.fromarray(alpha))
    # An image built from an array has an empty .info, and no exif/icc_profile/pnginfo
    # is passed: nothing about the upload or this server ends up in the file.
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=_PNG_COMPRESS_LEVEL)
    else:
        pillow_format = "JPEG" if fmt == "jpeg" else "WEBP"
        image.save(buffer, pillow_format, quality=quality or _DEFAULT_QUALITY[fmt])
    return buffer.getvalue()


def check_rgb(array: np.ndarray, name: str = "rgb") -> None:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an (H, W, 3) uint8 array, got {array.shape} {array.dtype}."
        )


def _check_alpha(array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape or array.dtype != np.uint8:
        raise ValueError(f"alpha must be an {shape} uint8 array, got {array.shape} {array.dtype}.")
