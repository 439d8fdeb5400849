"""The stylize options: every control a caller can set, its default and its bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serve_app.config import MIN_SIDE, OUTPUT_FORMATS, AppConfig, OutputFormat
from serve_app.errors import (
    InvalidBackground,
    InvalidFormat,
    InvalidNoFace,
    InvalidPortrait,
    InvalidQuality,
    InvalidSize,
    InvalidStrength,
    InvalidVideoOptions,
    UnknownStyle,
    UseJobs,
)

STRENGTH_DECIMALS = 3


PortraitMode = Literal["off", "crop", "paste"]


NoFaceMode = Literal["error", "whole"]


PORTRAIT_MODES: tuple[PortraitMode, ...] = ("off", "crop", "paste")


NO_FACE_MODES: tuple[NoFaceMode, ...] = ("error", "whole")


OUTPUT_CONTAINERS = ("same", "mp4", "webm", "matroska", "mov")


MAX_FPS = 240.0


BACKGROUND_PHOTO = "photo"  # `background`: leave the picture around the faces as it is


@dataclass(frozen=True)
class StylizeOptions:
    style: str
    size: int
    format: OutputFormat
    quality: int | None  # None for png
    strength: float = 1.0  # 0: the photo, 1: the style's full effect
    preserve_color: bool = False  # keep the photo's colours, take the style's lightness
    portrait: PortraitMode = "off"  # crop: the largest face; paste: every face, pasted back
    background: str = BACKGROUND_PHOTO  # paste: "photo", or the style of the rest
    no_face: NoFaceMode = "error"  # portrait found no face: 422, or the whole picture
    container: str = "same"  # videos: the output container ("same": the input's family)
    max_fps: float | None = None  # videos: at most this many frames a second


def resolve_options(
    config: AppConfig,
    style: str | None = None,
    size: int | None = None,
    fmt: str | None = None,
    quality: int | None = None,
    strength: float | None = None,
    preserve_color: bool | None = None,
    portrait: str | None = None,
    background: str | None = None,
    no_face: str | None = None,
    container: str | None = None,
    max_fps: float | None = None,
    *,
    synchronous: bool = True,
) -> StylizeOptions:
    """Fill defaults and check every option against the config; 422 on anything wrong.

    ``synchronous``: the caller waits for the picture, so sizes past
    ``limits.max_sync_size`` are refused (they are made as jobs).
    """
    style = style or config.default_style_name
    if config.style(style) is None:
        names = [s.name for s in config.styles]
        raise UnknownStyle(f"unknown style {style!r}; served: {names}")
    size = config.default_size if size is None else size
    if not MIN_SIDE <= size <= config.limits.max_size:
        raise InvalidSize(f"size must be {MIN_SIDE}..{config.limits.max_size} px, got {size}")
    if synchronous and size > config.limits.max_sync_size:
        raise UseJobs(
            f"size {size} is above the {config.limits.max_sync_size} px made while the caller "
            "waits; submit it to POST /v1/jobs and fetch the result when it is done"
        )
    fmt = (fmt or config.default_format).lower()
    if fmt not in OUTPUT_FORMATS:
        raise InvalidFormat(f"format must be one of {sorted(OUTPUT_FORMATS)}, got {fmt!r}")
    if quality is not None and not 1 <= quality <= 100:
        raise InvalidQuality(f"quality must be 1..100, got {quality}")
    if fmt == "png":
        quality = None
    elif quality is None:
        quality = config.default_quality
    strength = 1.0 if strength is None else strength
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise InvalidStrength(f"strength must be 0..1, got {strength}")
    portrait = (portrait or "off").lower()
    if portrait not in PORTRAIT_MODES:
        raise InvalidPortrait(f"portrait must be one of {list(PORTRAIT_MODES)}, got {portrait!r}")
    background = background or BACKGROUND_PHOTO
    if background != BACKGROUND_PHOTO and config.style(background) is None:
        names = [BACKGROUND_PHOTO, *(s.name for s in config.styles)]
        raise InvalidBackground(f"background must be one of {names}, got {background!r}")
    no_face = (no_face or "error").lower()
    if no_face not in NO_FACE_MODES:
        raise InvalidNoFace(f"no_face must be one of {list(NO_FACE_MODES)}, got {no_face!r}")
    # Options that change nothing in a mode take their default there, so requests that
    # differ only in them share one cache entry.
    if portrait != "paste":
        background = BACKGROUND_PHOTO
    if portrait == "off":
        no_face = "error"
    container = (container or "same").lower()
    if container not in OUTPUT_CONTAINERS:
        raise InvalidVideoOptions(
            f"container must be one of {list(OUTPUT_CONTAINERS)}, got {container!r}"
        )
    if max_fps is not None and not 0 < max_fps <= MAX_FPS:  # also refuses NaN
        raise InvalidVideoOptions(f"max_fps must be above 0 and at most {MAX_FPS}, got {max_fps}")
    return StylizeOptions(
        style=style,
        size=size,
        format=fmt,
        quality=quality,
        # Rounded so that 0.5 and 0.5000001 share one cache entry.
        strength=round(float(strength), STRENGTH_DECIMALS),
        preserve_color=bool(preserve_color),
        portrait=portrait,
        background=background,
        no_face=no_face,
        container=container,
        max_fps=None if max_fps is None else float(max_fps),
    )
