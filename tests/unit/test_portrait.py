"""Portrait mode without Ray: the crop and paste geometry, the options, and the pipeline's
portrait branch over a fake model."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from serve_app.config import AppConfig, PortraitConfig
from serve_app.errors import NoFace, ServiceError
from serve_app.imaging import portrait
from serve_app.imaging.faces import Face
from serve_app.imaging.pixels import DecodedImage
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import resolve_options
from serve_app.pipeline import stylize as stylize_module
from serve_app.pipeline.keys import result_key
from serve_app.pipeline.stylize import StylizePipeline
from tests.support.faces import ASTRONAUT, built_scene
from tests.support.pictures import SAMPLES

# --- geometry ------------------------------------------------------------------------


def test_square_box_adds_the_margin_and_centres_on_the_face():
    box = portrait.square_box(Face(100, 100, 140, 160), 0.5, 1000, 1000)
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0 == 120  # the longer side (60) + 2 × 0.5 × 60
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (120, 130)


def test_square_box_stays_inside_the_picture_and_square():
    # Near the top-left corner: moved inwards, not cut.
    assert portrait.square_box(Face(0, 0, 40, 40), 0.6, 300, 200) == (0, 0, 88, 88)
    # Near the bottom-right corner.
    assert portrait.square_box(Face(270, 170, 300, 200), 0.6, 300, 200) == (234, 134, 300, 200)
    # Larger than the picture's shorter side: the shorter side, still square.
    x0, y0, x1, y1 = portrait.square_box(Face(100, 20, 250, 170), 0.6, 300, 200)
    assert (x1 - x0, y1 - y0) == (200, 200) and x0 >= 0 and x1 <= 300 and (y0, y1) == (0, 200)


def test_scale_box_maps_into_the_resized_picture():
    assert portrait.scale_box((100, 50, 300, 250), 0.5, 0.5, 200, 150) == (50, 25, 150, 125)
    x0, y0, x1, y1 = portrait.scale_box((0, 0, 1, 1), 0.1, 0.1, 20, 20)
    assert x1 > x0 and y1 > y0  # never empty


def test_square_side_is_a_multiple_of_four():
    assert [portrait.square_side(s) for s in (16, 97, 100, 1023)] == [16, 96, 100, 1020]


def test_feather_mask_is_one_inside_zero_at_the_corners_and_smooth():
    mask = portrait.feather_mask(101, 141, 0.35)
    assert mask.shape == (101, 141) and mask.dtype == np.float32
    assert mask[50, 70] == pytest.approx(1.0)
    assert mask[0, 0] == mask[-1, -1] == 0.0
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    # Soft: values in between, changing little from one pixel to the next.
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 0.1 * mask.size
    assert np.abs(np.diff(mask, axis=1)).max() < 0.1
    # Falls monotonically from the centre along a row, symmetric.
    row = mask[50, 70:]
    assert np.all(np.diff(row) <= 1e-6)
    np.testing.assert_allclose(mask, mask[::-1, ::-1], atol=1e-6)


def test_paste_blends_inside_the_box_and_leaves_the_rest():
    base = np.zeros((100, 120, 3), np.uint8)
    patch = np.full((512, 512, 3), 200, np.uint8)
    out = portrait.paste(base, patch, (20, 10, 80, 70), 0.3)
    assert out[40, 50].tolist() == [200, 200, 200]  # the middle: the patch
    assert out[10, 20].tolist() == [0, 0, 0]  # the box's corner: the base
    assert 0 < out[40, 22, 0] < 200  # near the ellipse's edge: in between
    outside = np.ones(base.shape[:2], bool)
    outside[10:70, 20:80] = False
    assert not out[outside].any()
    assert not base.any()  # the input is untouched


def full_picture(rgb: np.ndarray, alpha=None) -> DecodedImage:
    return DecodedImage(np.ascontiguousarray(rgb), alpha, "PNG")


def test_prepare_and_finish_crop_answers_a_square_of_the_requested_size():
    config = PortraitConfig()
    rgb = np.asarray(Image.open(SAMPLES / "4.jpg").convert("RGB"))
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    faces = [Face(*map(float, ASTRONAUT)), Face(10, 10, 30, 30)]
    prepared = portrait.prepare(full_picture(rgb, alpha), faces, "crop", 96, config)
    assert [crop.shape for crop in prepared.crops] == [(512, 512, 3)]  # the largest only
    out, out_alpha = portrait.finish(
        prepared, [255 - prepared.crops[0]], None, "crop", 97, 1.0, False, 0.3
    )
    assert out.shape == (96, 96, 3) and out_alpha.shape == (96, 96)


def test_prepare_and_finish_paste_keep_the_pictures_shape():
    config = PortraitConfig()
    picture, boxes = built_scene([((300, 300), 100, 0.0), ((900, 300), 60, 0.0)])
    faces = [Face(*box) for box in boxes]
    prepared = portrait.prepare(full_picture(picture), faces, "paste", 320, config)
    assert prepared.photo.rgb.shape == (168, 320, 3)
    assert [crop.shape for crop in prepared.crops] == [(512, 512, 3)] * 2
    styled = [np.zeros_like(crop) for crop in prepared.crops]
    out, _ = portrait.finish(prepared, styled, None, "paste", 320, 1.0, False, 0.35)
    assert out.shape == prepared.photo.rgb.shape
    # Black faces pasted where the faces are; the photo elsewhere (its corners).
    for box in prepared.boxes:
        x0, y0, x1, y1 = box
        assert out[(y0 + y1) // 2, (x0 + x1) // 2].max() == 0
    assert np.array_equal(out[:5, :5], prepared.photo.rgb[:5, :5])
    # A scene style replaces the photo around the faces.
    scene = np.full_like(prepared.photo.rgb, 77)
    out, _ = portrait.finish(prepared, styled, scene, "paste", 320, 1.0, False, 0.35)
    assert (out[:5, :5] == 77).all()


def test_prepare_without_faces_is_the_whole_picture():
    picture, _ = built_scene([])
    prepared = portrait.prepare(full_picture(picture), [], "crop", 128, PortraitConfig())
    assert prepared.crops == [] and prepared.photo.rgb.shape == (68, 128, 3)


# --- options ----------------------------------------------------------------------------

CONFIG = AppConfig.model_validate(
    {"styles": [{"name": "a", "weights": "random"}, {"name": "b", "weights": "random"}]}
)


def test_options_default_off_and_normalise_what_a_mode_ignores():
    options = resolve_options(CONFIG)
    assert (options.portrait, options.background, options.no_face) == ("off", "photo", "error")
    options = resolve_options(CONFIG, portrait="PASTE", background="b", no_face="whole")
    assert (options.portrait, options.background, options.no_face) == ("paste", "b", "whole")
    # background only matters to paste, no_face only to portrait modes: one cache entry.
    assert resolve_options(CONFIG, portrait="crop", background="b").background == "photo"
    off = resolve_options(CONFIG, portrait="off", background="b", no_face="whole")
    assert (off.background, off.no_face) == ("photo", "error")
    assert resolve_options(CONFIG, portrait="", background="", no_face="").portrait == "off"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"portrait": "face"}, "invalid_portrait"),
        ({"portrait": "paste", "background": "nope"}, "invalid_background"),
        ({"background": "Photo"}, "invalid_background"),
        ({"no_face": "ignore"}, "invalid_no_face"),
    ],
)
def test_bad_portrait_options_are_422(kwargs, code):
    with pytest.raises(ServiceError) as raised:
        resolve_options(CONFIG, **kwargs)
    assert (raised.value.status, raised.value.code) == (422, code)


def test_every_portrait_option_is_part_of_the_key():
    identity = ModelIdentity("w", "r")
    keys = {
        result_key("img", resolve_options(CONFIG, **kwargs), identity)
        for kwargs in (
            {},
            {"portrait": "crop"},
            {"portrait": "paste"},
            {"portrait": "paste", "background": "b"},
            {"portrait": "paste", "no_face": "whole"},
            {"portrait": "crop", "no_face": "whole"},
        )
    }
    assert len(keys) == 6
    paste_b = resolve_options(CONFIG, portrait="paste", background="b")
    assert result_key("img", paste_b, identity, ModelIdentity("w2", "r")) != result_key(
        "img", paste_b, identity, ModelIdentity("w3", "r")
    )
    # The deployment's portrait settings too (the cache outlives a redeploy that changes
    # them: it answered the old pictures).
    crop = resolve_options(CONFIG, portrait="crop")
    settings = CONFIG.portrait.model_dump(mode="json")
    wider = {**settings, "margin": settings["margin"] + 0.2}
    assert result_key("img", crop, identity, None, settings) != result_key(
        "img", crop, identity, None, wider
    )


# --- the pipeline's portrait branch -----------------------------------------------------

WEIGHTS = {"a": "weights-a", "b": "weights-b"}


class GatedModel:
    """Holds every call until ``release`` is set, recording what arrived meanwhile."""

    def __init__(self, weights=WEIGHTS):
        self.weights = weights
        self.calls: list[tuple[tuple[int, ...], str]] = []
        self.release = asyncio.Event()

    async def __call__(self, rgb: np.ndarray, style: str) -> StylizedArray:
        self.calls.append((rgb.shape, style))
        await self.release.wait()
        identity = ModelIdentity(self.weights[style], "cpu/fp32")
        return StylizedArray(255 - rgb, identity, 0.0, 1.0, len(self.calls))


class DictCache:
    def __init__(self):
        self.data = {}

    async def get(self, key):
        return self.data.get(key)

    async def put(self, key, value):
        self.data[key] = value


def jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def two_faces() -> bytes:
    picture, _ = built_scene([((300, 330), 120, 0.0), ((950, 330), 120, 0.0)])
    return jpeg(picture)


def run_pipeline(data: bytes, model: GatedModel | None = None, expect: int = 1, **options):
    """Two stylize calls of one picture; the model holds its answers until ``expect``
    calls have arrived (or a few seconds have passed)."""
    model = model or GatedModel()
    cache = DictCache()
    pipeline = StylizePipeline(CONFIG, cache, model, WEIGHTS)

    async def go():
        task = asyncio.ensure_future(pipeline.stylize(data, resolve_options(CONFIG, **options)))
        for _ in range(1000):
            if task.done() or len(model.calls) >= expect:
                break
            await asyncio.sleep(0.01)
        model.arrived_together = len(model.calls)
        model.release.set()
        first = await task
        again = await pipeline.stylize(data, resolve_options(CONFIG, **options))
        return first, again

    first, again = asyncio.run(go())
    return first, again, model, cache


def test_paste_sends_every_face_at_once_and_keeps_the_aspect(two_faces):
    first, again, model, cache = run_pipeline(
        two_faces, portrait="paste", size=256, background="b", expect=3
    )
    # Both faces and the background were asked for before any answer came back: the
    # faces form one batch of one shape.
    assert model.arrived_together == 3
    faces = [call for call in model.calls if call[1] == "a"]
    assert faces == [((512, 512, 3), "a")] * 2
    assert [call for call in model.calls if call[1] == "b"] == [((136, 256, 3), "b")]
    assert (first.width, first.height) == (256, 136)
    assert (first.cache, again.cache) == ("miss", "hit")
    assert "detect" in first.timings_ms
    assert len(cache.data) == 1


def test_crop_answers_a_square_of_the_requested_size():
    data = (SAMPLES / "4.jpg").read_bytes()
    first, _, model, _ = run_pipeline(data, portrait="crop", size=100)
    assert model.calls == [((512, 512, 3), "a")]
    assert (first.width, first.height) == (100, 100)
    assert Image.open(io.BytesIO(first.data)).size == (100, 100)


def test_no_face_is_a_422_unless_whole_is_asked_for():
    data = (SAMPLES / "3.jpg").read_bytes()
    with pytest.raises(NoFace) as raised:
        run_pipeline(data, portrait="crop", size=64)
    assert (raised.value.status, raised.value.to_dict()["error"]["code"]) == (422, "no_face")
    first, again, model, _ = run_pipeline(data, portrait="paste", no_face="whole", size=64)
    assert model.calls == [((32, 64, 3), "a")]  # the whole picture, as without portrait
    assert (first.width, first.height, again.cache) == (64, 32, "hit")


def test_a_background_run_on_other_weights_is_not_cached(two_faces):
    model = GatedModel(weights={"a": "weights-a", "b": "old-weights-b"})
    first, again, _, cache = run_pipeline(
        two_faces, model, portrait="paste", size=128, background="b", expect=3
    )
    assert first.cache == again.cache == "miss"
    assert cache.data == {}


# --- the CLI ----------------------------------------------------------------------------


def test_cli_portrait_crop_paste_and_no_face(tmp_path, capsys):
    from serve_app.cli.main import main

    args = ["--style", "random", "--precision", "fp32"]
    astronaut = str(SAMPLES / "4.jpg")
    crop = tmp_path / "crop.png"
    assert (
        main(["stylize", astronaut, "-o", str(crop), "--portrait", "crop", "--size", "64", *args])
        == 0
    )
    assert Image.open(crop).size == (64, 64)
    scene = tmp_path / "scene.jpg"
    scene.write_bytes(jpeg(built_scene([((400, 300), 100, 0.0)])[0]))
    paste = tmp_path / "paste.png"
    rc = main(
        ["stylize", str(scene), "-o", str(paste), "--portrait", "paste", "--size", "128",
         "--background", "random", *args]
    )  # fmt: skip
    assert rc == 0
    assert Image.open(paste).size == (128, 68)
    forest = str(SAMPLES / "3.jpg")
    assert (
        main(["stylize", forest, "-o", str(tmp_path / "x.png"), "--portrait", "crop", *args]) == 1
    )
    assert "no face found" in capsys.readouterr().err
    whole = tmp_path / "whole.png"
    rc = main(
        ["stylize", forest, "-o", str(whole), "--portrait", "crop", "--no-face", "whole",
         "--size", "64", *args]
    )  # fmt: skip
    assert rc == 0 and Image.open(whole).size == (64, 32)


def test_a_portrait_key_follows_opencv_s_version(monkeypatch):
    """Its cascades find the faces: an upgrade may find others, and the cache, outliving
    deploys, must not answer with the old pictures. A plain picture's key never asks
    (OpenCV is imported by the first portrait only)."""
    pipeline = StylizePipeline(CONFIG, DictCache(), GatedModel(), WEIGHTS)
    crop, plain = resolve_options(CONFIG, portrait="crop"), resolve_options(CONFIG)

    def keys(version: str) -> tuple[str, str]:
        monkeypatch.setattr(stylize_module, "search_version", lambda: version)
        return tuple(asyncio.run(pipeline.key_of(b"img", options)) for options in (crop, plain))

    (crop_old, plain_old), (crop_new, plain_new) = keys("4.8.0"), keys("4.11.0")
    assert crop_old != crop_new and plain_old == plain_new


def test_where_faces_overlap_the_larger_one_stays_on_top():
    """Faces come largest first; the smaller neighbour's patch, stylized at another scale,
    was pasted over the main face's cheek."""
    base = np.zeros((100, 100, 3), np.uint8)
    big = ((0, 0, 100, 100), np.full((100, 100, 3), 200, np.uint8), None)
    small = ((60, 30, 100, 70), np.full((40, 40, 3), 50, np.uint8), None)
    out = portrait.compose(base, [big, small], feather=0.35)
    assert out[50, 80].tolist() == [200, 200, 200]  # inside both, in the big face's core


