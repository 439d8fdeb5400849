"""Typed configuration: the application arguments and the Stylizer's live batch knobs.

Every setting and its default lives here, the image limits included; this module imports
nothing of the project, so every other module may import it.
``serve_config.yaml``'s ``args:`` block is validated against :class:`AppConfig` at deploy
time; per-deployment knobs (replicas, autoscaling, queue bounds) stay in the YAML.

Longer than most modules, on purpose: every setting is declared once, here (docs/
configuration.md is generated from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STYLE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
RuntimeName = Literal[
    "auto", "eager-fp32", "eager-bf16", "eager-bf16-autocast", "eager-fp16-autocast"
]

SIDE_MULTIPLE = 4
MIN_OVERLAP = 2 * SIDE_MULTIPLE  # tiles that overlap at all share two grid steps
"""The generator's two stride-2 stages need both sides divisible by 4."""

MIN_SIDE = 16
"""Smallest side the generator accepts after resizing (its reflection pads need it)."""

ANIMATION_BYTES_PER_PIXEL = 16
"""Peak memory of writing an animation, in bytes per output pixel (frames × width ×
height): Pillow writes animations whole, so every stylized frame is held until the end
(4 bytes a pixel, RGB included) and the encoder then makes its own copies. Measured by
``tests/unit/test_animation_memory.py`` (64 frames of 512x512 noise, which no encoder
compresses): lossless WebP 13.5, APNG 11.8, GIF 6.4; rounded up."""

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
"""The sample photos shipped in the package; a bare file name in `warm_examples` is one."""


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
    max_sync_size: int = Field(
        default=1024,
        ge=MIN_SIDE,
        description=(
            "Largest output longer side `POST /v1/stylize` makes while the caller waits; "
            "larger sizes (up to max_size) go through `POST /v1/jobs` (422 `use_jobs`)."
        ),
    )
    upload_idle_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description=(
            "An upload of which no part arrives for this long answers 408 `upload_stalled` "
            "(between two reads, not over the whole body: a slow link is fine, a stalled one "
            "does not hold its request for ever; the edge's `client_body_timeout` is the same)."
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
    description: str = Field(default="", description="shown on the page and in /v1/styles")


class PortraitConfig(_Strict):
    """Portrait mode (`portrait=crop|paste`): finding faces, cropping and pasting them."""

    margin: float = Field(
        default=0.6, ge=0, le=3, description="added on each side of a face box, × its side"
    )
    face_size: int = Field(
        default=512,
        ge=64,
        le=1024,
        multiple_of=SIDE_MULTIPLE,  # the model takes sides on the 4-px grid
        description="square crop fed to the model (the face styles were trained on 512 px "
        "face crops)",
    )
    detect_side: int = Field(
        default=800,
        ge=128,
        le=4096,
        description="longer side of the copy searched for faces (a picture more than twice "
        "as long as high keeps its shorter side up to half of this, within twice this "
        "squared in pixels)",
    )
    min_face_fraction: float = Field(
        default=0.04, gt=0, le=1, description="smallest face searched, × the shorter side"
    )
    rotations: tuple[float, ...] = Field(
        default=(25.0, -25.0),
        description="extra passes on copies rotated by these angles (degrees) find tilted "
        "faces; each pass costs about as much as the upright one",
    )
    min_neighbors: int = Field(
        default=2,
        ge=1,
        le=50,
        description="overlapping hits a candidate needs in the first, coarse search",
    )
    verify_neighbors: int = Field(
        default=30,
        ge=1,
        le=500,
        description="overlapping hits a candidate needs in the second look, at full "
        "resolution with its face at 64 px (fewer: more faces found, more false ones)",
    )
    agree_neighbors: int = Field(
        default=45,
        ge=0,
        le=500,
        description="hits a second, independently trained cascade needs on the same view "
        "(drops the foliage, brick and fabric one cascade takes for a face); 0: no check",
    )
    max_faces: int = Field(default=8, ge=1, le=64, description="`paste`: the largest N faces")
    feather: float = Field(
        default=0.35, gt=0, le=1, description="`paste`: soft edge, × the pasted ellipse's radius"
    )


class CacheConfig(_Strict):
    """The shared result cache (named Ray actors) and the small LRU in each ingress replica."""

    name: str = Field(default="animegan-results", description="Ray actor name (shards add -i)")
    shards: int = Field(
        default=1, ge=1, le=64, description="cache actors; keys are spread over them by hash"
    )
    max_bytes: int = Field(
        default=512 * 2**20,
        ge=0,
        description="shared bound, all shards; each shard holds max_bytes / shards, and a "
        "result larger than that share is not cached",
    )
    ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="entry lifetime; none: LRU only. An ingress replica's own copy of an "
        "entry (local_max_bytes) lives ttl_s from when it took it, so a result is served "
        "for at most twice ttl_s",
    )
    local_max_bytes: int = Field(default=32 * 2**20, ge=0, description="per-ingress-replica LRU")
    timeout_s: float = Field(default=0.25, gt=0, description="a slower cache call is a miss")


