"""Uploads decoded: bytes → a validated, upright 8-bit sRGB picture (resized on the way).

Every way an upload can be bad maps to one of the service's errors (``errors.py``),
which carries the HTTP status and code the API answers with; the limits themselves are
configuration (``config.ImageLimits``). Nothing here knows about Ray or HTTP frameworks, and
importing the module changes no global state: optional Pillow plugins (pillow-heif) are
registered on first use.

Longer than most modules, on purpose: every guard an upload passes (size, format allowlist,
pixel bombs, EXIF orientation, ICC profiles, 16-bit and alpha, banded conversion) belongs
to the one decode they protect.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError, features

from serve_app.config import ImageLimits
from serve_app.errors import (
    ImageTooLarge,
    ServiceError,
    UndecodableImage,
    UnsupportedFormat,
)
from serve_app.imaging.pixels import REDUCING_GAP, DecodedImage, srgb_profile, target_dimensions

logger = logging.getLogger(__name__)


# Pillow format names accepted without optional plugins. MPO is what Pillow calls the
# JPEGs many phones write (a primary image plus previews/depth maps).
_BASE_INPUT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")


_WHITE = (255, 255, 255)


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

# Pixels converted per step. Every copy made while converting a picture (the band cut
# out of it, turned upright, scaled to 8 bits via float64, converted to RGB(A), through
# an ICC transform, composited over white) has this many pixels, so each is a few MB
# whatever the picture's size; only Pillow's decoded picture itself is full-size.
_BAND_PIXELS = 1 << 18

# EXIF orientation → the transpose that makes the picture upright (as ImageOps.exif_transpose).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270)
_SWAPS_SIDES_REVERSED = (Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90)
_FLIPS_ROWS = (Image.Transpose.ROTATE_180, Image.Transpose.FLIP_TOP_BOTTOM)


def decode_upload(data: bytes, limits: ImageLimits, size_hint: int | None = None) -> DecodedImage:
    """Validate and decode an upload into an upright 8-bit sRGB image, at full size.

    Cheap checks come first: byte size, then the format and the pixel count read from
    the header, so oversized or unwanted files are refused without decoding pixels.
    With ``size_hint`` (the output's longer side), a JPEG is decoded by DCT scaling at
    the smallest scale that still leaves twice the pixels the resize needs, which keeps
    the resized picture's detail and spends a quarter of the time on a large photo.
    Animated and multi-page files yield their first frame. Raises a ServiceError
    subclass for every bad input, never a raw Pillow exception. The service calls
    decode_resized, which also bounds the memory a large picture takes.
    """
    return _decode(data, limits, size_hint, None)


def decode_resized(data: bytes, limits: ImageLimits, size: int) -> DecodedImage:
    """An upload decoded, validated and resized so its longer side is ``size``.

    The pixels are those of ``resize_long_side(decode_upload(data, limits, size), size)``
    (the same Lanczos with Pillow's ``reducing_gap``, whose first step is a box
    reduction by an integer factor), but that reduction happens while the picture is
    converted, a band of rows at a time: apart from what the decoder itself holds (the
    picture as Pillow stores it; see ``decode_peak_bytes``) no copy is ever full-size.
    """
    return _decode(data, limits, size, size)


def decode_peak_bytes(pixels: int) -> int:
    """An upper bound on the memory one decode_resized of a ``pixels``-pixel upload adds.

    Measured as the peak resident set of a fresh process over one decode of a
    7000×7000 picture at size 1024 (``tests/unit/test_decode_memory.py``), in bytes a
    pixel: palette GIF 1.5, 16-bit grey PNG 2.6, RGB or RGBA PNG (8 or 16 bits) and
    TIFF 4.5 (Pillow keeps RGB as 4 bytes), baseline JPEG 1.4 (DCT scaling), progressive
    JPEG 4 (4:2:0), 7 (4:4:4) or 9 (CMYK), as libjpeg keeps every DCT coefficient, AVIF
    9 (11.5 with alpha), WebP 16: libwebp's animation decoder, the only one Pillow uses,
    keeps two full-size RGBA canvases and Pillow a copy of the frame besides the
    picture. Pillow has no scaled decoding but JPEG's. The worst, 17.3, is a WebP with
    alpha just under four times the output side: no box reduction applies, so its
    converted copy is full-size too. HEIF (pillow-heif) was not measured.
    """
    return _DECODE_PEAK_BYTES_PER_PIXEL * pixels + _DECODE_PEAK_OVERHEAD


_DECODE_PEAK_BYTES_PER_PIXEL = 18
_DECODE_PEAK_OVERHEAD = 32 * 1024 * 1024


def header_pixels(data: bytes) -> int:
    """Width × height as the header claims it (no pixel is decoded); 0 if unreadable
    (decoding then refuses the upload with the right error)."""
    try:
        with Image.open(io.BytesIO(data), formats=_openers(_input_formats())) as image:
            width, height = image.size
            return width * height
    except Exception:
        return 0


def _decode(
    data: bytes, limits: ImageLimits, size_hint: int | None, size: int | None
) -> DecodedImage:
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
                stored = image.size  # a draft decodes fewer pixels: not the picture's size
                if size_hint and image.format in ("JPEG", "MPO"):
                    _draft_for(image, size_hint)
                image.load()  # first frame only: Image.open leaves us on frame 0
                plan = _Plan.of(image, size, stored)
                rgb, alpha = _to_upright_rgb(image, plan)
                source_format = image.format or "unknown"
            del image  # the full-size picture goes before the final resize
        except ServiceError:
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
    return DecodedImage(
        rgb=np.asarray(plan.finish(rgb)),
        alpha=None if alpha is None else np.asarray(plan.finish(alpha)),
        source_format=source_format,
    )


# Signatures of picture and document formats refused on purpose, so they get a 415 that
# names them instead of "undecodable" (Pillow is never asked to parse them).
_FOREIGN_SIGNATURES = (
    (b"8BPS", "PSD"),
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
    # An icon directory: zero, its type (1 ICO, 2 CUR), how many images (one or more: a
    # TGA's header may begin with the same four bytes, then a zero).
    if data[:2] == b"\0\0" and data[2:4] in (b"\1\0", b"\2\0") and data[4:6] not in (b"", b"\0\0"):
        return "ICO" if data[2] == 1 else "CUR"
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


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose EXIF (or XMP) orientation asks for, as ImageOps.exif_transpose reads it."""
    # Malformed EXIF is common in the wild; an image we cannot orient is still usable.
    try:
        return _ORIENTATIONS.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        logger.debug("Ignoring unreadable EXIF orientation", exc_info=True)
        return None


@dataclass(frozen=True)
class _Plan:
    """Where a decoded picture goes: upright size, output size, and the box reduction.

    ``factor`` is the integer reduction Pillow's ``resize(..., reducing_gap=2.0)`` would
    apply first; doing it band by band gives the same pixels (a box filter does not reach
    across bands whose heights are multiples of the factor), and ``finish`` then runs
    the rest of that resize on the reduced picture with the same fractional box.
    """

    transpose: Image.Transpose | None
    width: int  # upright, as decoded
    height: int
    size: tuple[int, int]  # the output's (width, height)
    factor: tuple[int, int]

    @classmethod
    def of(cls, image: Image.Image, size: int | None, stored: tuple[int, int]) -> _Plan:
        """``stored``: the picture's sides as stored, which the output's shape keeps (a
        JPEG decoded at a reduced scale has rounded sides, up to 1 px off the ratio)."""
        transpose = _orientation(image)
        (width, height), (stored_width, stored_height) = image.size, stored
        if transpose in _SWAPS_SIDES or transpose in _SWAPS_SIDES_REVERSED:
            width, height = height, width
            stored_width, stored_height = stored_height, stored_width
        output = (
            (width, height)
            if size is None
            else target_dimensions(stored_width, stored_height, size)
        )
        factor = (1, 1)
        if output != (width, height):
            factor = (
                int(width / output[0] / REDUCING_GAP) or 1,
                int(height / output[1] / REDUCING_GAP) or 1,
            )
        return cls(transpose, width, height, output, factor)

    def finish(self, image: Image.Image) -> Image.Image:
        """The (reduced) upright picture or alpha resized to the output size."""
        if self.size == (self.width, self.height):
            return image
        box = (0.0, 0.0, self.width / self.factor[0], self.height / self.factor[1])
        return image.resize(self.size, Image.Resampling.LANCZOS, box=box)


def _to_upright_rgb(image: Image.Image, plan: _Plan) -> tuple[Image.Image, Image.Image | None]:
    """Upright 8-bit sRGB "RGB" (over white) and "L" alpha or None, reduced by plan.factor."""
    deep = image.mode.startswith("I;16") or image.mode in ("I", "F")
    if deep or image.mode == "CMYK":
        # Deep modes become a fresh "L" image, which has no transparency key.
        target = "RGB"
    else:
        # P/L/RGB with a tRNS key, LA, PA, RGBa and La all become RGBA.
        target = "RGBA" if image.has_transparency_data else "RGB"
    icc_profile = image.info.get("icc_profile")
    transform = _icc_transform(icc_profile, "CMYK" if image.mode == "CMYK" else target, target)
    if image.mode == target == "RGB" and plan.transpose is None and transform is None:
        # Nothing to convert (the common case): reduce the decoded picture directly.
        return (image if plan.factor == (1, 1) else image.reduce(plan.factor)), None
    value_range = _deep_range(image) if deep else None
    try:
        return _convert_bands(image, plan, value_range, target, transform)
    except _IccFailed:
        logger.debug("Ignoring an ICC profile that could not be applied", exc_info=True)
        return _convert_bands(image, plan, value_range, target, None)


class _IccFailed(Exception):
    pass


def _convert_bands(
    image: Image.Image,
    plan: _Plan,
    value_range: tuple[float, float] | None,
    target: str,
    transform: ImageCms.ImageCmsTransform | None,
) -> tuple[Image.Image, Image.Image | None]:
    factor_x, factor_y = plan.factor
    reduced_size = (-(-plan.width // factor_x), -(-plan.height // factor_y))
    rgb_out = Image.new("RGB", reduced_size)
    alpha_out = Image.new("L", reduced_size, 255) if target == "RGBA" else None
    translucent = False
    rows = max(factor_y, _BAND_PIXELS // plan.width // factor_y * factor_y)
    for top in range(0, plan.height, rows):
        band = _upright_band(image, plan, top, min(top + rows, plan.height))
        if value_range is not None:
            band = _to_eight_bit(band, value_range)
        if transform is None or band.mode != "CMYK":  # a CMYK transform converts itself
            band = _convert(band, target)
        if transform is not None:
            try:
                band = transform.apply(band)
            except Exception as exc:
                raise _IccFailed from exc
        rgb, alpha = _flatten_alpha(band)
        if plan.factor != (1, 1):
            rgb = rgb.reduce(plan.factor)
            alpha = None if alpha is None else alpha.reduce(plan.factor)
        rgb_out.paste(rgb, (0, top // factor_y))
        if alpha is not None and alpha_out is not None:
            alpha_out.paste(alpha, (0, top // factor_y))
            translucent = True
    return rgb_out, (alpha_out if translucent else None)


def _upright_band(image: Image.Image, plan: _Plan, top: int, bottom: int) -> Image.Image:
    """Rows top..bottom of the upright picture, cut from the stored one and turned."""
    stored_width, stored_height = image.size
    if plan.transpose in _SWAPS_SIDES:
        box = (top, 0, bottom, stored_height)  # upright rows are stored columns
    elif plan.transpose in _SWAPS_SIDES_REVERSED:
        box = (stored_width - bottom, 0, stored_width - top, stored_height)
    elif plan.transpose in _FLIPS_ROWS:
        box = (0, stored_height - bottom, stored_width, stored_height - top)
    else:
        box = (0, top, stored_width, bottom)
    band = image.crop(box)
    return band if plan.transpose is None else band.transpose(plan.transpose)


def _deep_range(image: Image.Image) -> tuple[float, float]:
    """The value range mapped onto 0..255 for 16-bit, 32-bit int and float pictures.

    Pillow's own convert("L") clips these at 255, which turns most 16-bit images white.
    """
    if image.mode.startswith("I;16"):
        return 0, 65535
    width, height = image.size
    rows = max(1, _BAND_PIXELS // width)
    low, high = np.inf, -np.inf
    for top in range(0, height, rows):
        values = _deep_values(image.crop((0, top, width, min(top + rows, height))))
        low, high = min(low, values.min()), max(high, values.max())
    if image.mode == "I":
        low, high = int(low), int(high)
        # Usually 16-bit data widened to 32 bits; stretch only what does not fit.
        if low >= 0 and high <= 65535:
            return 0, 65535
        return low, high
    low, high = float(low), float(high)
    # Float images are mostly 0..1 or 0..255; anything else is stretched to fit.
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    if low >= 0.0 and high <= 255.0:
        return 0.0, 255.0
    return low, high


def _deep_values(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return values


def _to_eight_bit(image: Image.Image, value_range: tuple[float, float]) -> Image.Image:
    """A deep-mode picture (or band of one) as "L", value_range mapped onto 0..255."""
    return Image.fromarray(_scale_to_uint8(_deep_values(image), *value_range))


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map low..high linearly onto 0..255, rounding to nearest."""
    span = max(high - low, 1e-12)
    scaled = (values.astype(np.float64) - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == mode:
        return image
    try:
        return image.convert(mode)
    except ValueError as exc:
        raise UnsupportedFormat(f"Images in colour mode {image.mode} are not supported.") from exc


def _icc_transform(
    icc_profile: bytes | None, input_mode: str, output_mode: str
) -> ImageCms.ImageCmsTransform | None:
    """The transform to sRGB through the embedded ICC profile; None when not needed or failed.

    Best effort: a broken or unusable profile leaves the pixels as they are, which is
    what a browser showing the upload would do too. (Same transform as
    ImageCms.profileToProfile's defaults, built once for all bands.)
    """
    if not icc_profile:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        description = (source.profile.profile_description or "").lower()
        if "srgb" in description:
            return None
        expected_space = "CMYK" if input_mode == "CMYK" else "RGB"
        if source.profile.xcolor_space.strip() != expected_space:
            logger.debug(
                "Ignoring a %s ICC profile on a %s image",
                source.profile.xcolor_space.strip(),
                input_mode,
            )
            return None
        return ImageCms.buildTransform(source, srgb_profile(), input_mode, output_mode)
    except Exception:
        logger.debug("Ignoring an ICC profile that could not be applied", exc_info=True)
        return None


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
