"""The stylize options: every control a caller can set, declared once.

``StylizeOptions`` is the one declaration. Each field carries its type, its default (a
constant, or the ``AppConfig`` attribute it comes from), its description and a
``Control``: its bounds and the error a refused value raises. Everything else is derived
from the fields, so a new control is one new field:

- ``resolve_options``: the checks, for the HTTP routes, the handle API and jobs;
- the HTTP query parameters (``http/params.py``) and their OpenAPI schemas with the
  running config's limits (``query_schemas``);
- the ``animegan stylize`` flags (``cli/flags.py``);
- the cache key (``pipeline/keys.py``) and a job record's form (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import functools
import math
import operator
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from serve_app.config import MIN_SIDE, OUTPUT_FORMATS, AppConfig, OutputFormat
from serve_app.errors import (
    InvalidBackground,
    InvalidFormat,
    InvalidNoFace,
    InvalidParameters,
    InvalidPortrait,
    InvalidQuality,
    InvalidSize,
    InvalidStrength,
    InvalidVideoOptions,
    ServiceError,
    UnknownStyle,
    UseJobs,
)

STRENGTH_DECIMALS = 3

PortraitMode = Literal["off", "crop", "paste"]
NoFaceMode = Literal["error", "whole"]
OutputContainer = Literal["same", "mp4", "webm", "matroska", "mov"]

PORTRAIT_MODES: tuple[PortraitMode, ...] = get_args(PortraitMode)
NO_FACE_MODES: tuple[NoFaceMode, ...] = get_args(NoFaceMode)
OUTPUT_CONTAINERS: tuple[OutputContainer, ...] = get_args(OutputContainer)

MAX_FPS = 240.0

BACKGROUND_PHOTO = "photo"  # `background`: leave the picture around the faces as it is

# The command line stylizes with registry weights, not a config's styles.
LOCAL_DEFAULT_STYLE = "face_paint_512_v2"
LOCAL_DEFAULT_SIZE = 512


@dataclass(frozen=True)
class CliFlag:
    """Where ``animegan stylize`` differs from the service: its styles are registry names or
    weight files, not a config's. ``help`` may name ``{styles}`` (the registry) and
    ``{default}``."""

    help: str | None = None
    default: Any = None
    metavar: str | None = None


@dataclass(frozen=True)
class Control:
    """How one option is checked: what its field's type and default do not say."""

    error: type[ServiceError]  # raised for a value outside the bounds below
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the minimum itself is refused
    unit: str = ""  # after the bounds in a message, e.g. " px"
    choices: tuple[str, ...] | None = None  # default: the values of the field's Literal
    case_insensitive: bool = False
    decimals: int | None = None  # rounded to so many, so near-equal values share a key
    config_default: str | None = None  # the AppConfig attribute the default comes from
    config_choices: Callable[[AppConfig], list[str]] | None = None
    config_maximum: str | None = None  # an AppConfig attribute (dotted) bounding it
    sync_maximum: str | None = None  # past it a caller who waits gets UseJobs
    refusal: str | None = None  # the message, with {name} {value} {choices}
    # Read only for videos and animations: a still picture's cache key leaves it out.
    motion_only: bool = False
    cli: CliFlag = CliFlag()


def served_styles(config: AppConfig) -> list[str]:
    return [style.name for style in config.styles]


def backgrounds(config: AppConfig) -> list[str]:
    return [BACKGROUND_PHOTO, *served_styles(config)]