class TilingConfig(_Strict):
    """Large pictures go through the model in overlapping tiles (``model/tiling.py``):
    the model's working memory then grows with the tile, not with the picture."""

    max_whole_pixels: int = Field(
        default=1024 * 1024,
        ge=MIN_SIDE * MIN_SIDE,
        description="pictures of at most this many pixels run whole (as 1024x1024 and "
        "smaller always have); larger ones are tiled, one at a time, their tiles batched",
    )
    tile_size: int = Field(
        default=512,
        ge=64,
        multiple_of=SIDE_MULTIPLE,
        description="tile side, px: the model's working memory grows with its square "
        "(and with tile_batch), not with the picture; measured peak RSS of one process "
        "with the model stylizing 4096x2728 at 512: 1.1 GiB (2048x1364: 1.0 GiB; the "
        "same 2048x1364 run whole: 3.7 GiB)",
    )
    overlap: int = Field(
        default=64,
        ge=0,
        multiple_of=SIDE_MULTIPLE,
        description="px two neighbouring tiles share: the middle half is blended with a "
        "linear ramp, the rest is context the model needs near a tile's border",
    )
    tile_batch: int = Field(default=1, ge=1, le=64, description="tiles per forward pass")
    stats_pixels: int = Field(
        default=512 * 512,
        ge=MIN_SIDE * MIN_SIDE,
        description="size of the shrunk copy run whole to estimate the picture-wide "
        "normalisation statistics every tile uses",
    )

    @model_validator(mode="after")
    def _check_overlap(self) -> TilingConfig:
        """`overlap` is at most half of `tile_size`, and 0 or at least 8 (4: the blend
        ramp around a cell boundary on the 4-px grid reached past the next tile's edge,
        leaving a grey line at every seam)."""
        if self.overlap > self.tile_size // 2:
            raise ValueError("tiling.overlap must be at most half of tiling.tile_size")
        if 0 < self.overlap < MIN_OVERLAP:
            raise ValueError(f"tiling.overlap must be 0 or at least {MIN_OVERLAP}")
        return self


class WebhookConfig(_Strict):
    """Webhooks: a job's submitter names a URL that hears when the job ends."""

    allow: list[str] = Field(
        default_factory=list,
        description="URL prefixes a webhook may point at (scheme, host, port and path start, "
        "e.g. `https://hooks.example.com/`); empty: webhooks are refused (422). Nothing "
        "outside it is ever requested from inside the cluster",
    )
    secret_env: str = Field(
        default="ANIMEGAN_WEBHOOK_SECRET",
        description="environment variable with the signing secret (Standard Webhooks: "
        "`whsec_` + base64, or any string); unset: deliveries go unsigned",
    )
    attempts: int = Field(default=5, ge=1, le=20, description="deliveries tried per event")
    first_retry_s: float = Field(
        default=1.0, gt=0, description="wait before the second try; doubles after each"
    )
    timeout_s: float = Field(default=10.0, gt=0, description="one delivery's deadline")


