"""Pictures with faces at known places: a real photo's labelled face, and scenes built
by pasting it onto a photo without faces at chosen places, sizes and tilts."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tests.support.pictures import SAMPLES

# Hand-labelled by looking at the pictures (crops zoomed 10× on a 5 px grid): the box from
# the eyebrows' level to the chin, cheek to cheek, as frontal-face detectors draw it.
ASTRONAUT = (180, 80, 270, 170)  # 4.jpg, 512×512: Eileen Collins, frontal


def sample_pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"))


def paste_face(
    picture: np.ndarray, center: tuple[float, float], side: float, angle: float = 0.0
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The astronaut's face (an oval cut with some hair and neck around it) pasted so its
    labelled box is ``side`` px wide, centred at ``center``, tilted by ``angle`` degrees
    (counter-clockwise). Returns the picture and the face's upright box there."""
    x0, y0, x1, y1 = ASTRONAUT
    face_side = x1 - x0
    pad = round(face_side * 0.45)
    cut = Image.fromarray(sample_pixels("4.jpg")).crop((x0 - pad, y0 - pad, x1 + pad, y1 + pad))
    scale = side / face_side
    cut = cut.resize((round(cut.width * scale), round(cut.height * scale)), Image.LANCZOS)
    mask = Image.new("L", cut.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, cut.width - 1, cut.height - 1), fill=255)
    if angle:
        cut = cut.rotate(angle, resample=Image.BICUBIC, expand=True)
        mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
    out = Image.fromarray(picture)
    out.paste(cut, (round(center[0] - cut.width / 2), round(center[1] - cut.height / 2)), mask)
    cx, cy = center
    return np.asarray(out), (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


# (centre, face side, tilt) on the forest photo 3.jpg (1280×672, no face of its own):
# a small face (40 px, 6 % of the shorter side), faces tilted either way, several at once.
BUILT_FACES = [
    ((200, 470), 40, 0.0),
    ((500, 480), 80, 22.0),
    ((900, 450), 160, -22.0),
    ((1150, 150), 60, 0.0),
]


def built_scene(faces=BUILT_FACES) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    picture, boxes = sample_pixels("3.jpg"), []
    for center, side, angle in faces:
        picture, box = paste_face(picture, center, side, angle)
        boxes.append(box)
    return picture, boxes
