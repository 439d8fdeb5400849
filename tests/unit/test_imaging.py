"""Unit tests for serve_app.imaging; every input is generated here, no files needed."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps
from pydantic import ValidationError

from serve_app.config import MIN_SIDE, SIDE_MULTIPLE, ImageLimits
from serve_app.errors import (
    ImageTooLarge,
    ImageTooSmall,
    ServiceError,
    UndecodableImage,
    UnsupportedFormat,
)
from serve_app.imaging import decode as decode_module
from serve_app.imaging.decode import decode_upload, supported_input_formats
from serve_app.imaging.pixels import (
    MEDIA_TYPES,
    DecodedImage,
    encode_image,
    resize_long_side,
    target_dimensions,
)

LIMITS = ImageLimits()
COLOUR = (200, 40, 60)

try:
    import pillow_heif  # noqa: F401

    HAS_HEIF = True
except ImportError:
    HAS_HEIF = False


# --------------------------------------------------------------------------- helpers


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(mode: str = "RGB", size=(32, 24), colour=COLOUR) -> Image.Image:
    return Image.new(mode, size, colour)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB, absurd sizes)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_rows(pixels: np.ndarray) -> bytes:
    """Filter type 0 (none) before each row of big-endian samples."""
    return b"".join(b"\0" + row.tobytes() for row in pixels)


def decode(data: bytes, limits: ImageLimits = LIMITS) -> DecodedImage:
    return decode_upload(data, limits)


def centre(decoded: DecodedImage) -> np.ndarray:
    return decoded.rgb[decoded.height // 2, decoded.width // 2].astype(int)


def assert_close(actual, expected, tolerance: int = 0) -> None:
    difference = np.abs(np.asarray(actual, dtype=int) - np.asarray(expected, dtype=int))
    assert difference.max() <= tolerance, f"{actual} != {expected} (±{tolerance})"


def assert_decoded_shape(decoded: DecodedImage, width: int, height: int) -> None:
    assert decoded.rgb.shape == (height, width, 3)
    assert decoded.rgb.dtype == np.uint8
    assert decoded.rgb.flags.c_contiguous
    assert (decoded.width, decoded.height) == (width, height)


# --------------------------------------------------------------------------- formats


def _mpo() -> bytes:
    return save(solid(), "MPO", save_all=True, append_images=[solid(colour=(0, 0, 0))])


ALLOWED_INPUTS = {
    "JPEG": (lambda: save(solid(), "JPEG", quality=95), 6),
    "PNG": (lambda: save(solid(), "PNG"), 0),
    "WEBP": (lambda: save(solid(), "WEBP", quality=95), 6),
    "BMP": (lambda: save(solid(), "BMP"), 0),
    "GIF": (lambda: save(solid(), "GIF"), 0),
    "TIFF": (lambda: save(solid(), "TIFF"), 0),
    "MPO": (_mpo, 6),
    "AVIF": (lambda: save(solid(), "AVIF", quality=95), 6),
    "HEIF": (lambda: save(solid(), "HEIF", quality=95), 6),
}


@pytest.mark.parametrize("fmt", ALLOWED_INPUTS)
def test_each_allowed_format_decodes(fmt: str) -> None:
    if fmt not in supported_input_formats():
        pytest.skip(f"{fmt} support is not installed")
    make, tolerance = ALLOWED_INPUTS[fmt]
    decoded = decode(make())
    assert decoded.source_format == fmt
    assert_decoded_shape(decoded, 32, 24)
    assert decoded.alpha is None
    assert_close(centre(decoded), COLOUR, tolerance)


def test_supported_input_formats() -> None:
    formats = supported_input_formats()
    assert {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"} <= set(formats)
    assert ("HEIF" in formats) == HAS_HEIF
    assert supported_input_formats() is formats  # registration happens once


def test_synthetic_photo_decodes_and_resizes() -> None:
    """A 1280×850 photo-like JPEG, like the project's sample photos, to 256 px."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 1280, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 20, (850, 1280, 3)).astype(np.float32)
    pixels = np.clip(ramp + noise, 0, 255).astype(np.uint8)
    data = save(Image.fromarray(pixels), "JPEG", quality=90)
    decoded = decode(data)
    assert_decoded_shape(decoded, 1280, 850)
    resized = resize_long_side(decoded, 256)
    assert_decoded_shape(resized, 256, 172)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (UndecodableImage, "undecodable_image", 400),
        (ImageTooLarge, "image_too_large", 413),
        (UnsupportedFormat, "unsupported_format", 415),
        (ImageTooSmall, "image_too_small", 400),
    ],
)
def test_error_classes_carry_code_and_status(error: type[ServiceError], code: str, status: int):
    exc = error("something is wrong")
    assert isinstance(exc, ServiceError)
    assert (exc.code, exc.status) == (code, status)
    assert exc.message == str(exc) == "something is wrong"