class JobsConfig(_Strict):
    """Jobs: pictures submitted, followed and fetched later (`/v1/jobs`)."""

    store_url: str = Field(
        default="~/.cache/animegan-serve/jobs",
        description="fsspec URL of job uploads and results: a local folder by default; on "
        "a cluster a location every node reaches (s3://..., gs://...)",
    )
    records_url: str | None = Field(
        default=None,
        description="where job records live: unset, a SQLite file in `store_url` (one "
        "node, nothing to run); `redis://host:port/db` (or `rediss://`) for a cluster, "
        "shared by every node; `sqlite:///path` for a file elsewhere",
    )
    store_url_env: str | None = Field(
        default="ANIMEGAN_JOBS_STORE_URL",
        description="environment variable that, set and not empty on a node, replaces "
        "`store_url` there (a Serve config cannot read the environment: a cluster's nodes "
        "learn where the shared stores are this way, the same config deploys everywhere)",
    )
    records_url_env: str | None = Field(
        default="ANIMEGAN_JOBS_RECORDS_URL",
        description="environment variable that, set and not empty on a node, replaces "
        "`records_url` there (as `store_url_env`)",
    )
    max_store_bytes: int = Field(
        default=2 * 2**30,
        gt=0,
        description="the store's bound: each job reserves its upload and expected output "
        "at submission; past it new jobs get 507",
    )
    ttl_s: float = Field(
        default=24 * 3600, gt=0, description="finished jobs (and their output) kept this long"
    )
    timeout_s: float = Field(default=3600, gt=0, description="one job's run deadline")
    max_running: int = Field(
        default=2, ge=1, description="jobs one ingress replica runs at once; others queue"
    )
    max_queued: int = Field(
        default=100,
        ge=1,
        description="jobs waiting for a place on one ingress replica; past it 503 "
        "(`overloaded`, Retry-After)",
    )
    max_active_per_key: int = Field(
        default=20,
        ge=1,
        description="jobs one API key has queued or running in the job store (every ingress "
        "replica that shares its record store together); past it 429 (`too_many_jobs`). "
        "Places to run go to the keys in turn, the key with the fewest jobs running first; "
        "an open service has no per-key bound",
    )
    queue_timeout_s: float = Field(
        default=1800, gt=0, description="a job waiting longer to start fails `queue_timeout`"
    )
    heartbeat_s: float = Field(default=5, gt=0, description="a job's lease is renewed this often")
    stale_after_s: float = Field(
        default=30,
        gt=0,
        description="a job's lease: one whose runner stopped renewing it this long is taken "
        "over by another replica",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="runs of one job (takeovers included) before it fails"
    )
    progress_every_s: float = Field(
        default=0.05,
        gt=0,
        description="a running job's progress is written (and pushed to followers) at most "
        "this often",
    )
    poll_interval_s: float = Field(
        default=0.05,
        gt=0,
        description="the local record store's change feed: how often each replica reads the "
        "changes other replicas wrote (once for all its followers)",
    )
    sweep_interval_s: float = Field(
        default=60, gt=0, description="expired jobs are deleted in the background this often"
    )
    io_threads: int = Field(
        default=4, ge=1, le=64, description="threads of one replica for job-store reads and writes"
    )
    max_wait_s: float = Field(
        default=60, ge=0, le=600, description="the longest `Prefer: wait=N` honoured"
    )
    webhooks: WebhookConfig = WebhookConfig()

    @model_validator(mode="after")
    def _check_beats(self) -> JobsConfig:
        """`stale_after_s` exceeds twice `heartbeat_s`: a lease outlives a late renewal."""
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError("stale_after_s must exceed twice heartbeat_s")
        return self