class StylizeOptions(BaseModel):
    """One request's options, resolved: every value checked and filled in
    (``resolve_options`` makes them; a job record keeps ``to_dict()``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    style: Annotated[
        str,
        Control(
            UnknownStyle,
            config_default="default_style_name",
            config_choices=served_styles,
            refusal="unknown style {value!r}; served: {choices}",
            cli=CliFlag(
                help="registry name ({styles}), a local .pt path, or `random` (default: {default})",
                default=LOCAL_DEFAULT_STYLE,
            ),
        ),
    ] = Field(description="a style from /v1/styles")
    size: Annotated[
        int,
        Control(
            InvalidSize,
            minimum=MIN_SIDE,
            unit=" px",
            config_default="default_size",
            config_maximum="limits.max_size",
            sync_maximum="limits.max_sync_size",
            cli=CliFlag(
                help="longer side of the output in px (rounded down to a multiple of 4; "
                "default {default})",
                default=LOCAL_DEFAULT_SIZE,
            ),
        ),
    ] = Field(description="output longer side, px")
    format: Annotated[
        OutputFormat,
        Control(
            InvalidFormat,
            choices=tuple(sorted(OUTPUT_FORMATS)),
            case_insensitive=True,
            config_default="default_format",
            cli=CliFlag(help="output format (default: from OUT's suffix for one input, else png)"),
        ),
    ] = Field(description="output format, case-insensitive")
    quality: Annotated[
        int | None,  # None for png
        Control(InvalidQuality, minimum=1, maximum=100, config_default="default_quality"),
    ] = Field(description="1..100, jpeg and webp")
    strength: Annotated[
        float, Control(InvalidStrength, minimum=0, maximum=1, decimals=STRENGTH_DECIMALS)
    ] = Field(default=1.0, description="0 (the photo) .. 1 (the style's full effect, default)")
    preserve_color: Annotated[bool, Control(InvalidParameters)] = Field(
        default=False, description="keep the photo's colours, take the style's lightness and lines"
    )
    portrait: Annotated[PortraitMode, Control(InvalidPortrait, case_insensitive=True)] = Field(
        default="off",
        description="off (default); crop: the largest face, square, stylized at the face "
        "styles' scale; paste: every face so, pasted back into the picture",
    )
    background: Annotated[
        str,
        Control(
            InvalidBackground,
            config_choices=backgrounds,
            cli=CliFlag(
                help="--portrait paste: `photo` (default: the picture around the faces as it "
                "is) or a style for it (registry name, .pt path or random)",
                default=BACKGROUND_PHOTO,
                metavar="STYLE",
            ),
        ),
    ] = Field(
        default=BACKGROUND_PHOTO,
        description="portrait=paste: `photo` (default) or a style for the rest",
    )
    no_face: Annotated[NoFaceMode, Control(InvalidNoFace, case_insensitive=True)] = Field(
        default="error",
        description="portrait found no face: `error` (default: the picture fails with "
        "`no_face`) or `whole` (stylize the whole picture)",
    )
    container: Annotated[
        OutputContainer,
        Control(
            InvalidVideoOptions,
            case_insensitive=True,
            motion_only=True,
            cli=CliFlag(
                help="videos: the output container, `same` (the input's family), `mp4`, "
                "`webm`, `matroska` or `mov` (default: the one OUT's suffix names; several "
                "inputs: each input's own)"
            ),
        ),
    ] = Field(
        default="same",
        description="videos (jobs): the output container, `same` (default: the input's "
        "family), `mp4`, `webm`, `matroska` or `mov`",
    )
    max_fps: Annotated[
        float | None,
        Control(
            InvalidVideoOptions, minimum=0, above_minimum=True, maximum=MAX_FPS, motion_only=True
        ),
    ] = Field(
        default=None,
        description="videos: at most this many frames a second (the first frame at or "
        "after each 1/max_fps step is kept, the rest dropped); default: every frame",
    )
    exact_frames: Annotated[bool, Control(InvalidParameters, motion_only=True)] = Field(
        default=False,
        description="videos and animations: every frame its own model pass (only identical "
        "frames share one); default false: a frame all but identical to the last one the "
        "model made (a still shot's codec and sensor noise) reuses its picture, measured to "
        "stay within 40 dB PSNR of its own: fewer passes, steadier still shots",
    )

    def to_dict(self) -> dict[str, Any]:
        """The stable form a job record keeps (``from_dict`` reads it back): every field
        by name, JSON values."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StylizeOptions:
        return cls.model_validate(data)

    def for_still(self) -> StylizeOptions:
        """These options as a still picture reads them: the ones only videos and
        animations read at their defaults, so that stills differing only in those share
        one cache entry."""
        motion = {o.name: o.fixed_default for o in option_fields() if o.control.motion_only}
        return self.model_copy(update=motion)


# --- the fields, as the places that derive from them see them ---------------------------


