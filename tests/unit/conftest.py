"""Fixtures shared by the unit tests: a local weights server and a tiny registry style.

The official checkpoints are not available here (no internet), so tests register a style
whose SHA-1 is that of a freshly ``torch.save``'d random generator and serve those bytes
from a ``ThreadingHTTPServer`` on 127.0.0.1.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serve_app.model import weights

TINY_STYLE = "tiny_style"


class WeightsServer:
    """Serves ``files`` (URL path -> bytes) with switchable misbehaviour.

    mode: "ok" (serve the file), "wrong" (serve other bytes of the same size), "404",
    "hang" (accept, never answer until stopped), "slow" (wait ``delay_s`` before the body),
    "gated" (send the first half, then wait for ``gate`` before the rest).
    send_length: False leaves out Content-Length (the body then ends at connection close).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.send_length = True
        self.delay_s = 0.5
        self.gate = threading.Event()
        self.stopping = threading.Event()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                mode = server.mode
                if mode == "hang":
                    server.stopping.wait(30)
                    return
                body = server.files.get(self.path)
                if mode == "404" or body is None:
                    self.send_error(404, "Not Found")
                    return
                if mode == "wrong":
                    body = bytes(reversed(body))
                if mode == "slow":
                    server.stopping.wait(server.delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if server.send_length:  # else the body ends when the connection closes
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if mode == "gated":
                        half = len(body) // 2
                        self.wfile.write(body[:half])
                        self.wfile.flush()
                        server.gate.wait(30)
                        self.wfile.write(body[half:])
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def weights_server() -> Iterator[WeightsServer]:
    server = WeightsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class TinyWeights:
    data: bytes
    sha1: str


@pytest.fixture(scope="session")
def tiny_weights() -> TinyWeights:
    """The bytes of a torch.save'd random generator state dict (about 8.6 MB) and their SHA-1."""
    import torch

    from serve_app.model.generator import random_generator

    buf = io.BytesIO()
    torch.save(random_generator(1).state_dict(), buf)
    data = buf.getvalue()
    return TinyWeights(data, weights.git_blob_sha1(data))


@dataclass
class ServedStyle:
    name: str
    entry: weights.OfficialWeights
    server: WeightsServer
    data: bytes
    cache_dir: Path

    @property
    def url(self) -> str:
        return self.entry.url(self.server.base_url)

    @property
    def path(self) -> Path:
        return self.cache_dir / f"{self.name}.pt"

    def leftovers(self) -> list[str]:
        """Files in the cache dir other than the weights file and its lock."""
        if not self.cache_dir.exists():
            return []
        keep = {self.path.name, f"{self.path.name}.lock"}
        return sorted(p.name for p in self.cache_dir.iterdir() if p.name not in keep)


@pytest.fixture
def served_style(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    weights_server: WeightsServer,
    tiny_weights: TinyWeights,
) -> ServedStyle:
    """A registry style (align_corners=False) served by the local server, cache in tmp_path."""
    entry = weights.OfficialWeights(TINY_STYLE, tiny_weights.sha1, align_corners=False)
    monkeypatch.setitem(weights.REGISTRY, TINY_STYLE, entry)
    cache_dir = tmp_path / "weights-cache"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(cache_dir))
    monkeypatch.setenv(weights.WEIGHTS_URL_ENV, weights_server.base_url)
    weights_server.files[f"/weights/{TINY_STYLE}.pt"] = tiny_weights.data
    return ServedStyle(TINY_STYLE, entry, weights_server, tiny_weights.data, cache_dir)


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