@pytest.mark.parametrize(
    "face",
    [Face(0, 0, 200, 200), Face(0, 300, 200, 500), Face(1000, 600, 1200, 800)],
    ids=["corner", "left edge", "far corner"],
)
def test_a_face_at_the_picture_s_edge_is_pasted_whole(face):
    """Its square is moved inwards to stay in the picture; the ellipse around the square's
    middle left half the face photo. Around the face's own centre, all of it is stylized."""
    config = PortraitConfig()
    full = DecodedImage(np.zeros((800, 1200, 3), np.uint8), None, "jpeg")
    prepared = portrait.prepare(full, [face], "paste", 600, config)
    styled = [np.full((config.face_size, config.face_size, 3), 200, np.uint8)]
    rgb, _ = portrait.finish(prepared, styled, None, "paste", 600, 1.0, False, config.feather)
    x0, y0, x1, y1 = (round(v / 2) for v in (face.x0, face.y0, face.x1, face.y1))
    assert (rgb[y0:y1, x0:x1] > 100).all()  # more stylized than photo everywhere on it


def test_around_pasted_faces_the_photo_is_unchanged_whatever_the_controls():
    """``preserve_color`` recoloured the whole picture by up to 15 levels (an 8-bit colour
    round trip), the photo around the faces too."""
    config = PortraitConfig()
    rng = np.random.default_rng(5)
    photo = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
    full = DecodedImage(photo, None, "jpeg")
    prepared = portrait.prepare(full, [Face(250, 150, 350, 250)], "paste", 600, config)
    styled = [np.full((config.face_size, config.face_size, 3), 90, np.uint8)]
    rgb, _ = portrait.finish(prepared, styled, None, "paste", 600, 0.8, True, config.feather)
    x0, y0, x1, y1 = prepared.boxes[0]
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (rgb[outside] == photo[outside]).all()
    assert (rgb[200, 300] != photo[200, 300]).any()  # the face itself is stylized