@dataclass(frozen=True)
class Option:
    """One field of ``StylizeOptions`` with its control: what every derived place reads."""

    name: str
    value_type: type  # str, int, float or bool: what a query or a flag parses
    description: str
    control: Control
    fixed_default: Any  # None for the fields whose default comes from the config

    @property
    def empty_means_default(self) -> bool:
        """An empty text value (``?style=``) stands for the default."""
        return self.value_type is str

    def default(self, config: AppConfig) -> Any:
        if self.control.config_default is None:
            return self.fixed_default
        return operator.attrgetter(self.control.config_default)(config)

    def choices(self, config: AppConfig | None) -> list[str] | None:
        """The values accepted (None: any of its type); without a config, only what holds
        for every config."""
        if self.control.config_choices is not None:
            return None if config is None else self.control.config_choices(config)
        return None if self.control.choices is None else list(self.control.choices)

    def maximum(self, config: AppConfig | None, synchronous: bool = False) -> float | None:
        """The largest value accepted (None: no bound); ``synchronous``: for a caller who
        waits, when that is less."""
        control, largest = self.control, self.control.maximum
        if config is not None and control.config_maximum is not None:
            largest = operator.attrgetter(control.config_maximum)(config)
        if config is not None and synchronous and control.sync_maximum is not None:
            largest = min(largest, operator.attrgetter(control.sync_maximum)(config))
        return largest

    def parse(self, value: Any) -> Any:
        """A value as given (a query's text, a handle caller's Python value) -> its type;
        None stays None (not given)."""
        try:
            value = _adapter(self.value_type).validate_python(value)
        except ValidationError as exc:
            raise InvalidParameters(f"{self.name}: {exc.errors()[0]['msg']}") from None
        if isinstance(value, str) and self.control.case_insensitive:
            value = value.lower()
        return value

    def checked(self, value: Any, config: AppConfig | None, synchronous: bool = False) -> Any:
        """``value`` (rounded, for a field with ``decimals``) if it is within the bounds (the
        config's too, when given); raises the field's error otherwise. None (an optional
        field left unset) passes."""
        if value is None:
            return None
        control = self.control
        choices = self.choices(config)
        if choices is not None and value not in choices:
            raise control.error(self._refusal(value, choices))
        low, high = control.minimum, self.maximum(config)
        below = low is not None and (value <= low if control.above_minimum else value < low)
        if below or (high is not None and not value <= high) or _is_nan(value):
            raise control.error(self._refusal(value, None, high))
        waits = self.maximum(config, synchronous=synchronous)
        if waits is not None and value > waits:
            raise UseJobs(
                f"{self.name} {value} is above the {waits}{control.unit} made while the caller "
                "waits; submit it to POST /v1/jobs and fetch the result when it is done"
            )
        return value if control.decimals is None else round(float(value), control.decimals)

    def _refusal(self, value: Any, choices: list[str] | None, high: float | None = None) -> str:
        control = self.control
        if control.refusal is not None:
            return control.refusal.format(name=self.name, value=value, choices=choices)
        if choices is not None:
            return f"{self.name} must be one of {choices}, got {value!r}"
        low, unit = control.minimum, control.unit
        if high is None:
            return f"{self.name} must be at least {low}{unit}, got {value}"
        if control.above_minimum:
            return f"{self.name} must be above {low} and at most {high}{unit}, got {value}"
        return f"{self.name} must be {low}..{high}{unit}, got {value}"

    def json_schema(self, config: AppConfig, synchronous: bool) -> dict[str, Any]:
        """The OpenAPI schema of its query parameter, with the config's values and limits."""
        schema: dict[str, Any] = {"type": _JSON_TYPES[self.value_type]}
        choices = self.choices(config)
        if choices is not None:
            schema["enum"] = choices
        if self.control.minimum is not None:
            bound = "exclusiveMinimum" if self.control.above_minimum else "minimum"
            schema[bound] = self.control.minimum
        largest = self.maximum(config, synchronous)
        if largest is not None:
            schema["maximum"] = largest
        return schema


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


@functools.cache
def _adapter(value_type: type) -> TypeAdapter:
    return TypeAdapter(value_type | None)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _without_none(annotation: Any) -> Any:
    """``int | None`` -> int."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    return annotation


def _option(name: str) -> Option:
    field = StylizeOptions.model_fields[name]
    (control,) = [item for item in field.metadata if isinstance(item, Control)]
    value_type = _without_none(field.annotation)
    if get_origin(value_type) is Literal:
        # Parsed as text and checked against its values here, so a wrong one gets the
        # field's own error rather than a type error.
        if control.choices is None:
            control = replace(control, choices=get_args(value_type))
        value_type = str
    return Option(
        name=name,
        value_type=value_type,
        description=field.description or "",
        control=control,
        fixed_default=None if field.is_required() else field.default,
    )


@functools.cache
def option_fields() -> tuple[Option, ...]:
    """Every option, in the model's order (the order checks run and parameters appear)."""
    return tuple(_option(name) for name in StylizeOptions.model_fields)


# --- resolving --------------------------------------------------------------------------


def resolve_options(
    config: AppConfig,
    values: Mapping[str, Any] | None = None,
    /,
    *,
    synchronous: bool = True,
    **named: Any,
) -> StylizeOptions:
    """A caller's options (a mapping, or by name; None or an empty text: the default),
    filled in from the config and checked against it; 422 on anything wrong, an unknown
    name included.

    ``synchronous``: the caller waits for the picture, so sizes past
    ``limits.max_sync_size`` are refused (they are made as jobs).
    """
    given = {**(values or {}), **named}
    options = option_fields()
    unknown = sorted(set(given) - {option.name for option in options})
    if unknown:
        raise InvalidParameters(
            f"unknown option(s) {unknown}; the options are {[o.name for o in options]}"
        )
    resolved = {}
    for option in options:
        value = option.parse(given.get(option.name))
        if value is None or (value == "" and option.empty_means_default):
            value = option.default(config)
        resolved[option.name] = option.checked(value, config, synchronous)
    return StylizeOptions(**_drop_what_a_mode_ignores(resolved))


def _drop_what_a_mode_ignores(values: dict[str, Any]) -> dict[str, Any]:
    """Options that change nothing in a mode take their default there, so requests that
    differ only in them share one cache entry."""
    if values["format"] == "png":
        values["quality"] = None
    if values["portrait"] != "paste":
        values["background"] = BACKGROUND_PHOTO
    if values["portrait"] == "off":
        values["no_face"] = "error"
    return values
