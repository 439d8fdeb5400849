"""Portrait mode's geometry: square face crops, and stylized faces pasted back with soft
edges. Pure functions over numpy arrays (no torch, no I/O).

The face styles were trained on 512 px crops of faces with some hair and neck around
them; a full-body or group photo shrunk to 512 px gives them faces of a few dozen pixels,
which come out muddy. So each face is cut from the full-resolution picture as a square
with a margin around the detector's box, and stylized at the model's native scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from serve_app.config import SIDE_MULTIPLE, PortraitConfig
from serve_app.imaging.faces import Face
from serve_app.imaging.pixels import DecodedImage, apply_controls, resize_long_side

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive


def square_box(face: Face, margin: float, width: int, height: int) -> Box:
    """The face's box squared (its longer side), grown by ``margin`` × that side on each
    side, and kept inside the picture: moved inwards rather than cut, so it stays square;
    at most the picture's shorter side."""
    side = max(face.width, face.height) * (1 + 2 * margin)
    side = max(1, min(round(side), width, height))
    cx, cy = face.center
    x0 = min(max(round(cx - side / 2), 0), width - side)
    y0 = min(max(round(cy - side / 2), 0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def scale_box(box: Box, scale_x: float, scale_y: float, width: int, height: int) -> Box:
    """A box of one picture in the pixels of the same picture resized (to width×height)."""
    x0 = min(max(math.floor(box[0] * scale_x), 0), width - 1)
    y0 = min(max(math.floor(box[1] * scale_y), 0), height - 1)
    x1 = min(max(math.ceil(box[2] * scale_x), x0 + 1), width)
    y1 = min(max(math.ceil(box[3] * scale_y), y0 + 1), height)
    return (x0, y0, x1, y1)


def crop_resized(array: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    """``array[box]`` resized to width×height (Lanczos); RGB (H, W, 3) or alpha (H, W)."""
    x0, y0, x1, y1 = box
    part = np.ascontiguousarray(array[y0:y1, x0:x1])
    if part.shape[:2] == (height, width):
        return part
    return np.asarray(Image.fromarray(part).resize((width, height), Image.Resampling.LANCZOS))


def square_side(size: int) -> int:
    """The side of `crop`'s square answer: ``size`` down to the generator's multiple."""
    return max(SIDE_MULTIPLE, size // SIDE_MULTIPLE * SIDE_MULTIPLE)


def feather_mask(
    height: int, width: int, feather: float, centre: tuple[float, float] | None = None
) -> np.ndarray:
    """A (height, width) float32 weight: 1 inside the ellipse of the box's half sides around
    ``centre`` (x, y in the box; default its middle), falling to 0 at its edge along a
    raised cosine over the outer ``feather`` of the radius.

    An ellipse follows a face's outline better than the square crop does, and the cosine's
    zero slope at both ends leaves no visible seam where the pasted face meets the rest.
    Around the face's own centre, not the box's: a box at the picture's edge is moved
    inwards, off the face, and an ellipse around its middle left the face's outer part
    mostly photo.
    """
    if not 0 < feather <= 1:
        raise ValueError(f"feather must be in (0, 1], got {feather}")
    cx, cy = centre if centre is not None else (width / 2, height / 2)
    ys = (np.arange(height, dtype=np.float32) + 0.5 - cy) / (height / 2)
    xs = (np.arange(width, dtype=np.float32) + 0.5 - cx) / (width / 2)
    radius = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)  # 1 on the ellipse
    ramp = np.clip((1 - radius) / feather, 0, 1)  # 0 at the edge .. 1 inside
    return (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)


def paste(
    base: np.ndarray,
    patch: np.ndarray,
    box: Box,
    feather: float,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """``base`` with ``patch`` resized into ``box`` and blended through a feathered mask
    around ``centre`` (x, y in ``base``: the face's; default the box's middle)."""
    x0, y0, x1, y1 = box
    height, width = y1 - y0, x1 - x0
    if patch.shape[:2] != (height, width):
        patch = crop_resized(patch, (0, 0, patch.shape[1], patch.shape[0]), width, height)
    local = None if centre is None else (centre[0] - x0, centre[1] - y0)
    weight = feather_mask(height, width, feather, local)[..., None]
    region = base[y0:y1, x0:x1].astype(np.float32)
    blended = region + (patch.astype(np.float32) - region) * weight
    out = np.array(base, copy=True)
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def compose(
    base: np.ndarray,
    patches: Sequence[tuple[Box, np.ndarray, tuple[float, float] | None]],
    feather: float,
) -> np.ndarray:
    """``base`` with every (box, patch, face centre) pasted, the smallest box first: where
    two overlap, the larger face (the subject, stylized at its own scale) stays whole on
    top, rather than under a band of its smaller neighbour's patch."""
    out = base
    for box, patch, centre in sorted(patches, key=lambda item: _area(item[0])):
        out = paste(out, patch, box, feather, centre)
    return out


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


# --- one picture, start to end (the service and the CLI share these) ---------------------


@dataclass(frozen=True)
class Prepared:
    """A picture made ready for the model in portrait mode.

    ``photo``: for ``paste`` (and with no face) the picture at the output size; for
    ``crop`` the face's square at the model's face size. ``crops``: the model's inputs,
    one square per face (empty: no face). ``boxes``: ``paste``: where each face goes in
    ``photo``; ``centres``: each face's centre there (x, y).
    """

    photo: DecodedImage
    crops: list[np.ndarray]
    boxes: list[Box]
    centres: list[tuple[float, float]] = field(default_factory=list)


def prepare(
    full: DecodedImage, faces: Sequence[Face], mode: str, size: int, config: PortraitConfig
) -> Prepared:
    """The model's inputs from the full-resolution picture and the faces found in it
    (largest first); with no face, the whole picture at ``size``."""
    if not faces:
        return Prepared(resize_long_side(full, size), [], [])
    side = config.face_size
    squares = [
        square_box(face, config.margin, full.width, full.height)
        for face in faces[: config.max_faces]
    ]
    if mode == "crop":
        box = squares[0]  # the largest face
        rgb = crop_resized(full.rgb, box, side, side)
        alpha = None if full.alpha is None else crop_resized(full.alpha, box, side, side)
        return Prepared(DecodedImage(rgb, alpha, full.source_format), [rgb], [])
    if mode != "paste":
        raise ValueError(f"portrait mode must be crop or paste, got {mode!r}")
    photo = resize_long_side(full, size)
    scale_x, scale_y = photo.width / full.width, photo.height / full.height
    boxes = [scale_box(box, scale_x, scale_y, photo.width, photo.height) for box in squares]
    crops = [crop_resized(full.rgb, box, side, side) for box in squares]
    centres = [
        (face.center[0] * scale_x, face.center[1] * scale_y) for face in faces[: config.max_faces]
    ]
    return Prepared(photo, crops, boxes, centres)


def finish(
    prepared: Prepared,
    styled: Sequence[np.ndarray],
    scene: np.ndarray | None,
    mode: str,
    size: int,
    strength: float,
    preserve_color: bool,
    feather: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The answer's (rgb, alpha) from the model's outputs.

    ``styled``: the model's output for each crop (with no face: for the whole picture);
    ``scene``: the background style's output for the whole picture (``paste``), or None
    to leave the photo around the faces. The controls (strength, colours) apply to the
    result against the photo, so around pasted faces on the photo nothing changes.
    """
    photo = prepared.photo
    if prepared.crops and mode == "paste":
        base = photo.rgb if scene is None else scene
        placed = zip(prepared.boxes, styled, prepared.centres, strict=True)
        picture = compose(base, list(placed), feather)
    else:
        picture = styled[0]
    rgb = apply_controls(photo.rgb, picture, strength, preserve_color)
    if prepared.crops and mode == "paste" and scene is None:
        # The photo around the faces, exactly: keeping its colours recolours it by a few
        # levels (the 8-bit colour-space round trip).
        pasted = np.any(picture != photo.rgb, axis=2, keepdims=True)
        rgb = np.where(pasted, rgb, photo.rgb)
    alpha = photo.alpha
    if prepared.crops and mode == "crop":
        # Stylized at the face size; answered at the requested size, square.
        side = square_side(size)
        rgb = crop_resized(rgb, (0, 0, rgb.shape[1], rgb.shape[0]), side, side)
        if alpha is not None:
            alpha = crop_resized(alpha, (0, 0, alpha.shape[1], alpha.shape[0]), side, side)
    return rgb, alpha
