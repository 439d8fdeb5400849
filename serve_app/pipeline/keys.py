"""Cache keys: every input that can change a result's bytes is part of its key."""

from __future__ import annotations

import hashlib
import json

import PIL

from serve_app.model.identity import ModelIdentity
from serve_app.options import StylizeOptions

# Bump whenever decoding, resizing, compositing or encoding can change the bytes of a
# result: old cache entries then miss instead of being served for a request they no longer
# match. Pillow's version is part of the key too (its codecs write the bytes). 3: portrait
# faces pasted around their own centres, the largest on top; a GIF's loop count of 1 kept;
# videos in square pixels and tagged BT.709 (what a job's content key names).
PIPELINE_VERSION = 3


_KEY_DIGEST_SIZE = 20


def result_key(
    image: str,
    options: StylizeOptions,
    identity: ModelIdentity,
    background: ModelIdentity | None = None,
    portrait_config: dict | None = None,
) -> str:
    """Key of one result: every input that can change its bytes is part of it, every
    option of ``StylizeOptions`` included (by its field's name: a new option joins every
    key, so entries made before it miss rather than answer for a value they never had).

    ``background``: what stylizes the picture around the faces (``portrait=paste`` with a
    background style), else None. ``portrait_config``: the deployment's portrait settings (the
    face search, margin, crop size, feathering) and OpenCV's version (its cascades find the
    faces) when the options ask for portrait mode: a
    redeploy that changes them makes other pictures, which the cache, outliving deploys,
    must not answer with the old ones.

    JSON of a sorted dict is the canonical encoding, so no two different part tuples give
    one byte string and ``None`` differs from ``0``.
    """
    parts = {
        "pipeline": PIPELINE_VERSION,
        "pillow": PIL.__version__,
        "image": image,
        "weights": identity.weights,
        "runtime": identity.runtime,
        "background_weights": None if background is None else background.weights,
        "background_runtime": None if background is None else background.runtime,
    }
    if portrait_config is not None:
        parts["portrait_config"] = portrait_config
    chosen = options.to_dict()  # every option, by its field's name
    if not parts.keys().isdisjoint(chosen):  # a field named like a part would overwrite it
        raise ValueError(
            f"an option is named like a key part: {sorted(parts.keys() & chosen.keys())}"
        )
    parts.update(chosen)
    encoded = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=_KEY_DIGEST_SIZE).hexdigest()