def _truncated_jpeg() -> bytes:
    rng = np.random.default_rng(2)
    data = save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)), "JPEG")
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    rng = np.random.default_rng(3)
    data = save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)), "PNG")
    return data[: len(data) // 2]


def _broken_png_crc() -> bytes:
    data = bytearray(save(solid(), "PNG"))
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


UNDECODABLE = {
    "empty": b"",
    "random bytes named .jpg": np.random.default_rng(0).bytes(4096),
    "text": b"hello, this is not an image\n" * 10,
    "truncated jpeg": _truncated_jpeg(),
    "truncated png": _truncated_png(),
    "png with a broken crc": _broken_png_crc(),
    "jpeg header only": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
}


@pytest.mark.parametrize("name", UNDECODABLE)
def test_undecodable_uploads(name: str) -> None:
    with pytest.raises(UndecodableImage) as caught:
        decode(UNDECODABLE[name])
    assert caught.value.status == 400
    assert caught.value.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _psd() -> bytes:
    """A minimal 4×4 RGB Photoshop file: header, empty sections, raw channel data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers
    return header + sections + struct.pack(">H", 0) + b"\x80" * 48


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"


def _cursor() -> bytes:
    """An icon directory of type 2 (a cursor), as Pillow writes none."""
    icon = bytearray(save(solid("RGBA", (32, 32)), "ICO"))
    icon[2] = 2
    return bytes(icon)


UNSUPPORTED = {
    "ICO": lambda: save(solid("RGBA", (32, 32)), "ICO"),
    "CUR": _cursor,
    "PSD": _psd,
    "EPS": lambda: EPS,
    "PPM": lambda: save(solid(), "PPM"),
    "SVG": lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "PDF": lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
}


@pytest.mark.parametrize("fmt", UNSUPPORTED)
def test_other_formats_are_unsupported_and_never_parsed(fmt: str) -> None:
    with pytest.raises(UnsupportedFormat) as caught:
        decode(UNSUPPORTED[fmt]())
    assert caught.value.status == 415
    message = caught.value.message
    assert fmt in message
    assert all(allowed in message for allowed in supported_input_formats())


def test_a_tga_is_not_named_a_cursor() -> None:
    """An uncompressed TGA's header begins as a cursor's (0 0 2 0), then says no image."""
    with pytest.raises(ServiceError) as caught:
        decode(save(solid(), "TGA"))
    assert "CUR" not in caught.value.message


def test_too_many_bytes_is_checked_first() -> None:
    data = save(solid(), "PNG")
    with pytest.raises(ImageTooLarge) as caught:
        decode(data, ImageLimits(max_bytes=len(data) - 1))
    assert caught.value.status == 413
    assert str(len(data)) in caught.value.message
    assert str(len(data) - 1) in caught.value.message
    with pytest.raises(ImageTooLarge):  # even garbage is refused on size alone
        decode(b"x" * 101, ImageLimits(max_bytes=100))


def _claimed_size_png(width: int, height: int) -> bytes:
    """A few-KB 1-bit PNG whose header claims width×height: only the start of its data."""
    rows = (b"\0" + bytes((width + 7) // 8)) * 8
    return raw_png(width, height, 1, 0, rows)


def test_pixel_bomb_is_refused_from_the_header_fast() -> None:
    data = _claimed_size_png(40_000, 40_000)
    assert len(data) < 8 * 1024
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as caught:
        decode(data)
    assert time.perf_counter() - started < 0.5
    assert caught.value.status == 413
    assert "1600000000" in caught.value.message


def test_pixel_limit_message_names_limit_and_actual() -> None:
    # 60 Mpx: above our default limit, below Pillow's own warning threshold.
    with pytest.raises(ImageTooLarge) as caught:
        decode(_claimed_size_png(10_000, 6_000))
    assert "60000000" in caught.value.message
    assert "50000000" in caught.value.message
    # A real, tiny image above a tiny limit: refused before decoding, too.
    with pytest.raises(ImageTooLarge):
        decode(save(solid(size=(10, 10)), "PNG"), ImageLimits(max_pixels=99))


@pytest.mark.parametrize(
    "size",
    [(10_000, 10_000), (40_000, 40_000)],
    ids=["pillow-warning", "pillow-error"],
)
def test_pillow_decompression_bomb_checks_become_too_large(size: tuple[int, int]) -> None:
    """With max_pixels above Pillow's ceiling, Pillow's warning/error still answer 413."""
    filters_before = list(warnings.filters)
    with pytest.raises(ImageTooLarge) as caught:
        decode(_claimed_size_png(*size), ImageLimits(max_pixels=10**12))
    assert caught.value.message == (
        f"The image is {size[0] * size[1]} pixels; the limit is 89478485 pixels."
    )
    assert warnings.filters == filters_before  # the local filter did not leak
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # and Pillow's global is untouched


# --------------------------------------------------------------------------- colour modes


def test_cmyk_jpeg_with_adobe_inverted_data() -> None:
    data = save(solid("CMYK", colour=(255, 0, 0, 0)), "JPEG", quality=95)
    assert b"Adobe" in data  # libjpeg stores CMYK inverted, flagged by the Adobe marker
    assert_close(centre(decode(data)), (0, 255, 255), 3)


def test_cmyk_tiff() -> None:
    decoded = decode(save(solid("CMYK", colour=(0, 255, 0, 0)), "TIFF"))
    assert_close(centre(decoded), (255, 0, 255))


def test_ycbcr_tiff() -> None:
    data = save(solid().convert("YCbCr"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert_close(centre(decode(data)), COLOUR, 3)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("P", None, COLOUR),
    ],
)
def test_opaque_modes(mode: str, colour, expected) -> None:
    image = solid().quantize() if mode == "P" else solid(mode, colour=colour)
    data = save(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    decoded = decode(data)
    assert decoded.alpha is None
    assert_close(centre(decoded), expected)


def _gray16_ramp() -> np.ndarray:
    return np.arange(65536, dtype=np.uint32).reshape(256, 256)


def _assert_full_8bit_ramp(decoded: DecodedImage) -> None:
    gray = decoded.rgb[..., 0].ravel().astype(int)
    assert np.array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])
    assert gray.min() == 0 and gray.max() == 255
    assert len(np.unique(gray)) == 256  # every level reached: scaled, not clipped
    assert np.all(np.diff(gray) >= 0)  # and in order
    assert_close(gray[32768], 128)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I", "TIFF")],
)
def test_16bit_gray_is_scaled_not_clipped(mode: str, fmt: str) -> None:
    ramp = _gray16_ramp()
    if mode == "I":
        image = Image.fromarray(ramp.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (256, 256), ramp.astype(dtype).tobytes())
    data = save(image, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    _assert_full_8bit_ramp(decode(data))


def test_32bit_int_outside_16bit_range_is_stretched() -> None:
    values = np.linspace(-1000, 100_000, 64 * 64).reshape(64, 64).astype(np.int32)
    gray = decode(save(Image.fromarray(values), "TIFF")).rgb[..., 0]
    assert gray.min() == 0 and gray.max() == 255


@pytest.mark.parametrize("high", [1.0, 255.0], ids=["unit", "byte"])
def test_float_tiff(high: float) -> None:
    values = np.linspace(0, high, 256 * 4, dtype=np.float32).reshape(4, 256)
    data = save(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    gray = decode(data).rgb[..., 0].ravel().astype(int)
    assert gray[0] == 0 and gray[-1] == 255
    assert np.all(np.diff(gray) >= 0)


def test_16bit_rgb_png() -> None:
    pixels = np.zeros((2, 3, 3), dtype=">u2")
    pixels[..., 0] = [0, 32896, 65535]  # 32896 = 128 × 257
    pixels[..., 1] = 65535
    decoded = decode(raw_png(3, 2, 16, 2, png_rows(pixels)))
    assert decoded.alpha is None
    assert_close(decoded.rgb[0], [(0, 255, 0), (128, 255, 0), (255, 255, 0)])


def test_16bit_rgba_png_keeps_alpha() -> None:
    pixels = np.zeros((2, 2, 4), dtype=">u2")
    pixels[..., 2] = 65535
    pixels[..., 3] = [[65535, 0], [32896, 65535]]
    decoded = decode(raw_png(2, 2, 16, 6, png_rows(pixels)))
    assert decoded.alpha is not None
    assert_close(decoded.alpha, [[255, 0], [128, 255]])
    assert_close(decoded.rgb[0, 0], (0, 0, 255))
    assert_close(decoded.rgb[0, 1], (255, 255, 255))  # fully transparent: white


def test_rgba_alpha_is_kept_and_rgb_composited_over_white() -> None:
    pixels = np.zeros((2, 3, 4), np.uint8)  # black everywhere
    pixels[..., 3] = [[255, 128, 0], [255, 255, 255]]
    decoded = decode(save(Image.fromarray(pixels), "PNG"))
    assert decoded.alpha is not None
    assert np.array_equal(decoded.alpha, pixels[..., 3])
    assert decoded.alpha.shape == (2, 3) and decoded.alpha.dtype == np.uint8
    assert_close(decoded.rgb[0, 0], (0, 0, 0))
    assert_close(decoded.rgb[0, 1], (127, 127, 127), 1)
    assert_close(decoded.rgb[0, 2], (255, 255, 255))


def test_fully_opaque_rgba_has_no_alpha() -> None:
    decoded = decode(save(solid("RGBA", colour=(*COLOUR, 255)), "PNG"))
    assert decoded.alpha is None
    assert_close(centre(decoded), COLOUR)


def test_la_png_keeps_alpha() -> None:
    decoded = decode(save(solid("LA", colour=(0, 0)), "PNG"))
    assert decoded.alpha is not None and decoded.alpha.max() == 0
    assert_close(centre(decoded), (255, 255, 255))


def test_palette_png_with_trns() -> None:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((3, 1), 1)
    data = save(image, "PNG", transparency=0)  # palette index 0 is transparent
    assert b"tRNS" in data
    decoded = decode(data)
    assert decoded.alpha is not None
    assert decoded.alpha[0, 0] == 0 and decoded.alpha[1, 3] == 255
    assert_close(decoded.rgb[0, 0], (255, 255, 255))
    assert_close(decoded.rgb[1, 3], (0, 0, 255))


def test_rgb_png_with_colour_key_transparency() -> None:
    image = solid(size=(4, 4))
    image.putpixel((0, 0), (1, 2, 3))
    decoded = decode(save(image, "PNG", transparency=(1, 2, 3)))
    assert decoded.alpha is not None
    assert decoded.alpha[0, 0] == 0 and decoded.alpha[1, 1] == 255
    assert_close(decoded.rgb[1, 1], COLOUR)


def test_gif_transparency() -> None:
    image = solid(size=(4, 4)).quantize()
    data = save(image, "GIF", transparency=image.getpixel((0, 0)))
    decoded = decode(data)
    assert decoded.alpha is not None and decoded.alpha.max() == 0
    assert_close(centre(decoded), (255, 255, 255))


# --------------------------------------------------------------------------- ICC profiles


def _swapped_primaries_profile() -> bytes:
    """sRGB with its red and blue primaries swapped, described as something else."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack_from(">I", data, 128)
    entries = {bytes(data[132 + 12 * i : 136 + 12 * i]): 136 + 12 * i for i in range(count)}
    for first, second in ((b"rXYZ", b"bXYZ"), (b"desc", b"cprt")):
        a, b = entries[first], entries[second]
        data[a : a + 8], data[b : b + 8] = data[b : b + 8], data[a : a + 8]
    data[84:100] = bytes(16)  # the profile ID (an MD5) no longer applies
    return bytes(data)


def test_non_srgb_icc_profile_is_converted_to_srgb() -> None:
    profile = _swapped_primaries_profile()
    description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    assert "srgb" not in description.lower()
    red = solid(colour=(255, 0, 0))
    for fmt in ("PNG", "JPEG"):
        decoded = decode(save(red, fmt, icc_profile=profile, quality=95))
        assert_close(centre(decoded), (0, 0, 255), 4)  # "red" in that space is sRGB blue


def test_icc_profile_on_rgba_keeps_alpha() -> None:
    image = solid("RGBA", colour=(255, 0, 0, 100))
    decoded = decode(save(image, "PNG", icc_profile=_swapped_primaries_profile()))
    assert decoded.alpha is not None and decoded.alpha[0, 0] == 100


@pytest.mark.parametrize(
    ("profile", "logged"),
    [
        (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), False),
        (ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes(), True),
        (b"definitely not an ICC profile" * 10, True),
    ],
    ids=["srgb", "wrong-colour-space", "garbage"],
)
def test_srgb_or_unusable_icc_profiles_leave_pixels_alone(
    profile: bytes, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="serve_app.imaging.decode")
    decoded = decode(save(solid(), "PNG", icc_profile=profile))
    assert_close(centre(decoded), COLOUR)
    icc_records = [r for r in caplog.records if "ICC" in r.getMessage()]
    assert bool(icc_records) == logged
    assert all(r.levelname == "DEBUG" for r in icc_records)