class MediaConfig(_Strict):
    """Videos and animated pictures: what is accepted, and how a job runs through them."""

    max_bytes: int = Field(
        default=256 * 2**20,
        gt=0,
        description="largest video or animation upload (`POST /v1/jobs`), bytes; 413 past it",
    )
    max_duration_s: float = Field(
        default=600,
        gt=0,
        description="longest video accepted, s: its video or audio, whichever is longer",
    )
    max_frames: int = Field(default=18_000, ge=1, description="most frames in one upload")
    max_frame_pixels: int = Field(
        default=3840 * 2160, gt=0, description="largest input frame, width × height"
    )
    max_animation_frames: int = Field(
        default=1000,
        ge=1,
        description="most frames of an animated GIF/WebP/APNG: its encoder holds the output "
        "frames until the end (videos stream)",
    )
    max_animation_pixels: int = Field(
        default=256 * 2**20 // ANIMATION_BYTES_PER_PIXEL,
        ge=MIN_SIDE * MIN_SIDE,
        description="most output pixels (frames × output width × height) of an animation "
        "made, as a job or while the caller waits: its writer holds every frame until the "
        "end, ANIMATION_BYTES_PER_PIXEL (16) bytes a pixel at its peak, so the default "
        "keeps one animation's writer within 256 MiB; past it, 413 `media_too_large`",
    )
    max_sync_pixels: int = Field(
        default=8 * 2**20,
        ge=0,
        description="`POST /v1/stylize` answers an animation whose frames × output pixels "
        "stay within this, animated; past it, 422 `use_jobs` (videos always go to jobs)",
    )
    frames_in_flight: int = Field(
        default=24,
        ge=1,
        description="a job's frames decoded and not yet encoded, at most (its memory bound)",
    )
    frame_batch: int = Field(
        default=4, ge=1, le=64, description="frames sent to the model in one call"
    )
    stop_grace_s: float = Field(
        default=30,
        gt=0,
        description="a cancelled or failed job waits this long for the model pass it sent to "
        "end (cancelling the call would not stop the pass), so its run ends with the model free",
    )
    video_crf: int = Field(
        default=20, ge=0, le=51, description="H.264 CRF (VP9 uses CRF + 12) of the output"
    )
    model_calls: int = Field(
        default=3,
        ge=1,
        description="frame batches of all jobs of one ingress replica at the model at once "
        "while no single photo is asking (about the model replicas + 1 keeps them all busy)",
    )
    model_calls_busy: int = Field(
        default=1,
        ge=1,
        description="the same while single photos are asking: the other model replicas "
        "stay free for them",
    )
    interactive_quiet_s: float = Field(
        default=2.0, gt=0, description="a single photo counts as asking for this long"
    )


