"""Face detection for portrait mode: an RGB array in, face boxes out (pure, no torch).

OpenCV's frontal-face Haar cascade, which ships inside the ``opencv-python-headless``
wheel (``cv2.data.haarcascades``): nothing is downloaded at run time. Coarse to fine:

1. Search a grey, histogram-equalised copy whose longer side is at most ``detect_side``
   (the cost grows with the pixels searched; a panorama's copy keeps more, so its faces
   are not shrunk under the cascade's window: ``search_scale``), once upright and once
   per angle of ``rotations`` on a rotated copy (the cascade only finds faces within
   about ±15° of upright). A low bar (``min_neighbors``) keeps small faces, which draw
   few hits there.
2. Look at each candidate again, cut from the full-resolution picture, turned upright
   and scaled so the face is 64 px: a face draws dozens of overlapping hits there, the
   texture that fooled the coarse pass few (``verify_neighbors``). A second frontal-face
   cascade, trained apart from the first, must agree on the same view
   (``agree_neighbors``): foliage, brick and fabric that fool one rarely fool both. No
   colour is looked at, so neither skin tone, light nor a grey picture changes the answer.
3. Map the boxes back to the picture and merge overlapping ones (non-maximum
   suppression).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from serve_app.config import PortraitConfig

CASCADE_FILE = "haarcascade_frontalface_default.xml"
# A second frontal-face cascade, trained apart from the first (other features, other
# boosting): texture that fools one rarely fools both, while a face satisfies both.
SECOND_CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
WINDOW = 24  # the cascade's own window: no smaller face can be found at the search scale
SCALE_FACTOR = 1.1  # step between the scales searched
# Raised when the same settings and OpenCV find other faces in some pictures (2: panoramas
# searched at a larger scale), so portraits cached before are not served as if made now.
SEARCH_REVISION = 2
VERIFY_SIDE = 64  # a candidate's face side in the second look
VERIFY_CONTEXT = 2.2  # the second look's square, × the face side
VERIFY_SCALE_FACTOR = 1.05  # fine steps: a true face is hit at many of them
VERIFY_CENTRE = 0.35  # a hit counts if its centre is this close (× VERIFY_SIDE) to the middle
# Two boxes of one face overlap by far more than this; boxes of two faces side by side
# rarely do.
NMS_IOU = 0.3
# A box mostly inside a bigger one (a face found again at another scale or angle, or a
# false hit on a face's own features) is the same face.
NMS_INSIDE = 0.6


@dataclass(frozen=True)
class Face:
    """A face's box in the picture's pixels (x1, y1 exclusive) and how sure the search is."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 0.0  # overlapping hits that made it: more is surer
    angle: float = 0.0  # the rotation of the pass that found it, degrees

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def scaled(self, factor: float) -> Face:
        return Face(
            self.x0 * factor,
            self.y0 * factor,
            self.x1 * factor,
            self.y1 * factor,
            self.score,
            self.angle,
        )


def iou(a: Face, b: Face) -> float:
    """Intersection over union of two boxes (0 when they do not touch)."""
    inter = _intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def _intersection(a: Face, b: Face) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def non_max_suppression(faces: Iterable[Face]) -> list[Face]:
    """One box per face: the surest of each overlapping group, largest first."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: (-f.score, -f.area)):
        if all(not _same_face(face, other) for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: -f.area)


def _same_face(a: Face, b: Face) -> bool:
    if iou(a, b) > NMS_IOU:
        return True
    smaller = min(a.area, b.area)
    return smaller > 0 and _intersection(a, b) / smaller > NMS_INSIDE


@functools.cache
def search_version() -> str:
    """What the face search's results depend on beyond its settings: OpenCV's version (its
    cascades and resizing); part of a portrait's cache key."""
    import cv2

    return f"{cv2.__version__}/{SEARCH_REVISION}"


def search_scale(height: int, width: int, detect_side: int) -> float:
    """The scale of the copy searched: its longer side at most ``detect_side``, except a
    picture more than twice as long as high (a panorama, a group in a row), whose shorter
    side keeps up to ``detect_side / 2`` within 2 × ``detect_side``² pixels in all (at most
    twice a square picture's search): by the longer side alone, a 4000×500 panorama's
    faces of a fifth of its height would shrink to 20 px, under the cascade's window."""
    by_longer = detect_side / max(height, width)
    by_shorter = detect_side / 2 / min(height, width)
    by_pixels = math.sqrt(2 * detect_side**2 / (height * width))
    return min(1.0, max(by_longer, min(by_shorter, by_pixels)))


