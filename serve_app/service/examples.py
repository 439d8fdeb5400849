"""The example photos: the configured `warm_examples`, read once per ingress replica.

The page shows them and posts their bytes back to /v1/stylize; the start-up warming
stylizes those very bytes, so a click on an example is a cache hit. Reading the files
once, and serving these bytes rather than the file as it may be by then, keeps what the
page posts identical to what was warmed.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image, UnidentifiedImageError

from serve_app.config import AppConfig

logger = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the picture a quarter


@dataclass(frozen=True)
class Example:
    name: str
    data: bytes
    media_type: str
    width: int  # upright, as a browser shows it
    height: int
    etag: str

    @property
    def url(self) -> str:
        """Where the photo's bytes are served (public, like the page)."""
        return f"/examples/{quote(self.name)}"


def read_example(name: str, path: Path, max_bytes: int) -> Example | None:
    """One example file, or None (with a warning) if it cannot be an example."""
    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as error:
        logger.warning("example %s: cannot read %s: %s", name, path, error)
        return None
    if len(data) > max_bytes:
        logger.warning("example %s: %s is larger than limits.max_bytes", name, path)
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only: no pixel decoded
            width, height = image.size
            media_type = Image.MIME.get(image.format or "")
            if image.getexif().get(_ORIENTATION_TAG) in _SWAPS_SIDES:
                width, height = height, width
    except (UnidentifiedImageError, OSError, ValueError) as error:
        logger.warning("example %s: %s is not a picture: %s", name, path, error)
        return None
    if media_type is None:
        logger.warning("example %s: %s has no known media type", name, path)
        return None
    etag = hashlib.blake2b(data, digest_size=16).hexdigest()
    return Example(name, data, media_type, width, height, etag)


def load_examples(config: AppConfig) -> dict[str, Example]:
    """The configured examples that can be read, by name, in the configured order."""
    examples = {}
    for name, path in config.example_paths().items():
        example = read_example(name, path, config.limits.max_bytes)
        if example is not None:
            examples[name] = example
    return examples


EXAMPLE_ROUTE = "/examples/{name}"


def document_examples(document: dict, examples: dict[str, Example]) -> None:
    """The photo route in the OpenAPI document as this deploy serves it: the names and media
    types configured; without examples the route answers only 404, so it is left out."""
    paths = document.get("paths", {})
    if EXAMPLE_ROUTE not in paths:
        return
    if not examples:
        del paths[EXAMPLE_ROUTE]
        return
    operation = paths[EXAMPLE_ROUTE]["get"]
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "name":
            parameter["schema"] = {"type": "string", "enum": list(examples)}
    media_types = sorted({example.media_type for example in examples.values()})
    binary = {"type": "string", "format": "binary"}
    operation["responses"]["200"]["content"] = {t: {"schema": binary} for t in media_types}
