"""`warm_examples` entries: bare names are package samples, and each file is read once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import SAMPLES_DIR, AppConfig, example_path
from serve_app.service.examples import EXAMPLE_ROUTE, document_examples, load_examples, read_example
from tests.support.pictures import SAMPLES, synthetic_jpeg

STYLES = [{"name": "a", "weights": "random"}]


def test_a_bare_file_name_is_a_package_sample_and_paths_stay_paths(tmp_path):
    assert SAMPLES_DIR == SAMPLES
    assert example_path("4.jpg") == SAMPLES / "4.jpg"
    assert example_path(str(tmp_path / "x.jpg")) == tmp_path / "x.jpg"
    assert str(example_path("photos/x.jpg")) == "photos/x.jpg"  # relative: as written
    assert str(example_path("./x.jpg")) == "x.jpg"  # a file in the working directory
    config = AppConfig.model_validate(
        {"styles": STYLES, "warm_examples": ["4.jpg", str(tmp_path / "mine.png")]}
    )
    assert config.example_paths() == {"4.jpg": SAMPLES / "4.jpg", "mine.png": tmp_path / "mine.png"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [(["4.jpg", "/elsewhere/4.jpg"], "unique"), ([".."], "name files"), ([""], "name files")],
)
def test_example_names_must_be_unique_file_names(entries, message):
    with pytest.raises(ValidationError, match=message):
        AppConfig.model_validate({"styles": STYLES, "warm_examples": entries})


def test_examples_are_read_with_their_type_and_upright_size(tmp_path, caplog):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    big = tmp_path / "big.jpg"
    big.write_bytes(synthetic_jpeg(400, 300))
    entries = ["4.jpg", "2.jpg", str(tmp_path / "missing.jpg"), str(text), str(big)]
    config = AppConfig.model_validate(
        {"styles": STYLES, "warm_examples": entries, "limits": {"max_bytes": 600_000}}
    )
    examples = load_examples(config)
    # The configured order; the missing file and the text file are left out.
    assert list(examples) == ["4.jpg", "2.jpg", "big.jpg"]
    portrait = examples["4.jpg"]
    assert portrait.data == (SAMPLES / "4.jpg").read_bytes()
    assert (portrait.media_type, portrait.width, portrait.height) == ("image/jpeg", 512, 512)
    assert (examples["2.jpg"].width, examples["2.jpg"].height) == (1279, 867)
    assert len({e.etag for e in examples.values()}) == 3
    logged = caplog.text
    assert "missing.jpg" in logged and "not a picture" in logged
    assert "big.jpg" not in logged
    assert read_example("big.jpg", big, 100) is None
    assert "larger than limits.max_bytes" in caplog.text


def test_a_sideways_exif_photo_reports_its_upright_size(tmp_path):
    from PIL import Image

    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.new("RGB", (64, 32)).save(path, "JPEG", exif=exif)
    example = read_example("turned.jpg", path, 2**20)
    assert (example.width, example.height) == (32, 64)


def test_the_document_names_the_examples_served_or_leaves_the_route_out():
    def document() -> dict:
        operation = {
            "parameters": [{"name": "name", "in": "path", "schema": {"type": "string"}}],
            "responses": {"200": {"content": {"image/*": {}}}, "404": {}},
        }
        return {"paths": {EXAMPLE_ROUTE: {"get": operation}, "/v1/examples": {"get": {}}}}

    config = AppConfig.model_validate({"styles": STYLES, "warm_examples": ["4.jpg", "3.jpg"]})
    served = document()
    document_examples(served, load_examples(config))
    operation = served["paths"][EXAMPLE_ROUTE]["get"]
    assert operation["parameters"][0]["schema"] == {"type": "string", "enum": ["4.jpg", "3.jpg"]}
    assert list(operation["responses"]["200"]["content"]) == ["image/jpeg"]

    none = document()
    document_examples(none, {})
    assert list(none["paths"]) == ["/v1/examples"]  # the list stays: it answers, empty