class LiveConfig(_Strict):
    """The live camera (`/v1/live`): streams of small frames where the latest one wins."""

    default_size: int = Field(
        default=256,
        ge=MIN_SIDE,
        description="a live frame's output longer side unless asked, px (never past the "
        "largest live size: `limits.max_sync_size` or `max_size` below it lower it too)",
    )
    max_size: int = Field(
        default=512, ge=MIN_SIDE, description="the largest `size` a live stream may ask for, px"
    )
    max_frame_bytes: int = Field(
        default=2 * 2**20,
        gt=0,
        description="largest frame message, bytes; a larger one is answered with an error "
        "message (`payload_too_large`) and the stream goes on",
    )
    max_streams: int = Field(
        default=32,
        ge=0,
        description="live streams one ingress replica holds open; past it a new one is "
        "closed with 4503 (`live_full`)",
    )
    max_streams_per_key: int = Field(
        default=4,
        ge=1,
        description="live streams one API key holds open on every ingress replica that "
        "shares the job record store (with Redis: the cluster); past it 4429 "
        "(`too_many_streams`); an open service has no per-key bound",
    )
    frames_at_model: int = Field(
        default=2,
        ge=0,
        description="live frames of all streams of one ingress replica being made at once; "
        "the others wait (their newer frames replacing them) for a place. About the Stylizer "
        "replicas' count (times their batch on GPUs): each then makes one frame at a time, so "
        "a frame takes about one model pass however many streams run, and a photo waits for "
        "one frame at most. 0: no bound (each stream's frame goes to the model at once)",
    )
    idle_timeout_s: float = Field(
        default=30, gt=0, description="a stream that sends nothing this long is closed (4408)"
    )
    send_timeout_s: float = Field(
        default=10,
        gt=0,
        description="a stream whose client reads no answer this long is closed as stalled (4408)",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> LiveConfig:
        if self.default_size > self.max_size:
            raise ValueError(f"live.default_size {self.default_size} exceeds live.max_size")
        return self


class AppConfig(_Strict):
    """The application arguments (`args:` of the serve config)."""

    styles: list[StyleConfig] = Field(
        min_length=1,
        description="the styles served (the first is the default unless `default_style` "
        "names another)",
    )
    default_style: str | None = Field(default=None, description="default: the first style")
    default_size: int = Field(
        default=512,
        ge=MIN_SIDE,
        description="output longer side, px; at most `limits.max_size` and "
        "`limits.max_sync_size` (the size of a request that names none)",
    )
    default_format: OutputFormat = Field(default="png", description="output format")
    default_quality: int = Field(default=90, ge=1, le=100, description="jpeg and webp")
    limits: ImageLimits = ImageLimits()
    max_batch_images: int = Field(default=8, ge=1, le=64, description="files per batch request")
    device: DeviceName = Field(
        default="auto", description="where the model runs; auto: CUDA where torch sees one"
    )
    precision: PrecisionName = Field(
        default="auto",
        description="narrows `runtime: auto` to runtimes of this precision (fp16: CUDA only; "
        "bf16: a GPU or a CPU with native bf16); eager-fp32 stays the fallback",
    )
    runtime: RuntimeName = Field(
        default="auto",
        description="how the model runs; auto: the fastest runtime (within `precision`) whose "
        "output is within 40 dB PSNR of eager-fp32, measured with the styles' weights by the "
        "first replica of each node class (device, GPU model or CPU's bf16/AVX flags, torch, "
        "threads) and adopted by the deployment's other replicas of that class; eager-fp32 is "
        "the fallback",
    )
    seed: int = Field(default=0, description="seed of `random` weights")
    request_timeout_s: float = Field(default=30.0, gt=0, description="past it: 504")
    max_in_flight: int = Field(
        default=32,
        ge=1,
        description="misses one ingress replica computes at once; past it: 503 at once, "
        "before any decoding (hits are still served)",
    )
    max_in_flight_per_key: int = Field(
        default=16,
        ge=1,
        description="of those, the misses one API key started (with API keys configured), "
        "each until its computation has ended; past it: 429 `too_many_pictures` at once, so "
        "one tenant's burst leaves room for the others (hits, and requests that join a miss "
        "in progress, are not counted); at least `max_batch_images`",
    )
    photo_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="threads of one ingress replica that decode, encode and probe uploads; "
        "apart from the job store's and each media job's own, so a burst of pictures "
        "delays neither",
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
    tiling: TilingConfig = TilingConfig()
    portrait: PortraitConfig = PortraitConfig()
    jobs: JobsConfig = JobsConfig()
    media: MediaConfig = MediaConfig()
    live: LiveConfig = LiveConfig()
    api_key_env: str | None = Field(
        default="ANIMEGAN_API_KEYS",
        description="environment variable with the API keys (comma-separated) that /v1 "
        "routes require as `Authorization: Bearer <key>`; unset or empty: no key needed",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed by CORS, and whose pages may open the WebSockets beside "
        "the service's own host; empty: CORS off, WebSockets from the service's own pages "
        "and non-browser clients only",
    )
    warm_examples: list[str] = Field(
        default_factory=list,
        description="photo files stylized for every style at start (default size and format) "
        "and shown on the page as examples; a bare file name (`4.jpg`) is one of the "
        "package's sample photos, anything with a directory part a path as written",
    )

    @field_validator("warm_examples")
    @classmethod
    def _unique_example_names(cls, entries: list[str]) -> list[str]:
        """`warm_examples` entries name files whose names are unique (the file name is the
        example's public name: `GET /examples/{name}`)."""
        names = [Path(entry).name for entry in entries]
        if any(name in ("", ".", "..") for name in names):
            raise ValueError(f"warm_examples entries must name files, got {entries}")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"warm_examples file names must be unique; repeated: {repeated}")
        return entries

    @model_validator(mode="after")
    def _check_styles(self) -> AppConfig:
        """Style names are unique, `default_style` is one of them, and `default_size` is
        one a request may ask for: at most `limits.max_size` and `limits.max_sync_size` (a
        default past them refused every request that named no size)."""
        names = [style.name for style in self.styles]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"style names must be unique; repeated: {duplicates}")
        if self.default_style is not None and self.default_style not in names:
            raise ValueError(f"default_style {self.default_style!r} is not one of {names}")
        for name, bound in (
            ("max_size", self.limits.max_size),
            ("max_sync_size", self.limits.max_sync_size),
        ):
            if self.default_size > bound:
                raise ValueError(f"default_size {self.default_size} exceeds limits.{name} {bound}")
        return self

    @model_validator(mode="after")
    def _check_per_key(self) -> AppConfig:
        """One batch request's pictures fit in its key's misses in progress (else a batch
        would refuse its own last pictures with 429)."""
        if self.max_batch_images > self.max_in_flight_per_key:
            raise ValueError(
                f"max_batch_images {self.max_batch_images} exceeds max_in_flight_per_key "
                f"{self.max_in_flight_per_key}: one batch would refuse its own pictures"
            )
        return self

    @property
    def largest_live_size(self) -> int:
        """The largest ``size`` a live stream may ask for: ``live.max_size``, within the
        photos' own bounds."""
        return min(self.live.max_size, self.limits.max_sync_size, self.limits.max_size)

    @property
    def live_default_size(self) -> int:
        """A live stream's size unless asked: ``live.default_size``, within the largest
        (a lower ``limits.max_sync_size`` lowers it too, instead of refusing every
        stream that names no size)."""
        return min(self.live.default_size, self.largest_live_size)

    @property
    def default_style_name(self) -> str:
        return self.default_style or self.styles[0].name

    def style(self, name: str) -> StyleConfig | None:
        return next((style for style in self.styles if style.name == name), None)

    def example_paths(self) -> dict[str, Path]:
        """`warm_examples` by public name (the file name) -> the file to read."""
        return {Path(entry).name: example_path(entry) for entry in self.warm_examples}


