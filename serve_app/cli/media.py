"""The CLI's videos and animated pictures: the service's frame path, run in this process.

The same ``MediaJob`` as the service's jobs (decode as a stream, repeated frames once,
batches of one shape, audio copied, timestamps and rotation kept), over the local model
instead of the model replicas, with a progress bar of frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from serve_app.config import MediaConfig
from serve_app.errors import InvalidVideoOptions
from serve_app.media import probe
from serve_app.media.frames import FrameCounts, MediaJob, MediaOutput
from serve_app.media.gate import ModelGate
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import StylizeOptions

# Output suffix -> container; an animation keeps its own format.
VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
ANIMATION_SUFFIXES = {"gif": (".gif",), "webp": (".webp",), "apng": (".png", ".apng")}

RunFrames = Callable[[list[np.ndarray]], list[np.ndarray]]
"""frames of one shape -> the model's pictures (the local model, called in a thread)"""


class _NoCache:
    """This process keeps no results between runs (repeats within a file still count)."""

    async def get(self, key: str) -> None:
        return None

    async def put(self, key: str, value: object) -> None:
        return None


def media_info(path: Path, config: MediaConfig) -> probe.MediaInfo | None:
    """The file as a video or animation (None: a still picture); raises the media errors."""
    with path.open("rb") as file:
        head = file.read(256)
    if not probe.sniff_video(head) and not probe.is_animated_picture(path):
        return None
    info = probe.probe(path, config)
    # An animation whose frames cannot be read but whose first picture can: a still, as
    # browsers (and the service) show it.
    return None if info.kind == "still" else info


def output_container(info: probe.MediaInfo, target: Path, asked: str | None = None) -> str:
    """The container ``asked`` for (``--container``), else the one the target's suffix
    names; refuses a suffix the output cannot have."""
    suffix = target.suffix.lower()
    if info.kind == "video" and asked is not None:
        return asked
    if asked not in (None, "same"):
        raise InvalidVideoOptions(
            f"an animated {info.container.upper()} stays one: --container is for videos"
        )
    if info.kind == "video":
        if suffix not in VIDEO_SUFFIXES:
            raise InvalidVideoOptions(
                f"cannot write a video to {target.name!r}: use {', '.join(VIDEO_SUFFIXES)}"
            )
        return VIDEO_SUFFIXES[suffix]
    if suffix not in ANIMATION_SUFFIXES.get(info.container, ()):
        wanted = "/".join(ANIMATION_SUFFIXES.get(info.container, ("?",)))
        raise InvalidVideoOptions(
            f"an animated {info.container.upper()} stays one: name the output {wanted}"
        )
    return "same"


def output_suffix(info: probe.MediaInfo, source: Path, asked: str | None) -> str:
    """The suffix of an output named after its input: the input's own, or that of the
    container ``asked`` for a video."""
    if info.kind == "video" and asked not in (None, "same"):
        return next(suffix for suffix, name in VIDEO_SUFFIXES.items() if name == asked)
    return source.suffix.lower()


def stylize_media(
    source: Path,
    target: Path,
    info: probe.MediaInfo,
    options: StylizeOptions,
    run_frames: RunFrames,
    weights_digest: str,
    on_frames: Callable[[FrameCounts], None] | None = None,
) -> MediaOutput:
    """Write the stylized video or animation to ``target``."""
    identity = ModelIdentity(weights_digest, "local")

    async def model(frames: list[np.ndarray], style: str) -> list[StylizedArray]:
        pictures = await asyncio.to_thread(run_frames, frames)
        return [StylizedArray(rgb, identity, 0.0, 0.0, len(frames)) for rgb in pictures]

    config = MediaConfig()
    job = MediaJob(
        info,
        options,
        config,
        model,
        _NoCache(),
        lambda _: identity,
        ModelGate(1, 1, 1.0),
        on_frames,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    output = asyncio.run(job.run(source, target if info.kind == "video" else None))
    if output.data is not None:
        target.write_bytes(output.data)
    return output
