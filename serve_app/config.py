"""Typed configuration: the application arguments and the Stylizer's live batch knobs.

Every setting and its default lives here, the image limits included; this module imports
nothing of the project, so every other module may import it.
``serve_config.yaml``'s ``args:`` block is validated against :class:`AppConfig` at deploy
time; per-deployment knobs (replicas, autoscaling, queue bounds) stay in the YAML.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STYLE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

OutputFormat = Literal["png", "jpeg", "webp"]
DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]

SIDE_MULTIPLE = 4
"""The generator's two stride-2 stages need both sides divisible by 4."""

MIN_SIDE = 16
"""Smallest side the generator accepts after resizing (its reflection pads need it)."""


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StyleConfig(_Strict):
    """One style served: a public name and the weights behind it."""

    name: str = Field(pattern=STYLE_NAME_PATTERN, description="the `style` query value")
    weights: str = Field(
        description="a registry name (see `animegan weights list`), a local .pt path, or `random`"
    )
    align_corners: bool | None = Field(
        default=None,
        description="upsampling mode; default: the registry's value for the weights, else true",
    )
    description: str = ""


class CacheConfig(_Strict):
    """The shared result cache (named Ray actors) and the small LRU in each ingress replica."""

    name: str = Field(default="animegan-results", description="Ray actor name (shards add -i)")
    shards: int = Field(default=1, ge=1, le=64)
    max_bytes: int = Field(default=512 * 2**20, ge=0, description="shared bound, all shards")
    ttl_s: float | None = Field(default=None, gt=0, description="entry lifetime; none: LRU only")
    local_max_bytes: int = Field(default=32 * 2**20, ge=0, description="per-ingress-replica LRU")
    timeout_s: float = Field(default=0.25, gt=0, description="a slower cache call is a miss")


class AppConfig(_Strict):
    """The application arguments (`args:` of the serve config)."""

    styles: list[StyleConfig] = Field(min_length=1)
    default_style: str | None = Field(default=None, description="default: the first style")
    default_size: int = Field(default=512, gt=0, description="output longer side, px")
    default_format: OutputFormat = "png"
    default_quality: int = Field(default=90, ge=1, le=100, description="jpeg and webp")
    limits: ImageLimits = ImageLimits()
    max_batch_images: int = Field(default=8, ge=1, le=64, description="files per batch request")
    device: DeviceName = "auto"
    precision: PrecisionName = "auto"
    seed: int = Field(default=0, description="seed of `random` weights")
    request_timeout_s: float = Field(default=30.0, gt=0, description="past it: 504")
    max_in_flight: int = Field(
        default=32,
        ge=1,
        description="misses one ingress replica computes at once; past it: 503 at once, "
        "before any decoding (hits are still served)",
    )
    decode_memory_bytes: int = Field(
        default=2**30,
        ge=64 * 2**20,
        description="memory one ingress replica lets its decodes use at once; each reserves "
        "its upper bound (imaging.decode_peak_bytes: 18 bytes a pixel + 32 MiB) before it "
        "starts, so the largest accepted pictures decode one or two at a time and photos "
        "many at once",
    )
    cache: CacheConfig = CacheConfig()
    api_key_env: str | None = Field(
        default="ANIMEGAN_API_KEYS",
        description="environment variable with the API keys (comma-separated) that /v1 "
        "routes require as `Authorization: Bearer <key>`; unset or empty: no key needed",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed by CORS; empty: CORS off"
    )
    warm_examples: list[str] = Field(
        default_factory=list,
        description="photo files stylised for every style at start (default size and format)",
    )

    @model_validator(mode="after")
    def _check_styles(self) -> AppConfig:
        names = [style.name for style in self.styles]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"style names must be unique; repeated: {duplicates}")
        if self.default_style is not None and self.default_style not in names:
            raise ValueError(f"default_style {self.default_style!r} is not one of {names}")
        if self.default_size > self.limits.max_size:
            raise ValueError(
                f"default_size {self.default_size} exceeds limits.max_size {self.limits.max_size}"
            )
        return self

    @property
    def default_style_name(self) -> str:
        return self.default_style or self.styles[0].name

    def style(self, name: str) -> StyleConfig | None:
        return next((style for style in self.styles if style.name == name), None)


DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_S = 0.005


class BatchConfig(_Strict):
    """The Stylizer's `user_config`: changed live through `reconfigure`."""

    max_batch_size: int | Literal["auto"] = Field(
        default=DEFAULT_MAX_BATCH_SIZE,
        description="requests per forward pass; `auto` measures each size at start-up "
        "and takes the fastest (keep max_ongoing_requests >= it)",
    )
    auto_max_batch_size: int = Field(default=8, ge=1, le=256, description="`auto` tries up to it")
    batch_wait_timeout_s: float = Field(default=DEFAULT_BATCH_WAIT_S, ge=0, le=10)

    @field_validator("max_batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("max_batch_size must be 1..256 or 'auto'")
        return value
