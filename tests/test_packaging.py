"""The light install: `pip install animegan-serve` (no extra) gives the Python client and
the CLI's remote mode, with neither torch nor Ray, in a fresh venv."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.slow

SERVER_ONLY = {"torch", "ray", "numpy", "pillow", "av", "fastapi", "starlette", "redis"}
STYLIZED = b"\x89PNG\r\n\x1a\nthe service's answer, returned as it came"


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    """A fresh venv with the project installed without extras (from a copy of the files
    the build reads, so no build output lands in the checkout)."""
    root = tmp_path_factory.mktemp("light")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "serve_app", source / "serve_app", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return root / "venv" / "bin"


class StylizeOnly(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/stylize as the service does, with fixed bytes; records the query."""

    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        StylizeOnly.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(STYLIZED)))
        self.send_header("X-Cache", "miss")
        self.end_headers()
        self.wfile.write(STYLIZED)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def service_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StylizeOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_light_install_has_neither_torch_nor_ray(light_venv):
    listed = subprocess.run(
        [light_venv / "python", "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {item["name"].lower() for item in json.loads(listed.stdout)}
    assert "animegan-serve" in installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    imported = subprocess.run(
        [light_venv / "python", "-c", "import serve_app.client, serve_app.cli.main"],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr


def test_the_light_install_sends_a_photo_to_a_service(light_venv, service_url, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 the client sends the bytes as they are")
    target = tmp_path / "anime.png"
    run = subprocess.run(
        [
            light_venv / "animegan",
            "stylize",
            photo,
            "-o",
            target,
            "--server",
            service_url,
            "--size",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == STYLIZED
    assert StylizeOnly.paths[-1].startswith("/v1/stylize?") and "size=256" in StylizeOnly.paths[-1]


def test_the_light_install_says_what_the_local_mode_needs(light_venv, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0")
    run = subprocess.run(
        [light_venv / "animegan", "stylize", photo, "-o", tmp_path / "out.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "pip install 'animegan-serve[server]'" in run.stderr and "--server URL" in run.stderr
