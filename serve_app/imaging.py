"""Pure image functions: upload bytes → validated RGB array → model tensor → encoded bytes.

Every input limit lives here (:class:`ImageLimits`), and every way an upload can be bad
maps to one :class:`ImageError` subclass carrying a machine-readable ``code`` and the
HTTP status the API answers with. Nothing here knows about Ray or HTTP frameworks, and
importing the module changes no global state: optional Pillow plugins (pillow-heif) are
registered on first use.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features
from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

OutputFormat = Literal["png", "jpeg", "webp"]

MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}

SIDE_MULTIPLE = 4
"""The generator's two stride-2 stages need both sides divisible by 4."""

MIN_SIDE = 16
"""Smallest side the generator accepts after resizing (its reflection pads need it)."""

# Pillow format names accepted without optional plugins. MPO is what Pillow calls the
# JPEGs many phones write (a primary image plus previews/depth maps).
_BASE_INPUT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")

_DEFAULT_QUALITY = {"jpeg": 90, "webp": 90}

# zlib level 3 gives about level 6's (Pillow's default) size on photo-like images in
# about half its time (measured: 512 px, 18 ms vs 37 ms, within 1 %); PNG is lossless
# either way, so speed wins.
_PNG_COMPRESS_LEVEL = 3

# Downscaling: Pillow first shrinks by an integer factor with a cheap box filter, then
# runs Lanczos over the last 2× or more. Measured 1280 → 256 px: 5 ms instead of 11 ms.
# Pillow documents 2.0 as close to plain Lanczos (3.0, "indistinguishable", seldom
# reduces anything at the ratios served here).
_REDUCING_GAP = 2.0

_WHITE = (255, 255, 255)


class ImageLimits(BaseModel, frozen=True, extra="forbid"):
    """Limits applied to every upload; one instance is shared by the whole app."""

    max_bytes: int = Field(
        default=20 * 1024 * 1024,
        gt=0,
        description="Largest upload accepted, in bytes; larger ones answer 413.",
    )
    max_pixels: int = Field(
        default=50_000_000,
        gt=0,
        description=(
            "Largest width×height accepted, read from the image header before any pixel "
            "is decoded (a few-KB file can claim gigapixels); larger ones answer 413."
        ),
    )
    max_size: int = Field(
        default=1024,
        ge=MIN_SIDE,
        description=(
            "Largest output longer side (px) a request may ask for; at least MIN_SIDE "
            "(16), since no smaller output can be produced."
        ),
    )


class ImageError(Exception):
    """An upload the service refuses; ``code`` and ``http_status`` say how to answer."""

    code: str = "image_error"
    http_status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UndecodableImage(ImageError):
    """Not an image, or a corrupt or truncated one."""

    code = "undecodable_image"
    http_status = 400


class ImageTooLarge(ImageError):
    """Too many bytes or too many pixels."""

    code = "image_too_large"
    http_status = 413


class UnsupportedFormat(ImageError):
    """A valid image in a format (or colour mode) that is not accepted."""

    code = "unsupported_format"
    http_status = 415


class ImageTooSmall(ImageError):
    """The shorter side would fall under MIN_SIDE after resizing."""

    code = "image_too_small"
    http_status = 400


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
        _check_rgb(self.rgb)
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


# --------------------------------------------------------------------------- formats


def supported_input_formats() -> tuple[str, ...]:
    """Pillow format names accepted as uploads (HEIF when pillow-heif is installed)."""
    return _input_formats()


@functools.cache
def _input_formats() -> tuple[str, ...]:
    # Cached, so pillow-heif registers once; a concurrent first call may register it
    # twice, which is harmless (registration replaces the same entry).
    formats = list(_BASE_INPUT_FORMATS)
    if features.check("avif"):  # Pillow's own AVIF plugin, present in its wheels
        formats.append("AVIF")
    try:
        import pillow_heif
    except ImportError:
        logger.debug("pillow-heif is not installed; HEIF uploads are refused")
    else:
        pillow_heif.register_heif_opener()
        formats.append("HEIF")
    return tuple(formats)