def example_path(entry: str) -> Path:
    """A `warm_examples` entry as a file: a bare file name is a package sample photo."""
    path = Path(entry).expanduser()
    return SAMPLES_DIR / entry if entry == path.name else path


DEFAULT_BATCH_WAIT_S = 0.005


class BatchConfig(_Strict):
    """The Stylizer's `user_config`: changed live through `reconfigure`."""

    max_batch_size: int | Literal["auto"] = Field(
        default="auto",
        description="requests per batch, each shape in one forward pass; `auto`: batches of "
        "up to auto_max_batch_size, each shape in passes of the size its own timed passes "
        "found fastest (keep max_ongoing_requests >= the batch)",
    )
    auto_max_batch_size: int = Field(
        default=8, ge=1, le=256, description="`auto`'s batch, and the largest pass it tries"
    )
    batch_wait_timeout_s: float = Field(
        default=DEFAULT_BATCH_WAIT_S,
        ge=0,
        le=10,
        description="seconds a batch waits to fill before it runs with what it has",
    )

    @property
    def largest_batch(self) -> int:
        """The most requests the batcher collects into one batch."""
        if self.max_batch_size == "auto":
            return self.auto_max_batch_size
        return self.max_batch_size

    @field_validator("max_batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        """`max_batch_size` is 1 to 256, or `auto`."""
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("max_batch_size must be 1..256 or 'auto'")
        return value
