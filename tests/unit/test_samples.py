"""The sample photos ship inside the package: the tests need nothing outside the repository."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from tests.support.paths import REPO
from tests.support.pictures import PHOTOS_ENV, SAMPLES, photos_dir, sample_photos

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

EXPECTED = {
    "1.jpg": (1280, 853),
    "2.jpg": (1279, 867),
    "3.jpg": (1280, 672),
    "4.jpg": (512, 512),  # the portrait example (public domain, see the README)
}


def test_samples_are_in_the_repository_and_decode(monkeypatch):
    monkeypatch.delenv(PHOTOS_ENV, raising=False)
    assert SAMPLES == REPO / "serve_app" / "samples"
    paths = sample_photos()
    assert [p.name for p in paths] == sorted(EXPECTED)
    assert all(p.parent == SAMPLES for p in paths)
    for path in paths:
        with Image.open(path) as image:
            image.load()  # the whole file decodes, not just its header
            assert image.format == "JPEG"
            assert (image.size, image.mode) == (EXPECTED[path.name], "RGB")
    readme = (SAMPLES / "README.md").read_text()
    assert "licence" in readme.lower()


def test_samples_are_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["serve_app"]
    package = REPO / "serve_app"
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assert set(SAMPLES.glob("*.jpg")) | {SAMPLES / "README.md"} <= shipped


def test_photos_dir_override(monkeypatch, tmp_path):
    (tmp_path / "mine.jpg").write_bytes((SAMPLES / "3.jpg").read_bytes())
    monkeypatch.setenv(PHOTOS_ENV, str(tmp_path))
    assert photos_dir() == tmp_path
    assert sample_photos() == [tmp_path / "mine.jpg"]

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(PHOTOS_ENV, str(empty))
    with pytest.raises(FileNotFoundError, match=PHOTOS_ENV):
        photos_dir()