def _openers(allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The Pillow openers for the allowlist (MPO has none: the JPEG opener returns it)."""
    Image.init()
    return tuple(name for name in allowed if name in Image.OPEN)


# --------------------------------------------------------------------------- decoding


def decode_upload(data: bytes, limits: ImageLimits, size_hint: int | None = None) -> DecodedImage:
    """Validate and decode an upload into an upright 8-bit sRGB image.

    Cheap checks come first: byte size, then the format and the pixel count read from
    the header, so oversized or unwanted files are refused without decoding pixels.
    With ``size_hint`` (the output's longer side), a JPEG is decoded by DCT scaling at
    the smallest scale that still leaves twice the pixels the resize needs, which keeps
    the resized picture's detail and spends a quarter of the time on a large photo.
    Animated and multi-page files yield their first frame. Raises an ImageError
    subclass for every bad input, never a raw Pillow exception.
    """
    check_upload_size(data, limits)
    if not data:
        raise UndecodableImage("The upload is empty.")
    allowed = _input_formats()
    # Pillow warns (then errors) on images above its own pixel ceiling; both mean "too
    # large" here. Before Python 3.14 catch_warnings swaps process-wide state, so with
    # concurrent decodes another thread may see (in an unlucky interleaving, keep) this
    # filter; it only ever turns Pillow's bomb warning into an error, wanted anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # formats=: no other Pillow plugin ever parses an upload (several CVEs were in
            # decoders of formats this service never wanted, e.g. PSD and FITS).
            with Image.open(io.BytesIO(data), formats=_openers(allowed)) as image:
                _check_format(image.format, allowed)
                _check_pixels(image.size, limits)
                if size_hint and image.format in ("JPEG", "MPO"):
                    _draft_for(image, size_hint)
                image.load()  # first frame only: Image.open leaves us on frame 0
                _apply_exif_orientation(image)
                return _to_decoded(image, image.format or "unknown")
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _pillow_bomb_error(exc, limits) from exc
        except MemoryError:
            raise  # the server's problem, not the upload's
        except UnidentifiedImageError as exc:
            foreign = sniff_foreign_format(data)
            if foreign:
                _check_format(foreign, allowed)
            raise UndecodableImage(
                f"The upload is not an image in a known format (accepted: {', '.join(allowed)})."
            ) from exc
        except Exception as exc:
            # Truncated files (LOAD_TRUNCATED_IMAGES stays False), broken chunks, bad
            # compressed streams: each Pillow plugin raises its own exception type.
            raise UndecodableImage(
                f"The image could not be decoded; it may be corrupt or truncated ({exc})."
            ) from exc


# Signatures of picture and document formats refused on purpose, so they get a 415 that
# names them instead of "undecodable" (Pillow is never asked to parse them).
_FOREIGN_SIGNATURES = (
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def sniff_foreign_format(data: bytes) -> str | None:
    """The name of a known format outside the allowlist, from its first bytes."""
    for signature, name in _FOREIGN_SIGNATURES:
        if data.startswith(signature):
            return name
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PPM"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def check_upload_size(data: bytes, limits: ImageLimits) -> None:
    """ImageTooLarge when the upload has more bytes than the limit (checked before anything)."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"The upload is {len(data)} bytes; the limit is {limits.max_bytes} bytes."
        )


def decode_resized(data: bytes, limits: ImageLimits, size: int) -> DecodedImage:
    """An upload decoded, validated and resized so its longer side is ``size``."""
    return resize_long_side(decode_upload(data, limits, size_hint=size), size)


def _draft_for(image: Image.Image, size: int) -> None:
    """Let the JPEG decoder scale down by 2, 4 or 8 while both sides stay >= 2x target."""
    width, height = image.size
    long_side = size * 2
    # Orientation does not matter: the box is checked against the stored sides.
    scale = long_side / max(width, height)
    image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))


def _check_format(image_format: str | None, allowed: tuple[str, ...]) -> None:
    if image_format not in allowed:
        raise UnsupportedFormat(
            f"{image_format or 'This'} images are not supported; send one of: {', '.join(allowed)}."
        )


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"The image header claims an empty size ({width}×{height}).")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"The image is {width}×{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels."
        )


def _pillow_bomb_error(exc: Exception, limits: ImageLimits) -> ImageTooLarge:
    # Only reached when max_pixels is above Pillow's own ceiling (which is read here,
    # never changed): that ceiling is then the effective limit.
    limit = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's message has the count
    actual = f"{found.group(1)} pixels" if found else "more pixels than Pillow allows"
    return ImageTooLarge(f"The image is {actual}; the limit is {limit} pixels.")


def _apply_exif_orientation(image: Image.Image) -> None:
    # Malformed EXIF is common in the wild; an image we cannot orient is still usable.
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:
        logger.debug("Ignoring unreadable EXIF orientation", exc_info=True)


def _to_decoded(image: Image.Image, source_format: str) -> DecodedImage:
    icc_profile = image.info.get("icc_profile")
    image = _to_eight_bit(image)
    image = _to_rgb_or_rgba(image, icc_profile)
    rgb, alpha = _flatten_alpha(image)
    return DecodedImage(
        rgb=np.asarray(rgb),
        alpha=None if alpha is None else np.asarray(alpha),
        source_format=source_format,
    )


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """Scale deep single-channel modes (16-bit, 32-bit int, float) to 8-bit "L".

    Pillow's own convert("L") clips these at 255, which turns most 16-bit images white.
    """
    if image.mode.startswith("I;16"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image), 0, 65535))
    if image.mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        # Usually 16-bit data widened to 32 bits; stretch only what does not fit.
        if low >= 0 and high <= 65535:
            low, high = 0, 65535
        return Image.fromarray(_scale_to_uint8(values, low, high))
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        # Float images are mostly 0..1 or 0..255; anything else is stretched to fit.
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif low >= 0.0 and high <= 255.0:
            low, high = 0.0, 255.0
        return Image.fromarray(_scale_to_uint8(values, low, high))
    return image


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map low..high linearly onto 0..255, rounding to nearest."""
    span = max(high - low, 1e-12)
    scaled = (values.astype(np.float64) - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb_or_rgba(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Convert any 8-bit mode to sRGB "RGB", or "RGBA" when it carries transparency."""
    if image.mode == "CMYK":
        # Adobe's inverted CMYK JPEGs are already un-inverted by Pillow's decoder.
        return _icc_to_srgb(image, icc_profile, "RGB") or _convert(image, "RGB")
    # P/L/RGB with a tRNS key, LA, PA, RGBa and La all become RGBA here.
    target = "RGBA" if image.has_transparency_data else "RGB"
    image = _convert(image, target)
    return _icc_to_srgb(image, icc_profile, target) or image


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == mode:
        return image
    try:
        return image.convert(mode)
    except ValueError as exc:
        raise UnsupportedFormat(f"Images in colour mode {image.mode} are not supported.") from exc