def detect_faces(rgb: np.ndarray, config: PortraitConfig | None = None) -> list[Face]:
    """Every face found in an (H, W, 3) uint8 picture, largest first.

    A face smaller than ``min_face_fraction`` of the shorter side is not searched for, nor
    one under the cascade's 24 px window at the search scale (so with the defaults, a
    1280×853 photo's smallest findable face is about 38 px).
    """
    import cv2

    config = config or PortraitConfig()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    scale = search_scale(height, width, config.detect_side)
    small = rgb
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    # Equalised grey: the cascade was trained on such, and it evens out dim or hazy photos.
    grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY))
    min_side = max(WINDOW, round(config.min_face_fraction * min(height, width) * scale))
    if min_side > min(grey.shape):
        return []
    found: list[Face] = []
    for angle in (0.0, *config.rotations):
        found.extend(_search(grey, angle, min_side, config.min_neighbors))
    verified = []
    for candidate in found:
        face = candidate.scaled(1.0 / scale)
        hits, agreeing = verify(rgb, face)
        if hits >= config.verify_neighbors and agreeing >= config.agree_neighbors:
            verified.append(replace(face, score=float(hits)))
    return non_max_suppression(verified)


def verify(rgb: np.ndarray, face: Face) -> tuple[int, int]:
    """Overlapping cascade hits near the middle of ``face``'s box, looked at again in the
    full-resolution picture: upright (by ``face.angle``) and scaled to a VERIFY_SIDE face."""
    import cv2

    side = max(face.width, face.height)
    if side <= 0:
        return 0, 0
    cx, cy = face.center
    # An upright square around the face, large enough to hold the rotated view.
    half = side * VERIFY_CONTEXT / 2 * math.sqrt(2)
    height, width = rgb.shape[:2]
    x0, y0 = max(math.floor(cx - half), 0), max(math.floor(cy - half), 0)
    x1, y1 = min(math.ceil(cx + half), width), min(math.ceil(cy + half), height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0, 0
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    zoom = VERIFY_SIDE / side
    # Shrinking by area averaging first: a rotation's own sampling would alias.
    if zoom < 1:
        size = (max(1, round((x1 - x0) * zoom)), max(1, round((y1 - y0) * zoom)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        zoom_x, zoom_y = size[0] / (x1 - x0), size[1] / (y1 - y0)
        centre, scale = ((cx - x0) * zoom_x, (cy - y0) * zoom_y), 1.0
    else:
        centre, scale = (cx - x0, cy - y0), zoom
    out = round(VERIFY_SIDE * VERIFY_CONTEXT)
    matrix = cv2.getRotationMatrix2D(centre, face.angle, scale)
    matrix[0, 2] += out / 2 - centre[0]
    matrix[1, 2] += out / 2 - centre[1]
    view = cv2.warpAffine(
        grey, matrix, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    view = cv2.equalizeHist(view)
    return _hits_near_centre(_cascade(), view, out), _hits_near_centre(
        _cascade(SECOND_CASCADE_FILE), view, out
    )


def _hits_near_centre(cascade, view: np.ndarray, out: int) -> int:
    rects, counts = cascade.detectMultiScale2(
        view,
        scaleFactor=VERIFY_SCALE_FACTOR,
        minNeighbors=1,
        minSize=(round(VERIFY_SIDE * 0.6),) * 2,
        maxSize=(round(VERIFY_SIDE * 1.6),) * 2,
    )
    near = VERIFY_SIDE * VERIFY_CENTRE
    return max(
        (
            int(count)
            for (x, y, w, h), count in zip(rects, counts, strict=True)
            if abs(x + w / 2 - out / 2) < near and abs(y + h / 2 - out / 2) < near
        ),
        default=0,
    )


def _search(grey: np.ndarray, angle: float, min_side: int, min_neighbors: int) -> list[Face]:
    """Faces on a copy rotated by ``angle`` degrees, as boxes of the unrotated picture.

    A face tilted by -angle stands upright in the copy; its box's centre is mapped back
    and the box keeps its side, so it is the upright box around that tilted face.
    """
    import cv2

    height, width = grey.shape
    if angle:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        # The whole picture stays in view: the canvas grows to the rotated bounds.
        out_w, out_h = round(width * cos + height * sin), round(width * sin + height * cos)
        matrix[0, 2] += (out_w - width) / 2
        matrix[1, 2] += (out_h - height) / 2
        image = cv2.warpAffine(grey, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR)
        back = cv2.invertAffineTransform(matrix)
    else:
        image, back = grey, None
    rects, counts = _cascade().detectMultiScale2(
        image,
        scaleFactor=SCALE_FACTOR,
        minNeighbors=min_neighbors,
        minSize=(min_side, min_side),
    )
    faces = []
    for (x, y, w, h), count in zip(rects, counts, strict=True):
        cx, cy = x + w / 2, y + h / 2
        if back is not None:
            cx, cy = (float(v) for v in back @ np.array([cx, cy, 1.0]))
        half_w, half_h = w / 2, h / 2
        faces.append(Face(cx - half_w, cy - half_h, cx + half_w, cy + half_h, float(count), angle))
    return faces


_local = threading.local()


def _cascade(name: str = CASCADE_FILE):
    """A cascade, loaded on first use, one per thread: OpenCV's classifier keeps scratch
    buffers between calls, so one instance must not search in two threads at once."""
    cascades = _local.__dict__.setdefault("cascades", {})
    if name not in cascades:
        import cv2

        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's {name} could not be loaded")
        cascades[name] = cascade
    return cascades[name]