# --------------------------------------------------------------------------- frames, EXIF


def test_animated_gif_takes_the_first_frame() -> None:
    frames = [solid(colour=c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_close(centre(decode(data)), (255, 0, 0))


def test_multipage_tiff_takes_the_first_page() -> None:
    pages = [solid(colour=(0, 255, 0)), solid(colour=(255, 0, 0), size=(64, 64))]
    data = save(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    decoded = decode(data)
    assert_decoded_shape(decoded, 32, 24)
    assert_close(centre(decoded), (0, 255, 0))


def test_exif_orientation_6_is_applied() -> None:
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[:8, :8] = (255, 0, 0)  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = save(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    decoded = decode(data)
    assert_decoded_shape(decoded, 24, 40)  # 40×24 stored, 24×40 upright
    assert_close(decoded.rgb[3, 20], (255, 0, 0), 8)  # now the top-right corner
    assert_close(decoded.rgb[3, 3], (0, 0, 255), 8)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_is_ignored() -> None:
    data = save(solid(), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff", quality=95)
    assert_close(centre(decode(data)), COLOUR, 6)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("width", "height", "size", "expected"),
    [
        (1280, 850, 256, (256, 172)),  # 170 is halfway between 168 and 172: rounds up
        (850, 1280, 256, (172, 256)),
        (1280, 853, 512, (512, 340)),
        (500, 500, 256, (256, 256)),
        (1000, 999, 256, (256, 256)),
        (100, 50, 512, (512, 256)),  # small images are scaled up to size
        (1280, 850, 258, (256, 172)),  # the long side is rounded down, never above size
        (64, 4000, 1024, (16, 1024)),  # exactly the minimum
    ],
)
def test_target_dimensions(width: int, height: int, size: int, expected) -> None:
    assert target_dimensions(width, height, size) == expected


@pytest.mark.parametrize("size", [16, 17, 100, 255, 256, 511, 1024])
@pytest.mark.parametrize(("width", "height"), [(1280, 850), (850, 1280), (333, 777), (7, 9)])
def test_target_dimensions_invariants(width: int, height: int, size: int) -> None:
    try:
        new_width, new_height = target_dimensions(width, height, size)
    except ImageTooSmall:
        return
    assert new_width % SIDE_MULTIPLE == 0 and new_height % SIDE_MULTIPLE == 0
    assert max(new_width, new_height) <= size
    assert min(new_width, new_height) >= MIN_SIDE
    assert (new_width >= new_height) == (width >= height)
    assert abs(new_width / new_height - width / height) < 0.25 * width / height


@pytest.mark.parametrize(
    ("width", "height", "size", "short_side"),
    [(1000, 50, 256, 12), (50, 1000, 256, 12), (100, 100, 12, 12), (10_000, 10, 1024, 0)],
)
def test_target_dimensions_too_small(width: int, height: int, size: int, short_side: int):
    with pytest.raises(ImageTooSmall) as caught:
        target_dimensions(width, height, size)
    assert caught.value.status == 400
    assert f"{short_side} px" in caught.value.message
    assert f"{MIN_SIDE} px" in caught.value.message


@pytest.mark.parametrize("arguments", [(0, 10, 256), (10, -1, 256), (10, 10, 0)])
def test_target_dimensions_rejects_non_positive(arguments) -> None:
    with pytest.raises(ValueError):
        target_dimensions(*arguments)


def test_resize_long_side_with_alpha() -> None:
    pixels = np.zeros((100, 300, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[:, 150:, 3] = 255
    decoded = decode(save(Image.fromarray(pixels), "PNG"))
    resized = resize_long_side(decoded, 64)
    assert_decoded_shape(resized, 64, 20)
    assert resized.alpha is not None and resized.alpha.shape == (20, 64)
    assert resized.alpha[10, 2] == 0 and resized.alpha[10, 60] == 255
    assert resized.source_format == "PNG"
    assert_close(resized.rgb[10, 60], (255, 0, 0))


def test_resize_long_side_returns_the_same_object_when_nothing_changes() -> None:
    decoded = decode(save(solid(size=(64, 32)), "PNG"))
    assert resize_long_side(decoded, 64) is decoded
    assert resize_long_side(decoded, 67) is decoded  # 67 rounds down to 64
    upscaled = resize_long_side(decoded, 128)
    assert_decoded_shape(upscaled, 128, 64)
    assert_close(centre(upscaled), COLOUR)


def test_resize_long_side_too_small() -> None:
    decoded = decode(save(solid(size=(400, 10)), "PNG"))
    with pytest.raises(ImageTooSmall):
        resize_long_side(decoded, 256)


def test_decoded_image_validates_its_arrays() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    assert DecodedImage(rgb, np.zeros((4, 6), np.uint8), "PNG").width == 6
    with pytest.raises(ValueError):
        DecodedImage(rgb.astype(np.float32), None, "PNG")
    with pytest.raises(ValueError):
        DecodedImage(rgb, np.zeros((6, 4), np.uint8), "PNG")
    with pytest.raises(ValueError):
        DecodedImage(rgb[:, ::2], None, "PNG")  # not C-contiguous


def test_image_limits_validation() -> None:
    assert ImageLimits().model_dump() == {
        "max_bytes": 20 * 1024 * 1024,
        "max_pixels": 50_000_000,
        "max_size": 1024,
        "max_sync_size": 1024,
        "upload_idle_timeout_s": 15.0,
    }
    bad_limits = (
        {"max_bytes": 0},
        {"max_pixels": -1},
        {"max_size": 8},
        {"max_sync_size": 8},
        {"upload_idle_timeout_s": 0},
        {"max_bites": 5},
    )
    for bad in bad_limits:
        with pytest.raises(ValidationError):
            ImageLimits(**bad)
    with pytest.raises(ValidationError):
        LIMITS.max_bytes = 1  # frozen
    assert ImageLimits.model_fields["max_pixels"].description


# --------------------------------------------------------------------------- encoding


def _rgba_sample() -> tuple[np.ndarray, np.ndarray]:
    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[...] = COLOUR
    alpha = np.full((24, 40), 255, np.uint8)
    alpha[:, :20] = 0
    return rgb, alpha


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("with_alpha", [False, True], ids=["opaque", "alpha"])
def test_encode_image_round_trips(fmt: str, with_alpha: bool) -> None:
    rgb, alpha = _rgba_sample()
    data = encode_image(rgb, alpha if with_alpha else None, fmt)
    image = Image.open(io.BytesIO(data))
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert image.size == (40, 24)
    keeps_alpha = with_alpha and fmt != "jpeg"
    assert image.mode == ("RGBA" if keeps_alpha else "RGB")
    pixels = np.asarray(image)
    assert_close(pixels[12, 30, :3], COLOUR, 0 if fmt == "png" else 6)
    if keeps_alpha:
        assert pixels[12, 5, 3] == 0 and pixels[12, 30, 3] == 255


def test_media_types() -> None:
    assert MEDIA_TYPES == {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_encode_quality_changes_the_size(fmt: str) -> None:
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (64, 64, 3), np.uint8)
    small = encode_image(rgb, None, fmt, quality=10)
    default = encode_image(rgb, None, fmt)
    assert len(small) < len(default) < len(encode_image(rgb, None, fmt, quality=100))
    assert encode_image(rgb, None, fmt, quality=90) == default


def test_png_ignores_quality() -> None:
    rgb, _ = _rgba_sample()
    assert encode_image(rgb, None, "png", quality=5) == encode_image(rgb, None, "png")


@pytest.mark.parametrize(
    ("fmt", "quality"),
    [("gif", None), ("JPEG", None), ("jpeg", 0), ("jpeg", 101), ("webp", True), ("png", 5.0)],
)
def test_encode_image_rejects_bad_arguments(fmt: str, quality) -> None:
    rgb, _ = _rgba_sample()
    with pytest.raises(ValueError):
        encode_image(rgb, None, fmt, quality)


def test_encode_image_rejects_bad_arrays() -> None:
    rgb, alpha = _rgba_sample()
    with pytest.raises(ValueError):
        encode_image(rgb[..., :2], None, "png")
    with pytest.raises(ValueError):
        encode_image(rgb, alpha[:10], "png")


METADATA_MARKERS = [b"Exif", b"eXIf", b"iCCP", b"ICC_PROFILE", b"ICCP", b"tEXt", b"iTXt"]
METADATA_MARKERS += [b"zTXt", b"XMP", b"xmp", b"secret-camera"]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encoded_output_carries_no_metadata(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "secret-camera"  # Make
    exif[0x0112] = 1
    icc = _swapped_primaries_profile()
    upload = save(solid("RGBA", colour=(*COLOUR, 128)), "PNG", exif=exif, icc_profile=icc)
    assert b"secret-camera" in upload and b"iCCP" in upload
    decoded = decode(upload)
    data = encode_image(decoded.rgb, decoded.alpha, fmt)
    assert not [marker for marker in METADATA_MARKERS if marker in data]
    image = Image.open(io.BytesIO(data))
    assert not image.getexif()
    assert "icc_profile" not in image.info and "exif" not in image.info
    if fmt == "png":
        assert not image.text


def test_module_import_has_no_side_effects() -> None:
    """Pillow's globals are as Pillow ships them, even after decoding bad input."""
    with pytest.raises(UndecodableImage):
        decode(_truncated_png())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    assert decode_module.logger.name == "serve_app.imaging.decode"


def test_import_registers_no_plugin_and_changes_no_global() -> None:
    """Importing the module alone leaves Pillow as it was (checked in a fresh process)."""
    script = (
        "from PIL import Image, ImageFile\n"
        "before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, set(Image.OPEN))\n"
        "import serve_app.imaging\n"
        "after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, set(Image.OPEN))\n"
        "assert before == after, (before, after)\n"
        "assert 'HEIF' not in Image.OPEN\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- draft decoding


def _smooth_photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    pixels += 20 * np.sin(x / 7)[..., None] * np.cos(y / 11)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("size", [128, 256])
def test_jpeg_draft_decoding_keeps_size_and_detail(size: int) -> None:
    data = save(_smooth_photo(1600, 1064), "JPEG", quality=92)
    drafted = decode_module.decode_resized(data, LIMITS, size)
    full = resize_long_side(decode(data), size)
    assert drafted.rgb.shape == full.rgb.shape
    assert max(drafted.width, drafted.height) == size
    assert _psnr(drafted.rgb, full.rgb) > 30


@pytest.mark.parametrize(("width", "height", "exif_rotation"), [(207, 1063, 1), (1063, 207, 6)])
def test_a_drafted_jpeg_keeps_the_stored_picture_s_shape(width, height, exif_rotation) -> None:
    """Decoded at a quarter scale its sides round up (52×266 of 207×1063), which moved the
    output's shorter side by a multiple of 4 for about 1% of sizes: the shape follows the
    stored picture, as the same picture as a PNG."""
    exif = Image.Exif()
    exif[0x0112] = exif_rotation
    photo = _smooth_photo(width, height)
    jpeg = decode_module.decode_resized(save(photo, "JPEG", exif=exif), LIMITS, 256)
    png = decode_module.decode_resized(save(photo, "PNG"), LIMITS, 256)
    assert (jpeg.width, jpeg.height) == (48, 256)  # 6: the wide picture stands upright
    assert exif_rotation != 1 or (png.width, png.height) == (48, 256)


def test_too_small_names_the_stored_picture_s_sides_not_the_draft_s() -> None:
    with pytest.raises(ImageTooSmall, match="A 160×107 image"):
        decode_module.decode_resized(save(_smooth_photo(160, 107), "JPEG"), LIMITS, 16)


def test_draft_leaves_at_least_twice_the_target_before_resizing() -> None:
    data = save(_smooth_photo(1600, 1064), "JPEG", quality=92)
    decoded = decode_upload(data, LIMITS, size_hint=200)
    assert max(decoded.width, decoded.height) >= 400  # scaled by DCT, not below 2x
    assert max(decoded.width, decoded.height) < 1600  # but scaled


def test_draft_with_exif_rotation_stays_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(_smooth_photo(1600, 1064), "JPEG", exif=exif, quality=92)
    decoded = decode_module.decode_resized(data, LIMITS, 256)
    assert (decoded.width, decoded.height) == (172, 256)


def test_size_hint_does_not_touch_other_formats() -> None:
    data = save(_smooth_photo(800, 600), "PNG")
    assert decode_upload(data, LIMITS, size_hint=100).width == 800


# --------------------------------------------------------------------------- banded decoding


def _textured(width: int, height: int, seed: int = 7) -> np.ndarray:
    """Photo-like RGB with fine detail, so any shift or misplaced band changes pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    pixels += 30 * np.sin(x / 5)[..., None] * np.cos(y / 3)[..., None]
    pixels += rng.normal(0, 8, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _oriented(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# 403×297: odd sides, so the box reduction (factors 6, 3 and 2 at the sizes below) has
# partial blocks on the right and bottom edges.
_W, _H = 403, 297
_RGB = _textured(_W, _H)
_ALPHA = np.tile(np.linspace(0, 255, _W).astype(np.uint8), (_H, 1))
_ALPHA[: _H // 3] = 255  # whole bands that are opaque, next to translucent ones
_RGBA = Image.fromarray(np.dstack([_RGB, _ALPHA]))
_IMAGE = Image.fromarray(_RGB)
_GRAY16 = (_RGB[..., 0].astype(np.uint32) * 257 + _RGB[..., 1] % 7).astype(">u2")
_FLOATS = _RGB[..., 2].astype(np.float32) * 4 - 100
_FLOATS[3, 3], _FLOATS[4, 4] = np.nan, np.inf

BANDED_CASES = {
    "png rgb": lambda: save(_IMAGE, "PNG"),
    "png rgba": lambda: save(_RGBA, "PNG"),
    "png la": lambda: save(_RGBA.convert("LA"), "PNG"),
    "png palette with trns": lambda: save(_IMAGE.quantize(100), "PNG", transparency=3),
    "png rgb colour key": lambda: save(_IMAGE, "PNG", transparency=tuple(map(int, _RGB[5, 5]))),
    "png 16-bit gray": lambda: raw_png(_W, _H, 16, 0, png_rows(_GRAY16)),
    "png icc": lambda: save(_IMAGE, "PNG", icc_profile=_swapped_primaries_profile()),
    "png rgba icc": lambda: save(_RGBA, "PNG", icc_profile=_swapped_primaries_profile()),
    "tiff 32-bit int": lambda: save(Image.fromarray(_GRAY16.astype(np.int32) * 3 - 7), "TIFF"),
    "tiff float": lambda: save(Image.fromarray(_FLOATS), "TIFF"),
    "tiff cmyk": lambda: save(_IMAGE.convert("CMYK"), "TIFF"),
    "tiff ycbcr": lambda: save(_IMAGE.convert("YCbCr"), "TIFF"),
    "jpeg cmyk": lambda: save(_IMAGE.convert("CMYK"), "JPEG", quality=90),
    "gif with transparency": lambda: save(_IMAGE.quantize(64), "GIF", transparency=2),
    "webp rgba": lambda: save(_RGBA, "WEBP", quality=90),
    "jpeg rotated": lambda: save(_IMAGE, "JPEG", quality=90, exif=_oriented(6)),
    "png rgba transversed": lambda: save(_RGBA, "PNG", exif=_oriented(7)),
}


@pytest.mark.parametrize("name", BANDED_CASES)
def test_banded_decode_matches_the_whole_picture_decode(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decode_resized converts and box-reduces a few rows at a time; the pixels must be
    exactly those of converting the whole picture and then resizing it with Pillow."""
    data = BANDED_CASES[name]()
    for size in (32, 64, 100):
        monkeypatch.setattr(decode_module, "_BAND_PIXELS", 10**12)  # one band: the whole picture
        whole = resize_long_side(decode_upload(data, LIMITS, size_hint=size), size)
        # Bands of 5 rows (7 when turned): a multiple of no reduction factor here, so
        # rounding them to one is what keeps box blocks from straddling two bands.
        monkeypatch.setattr(decode_module, "_BAND_PIXELS", 2100)
        banded = decode_module.decode_resized(data, LIMITS, size)
        assert banded.rgb.shape == whole.rgb.shape
        assert np.array_equal(banded.rgb, whole.rgb), size
        assert (banded.alpha is None) == (whole.alpha is None)
        if whole.alpha is not None:
            assert np.array_equal(banded.alpha, whole.alpha), size


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(
    orientation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decode_module, "_BAND_PIXELS", 2100)
    for image in (_IMAGE, _RGBA):
        data = save(image, "PNG", exif=_oriented(orientation))
        expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        decoded = decode(data)
        assert (decoded.width, decoded.height) == expected.size
        if image.mode == "RGB":
            assert np.array_equal(decoded.rgb, np.asarray(expected))
        else:
            assert np.array_equal(decoded.alpha, np.asarray(expected.getchannel("A")))


def test_opaque_bands_next_to_translucent_ones_keep_their_colour() -> None:
    """Bands that are fully opaque are not composited, the others are; together one picture."""
    decoded = decode_module.decode_resized(save(_RGBA, "PNG"), LIMITS, 100)
    assert decoded.alpha is not None
    assert decoded.alpha[0].min() == 255  # the opaque top third
    assert decoded.alpha[-1, 0] < 10  # fully transparent bottom-left: white
    assert_close(decoded.rgb[-1, 0], (255, 255, 255), 3)


def test_decode_resized_too_small() -> None:
    data = save(solid("RGBA", size=(4000, 20), colour=(1, 2, 3, 4)), "PNG")
    with pytest.raises(ImageTooSmall):
        decode_module.decode_resized(data, LIMITS, 256)