def _icc_to_srgb(
    image: Image.Image, icc_profile: bytes | None, output_mode: str
) -> Image.Image | None:
    """Convert to sRGB through the embedded ICC profile; None when not needed or failed.

    Best effort: a broken or unusable profile leaves the pixels as they are, which is
    what a browser showing the upload would do too.
    """
    if not icc_profile:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        description = (source.profile.profile_description or "").lower()
        if "srgb" in description:
            return None
        expected_space = "CMYK" if image.mode == "CMYK" else "RGB"
        if source.profile.xcolor_space.strip() != expected_space:
            logger.debug(
                "Ignoring a %s ICC profile on a %s image",
                source.profile.xcolor_space.strip(),
                image.mode,
            )
            return None
        return ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode=output_mode)
    except Exception:
        logger.debug("Ignoring an ICC profile that could not be applied", exc_info=True)
        return None


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _flatten_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Split an RGB(A) image into RGB composited over white, and alpha (None if opaque)."""
    if image.mode == "RGB":
        return image, None
    alpha = image.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return image.convert("RGB"), None
    # The model sees (and a JPEG shows) transparent areas as white, not as whatever
    # colour happens to sit under alpha 0.
    rgb = Image.new("RGB", image.size, _WHITE)
    rgb.paste(image, mask=alpha)
    return rgb, alpha


# --------------------------------------------------------------------------- resizing


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
    dimensions = target_dimensions(image.width, image.height, size)
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
        dimensions, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP
    )
    return np.asarray(resized)


# --------------------------------------------------------------------------- model I/O


def to_model_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack equal-shape (H, W, 3) uint8 arrays into an (N, 3, H, W) float32 batch in [-1, 1].

    The arithmetic is the official AnimeGANv2 script's: torchvision's to_tensor
    (``x.float().div(255)``) then ``* 2 - 1``, so outputs match it bit for bit.
    """
    if not images:
        raise ValueError("to_model_batch needs at least one image.")
    shape = images[0].shape
    for index, array in enumerate(images):
        _check_rgb(array, f"image {index}")
        if array.shape != shape:
            raise ValueError(
                f"All images in a batch must have one shape: image 0 is {shape}, "
                f"image {index} is {array.shape}."
            )
    # One uint8 copy (needed to make one block of N images, and it also makes
    # read-only arrays from Pillow or Ray safe for torch), then one float copy that
    # also moves channels first; the rest happens in place.
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    batch = stacked.to(torch.float32, memory_format=torch.contiguous_format)
    return batch.div_(255).mul_(2).sub_(1)


def from_model_batch(batch: torch.Tensor) -> list[np.ndarray]:
    """Turn generator output (N, 3, H, W), any float dtype, into (H, W, 3) uint8 arrays.

    Exactly the official script's post-processing: ``clip(-1, 1) * 0.5 + 0.5``, then
    torchvision's to_pil_image. The arrays are views into one block.
    """
    if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
        raise ValueError(
            f"Expected a floating (N, 3, H, W) tensor, got {tuple(batch.shape)} {batch.dtype}."
        )
    # Computed where the tensor lives (these element-wise ops round the same on every
    # device) so that only uint8 data, a quarter of the float size, is copied back.
    pixels = batch.detach().float().clip(-1, 1)
    pixels.mul_(0.5).add_(0.5)
    # Truncation, not rounding: to_pil_image does mul(255).byte(), and matching the
    # reference output exactly matters more than the half-level it costs on average.
    pixels = pixels.mul_(255).byte()
    hwc = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return list(hwc)


# --------------------------------------------------------------------------- encoding


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
    _check_rgb(rgb)
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


# --------------------------------------------------------------------------- checks


def _check_rgb(array: np.ndarray, name: str = "rgb") -> None:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an (H, W, 3) uint8 array, got {array.shape} {array.dtype}."
        )


def _check_alpha(array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape or array.dtype != np.uint8:
        raise ValueError(f"alpha must be an {shape} uint8 array, got {array.shape} {array.dtype}.")
