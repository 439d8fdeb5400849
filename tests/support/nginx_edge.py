"""The shipped nginx edge (configs/nginx/animegan.conf) for tests: its bounds derived from
an app config, rendered with a test's addresses, and run by the system's nginx.

The shipped file holds literal numbers (nginx cannot read the app's config). Those that
follow from the app's limits are computed here by :func:`derived_directives`;
tests/test_configs.py checks that the shipped file is exactly its own rendering for
AppConfig's defaults, and the edge tests render it for the test application's config, so
that neither the file nor a test writes such a number a second time.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serve_app.config import AppConfig
from serve_app.http.uploads import MULTIPART_OVERHEAD_BYTES
from tests.support.paths import REPO
from tests.support.serve import free_port

SHIPPED = REPO / "configs" / "nginx" / "animegan.conf"
SHIPPED_UPSTREAM = "server 127.0.0.1:8000;"
SHIPPED_LISTEN = "listen 8088;"
SHIPPED_ACCESS_LOG = "access_log /var/log/nginx/access.log animegan;"

MiB = 2**20
SERVER = "server"  # the server block's own level (not one of its locations)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "nginx is not installed: the edge tests run the real nginx "
            "(Debian: apt-get install nginx; .ci/run installs it)",
            pytrace=False,
        )
    return found


def _mib_up(size: int) -> str:
    """A byte count as nginx's size, rounded up to whole MiB (``21m``)."""
    return f"{-(-size // MiB)}m"


def derived_directives(config: AppConfig) -> dict[tuple[str, str], str]:
    """(directive, block) -> value, for every value of the file that follows from the
    app's limits: each body bound is the most the app itself reads on that route (its own
    413 then answers anything between the two); a stalled upload is ended after the same
    idle time at the edge as in the app."""
    picture = config.limits.max_bytes + MULTIPART_OVERHEAD_BYTES
    return {
        ("client_body_timeout", SERVER): f"{config.limits.upload_idle_timeout_s:g}s",
        ("client_max_body_size", SERVER): _mib_up(picture),
        ("client_max_body_size", "location = /v1/stylize/batch"): _mib_up(
            config.max_batch_images * picture
        ),
        ("client_max_body_size", "location = /v1/jobs"): _mib_up(
            config.media.max_bytes + MULTIPART_OVERHEAD_BYTES
        ),
    }


def _block(text: str, block: str) -> tuple[int, int, int]:
    """(start, end, indent of its directives) of ``block``: ``server``, ``upstream <name>``
    or ``location <match>``, each of which the file must hold exactly once."""
    indent = 4 if block.startswith("location ") else 0
    header = f"\n{' ' * indent}{block} {{\n"
    assert text.count(header) == 1, f"{SHIPPED.name}: expected one `{block} {{`"
    start = text.index(header)
    return start, text.index(f"\n{' ' * indent}}}\n", start), indent + 4


def _directive_match(text: str, directive: str, block: str) -> re.Match:
    start, end, indent = _block(text, block)
    pattern = re.compile(rf"^ {{{indent}}}{directive} ([^;]*);", re.MULTILINE)
    found = list(pattern.finditer(text, start, end))
    assert len(found) == 1, f"{SHIPPED.name}: {len(found)}x {directive} in {block}, not once"
    return found[0]


def directive_value(text: str, directive: str, block: str = SERVER) -> str:
    """The value of ``directive`` set in ``block`` itself (exactly once there)."""
    return _directive_match(text, directive, block).group(1)


def set_directive(text: str, directive: str, value: str, block: str = SERVER) -> str:
    match = _directive_match(text, directive, block)
    return text[: match.start(1)] + value + text[match.end(1) :]


def render_for(config: AppConfig, text: str | None = None) -> str:
    """The shipped file with every derived value computed from ``config``."""
    text = SHIPPED.read_text() if text is None else text
    for (directive, block), value in derived_directives(config).items():
        text = set_directive(text, directive, value, block)
    return text


def replace_exactly(text: str, replacements: list[tuple[str, str, int]]) -> str:
    """Swap exact texts, failing when one is no longer in the file as often as expected."""
    for old, new, count in replacements:
        found = text.count(old)
        assert found == count, f"{SHIPPED.name}: expected {old!r} {count}x, found {found}x"
        text = text.replace(old, new)
    return text


def with_rate(text: str, per_s: int, burst: int) -> str:
    """The per-client request budget: ``per_s`` a second, bursts of ``burst``."""
    text, rates = re.subn(r"\brate=\d+r/s", f"rate={per_s}r/s", text)
    text, bursts = re.subn(r"\bburst=\d+ ", f"burst={burst} ", text)
    assert rates == 1 and bursts >= 1, f"{SHIPPED.name}: rate {rates}x, burst {bursts}x"
    return text


def main_config(directory: Path, include: Path) -> str:
    """What the distribution's nginx.conf gives the include: everything under ``directory``."""
    user = ""
    if os.geteuid() == 0:  # workers would run as nobody and could not use the temp dirs
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    temp = directory / "temp"
    return f"""
daemon off;
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {include};
}}
"""


def check_config(directory: Path, text: str) -> subprocess.CompletedProcess:
    """`nginx -t` on ``text`` as the included file (its log path moved into ``directory``)."""
    text = replace_exactly(text, [(SHIPPED_ACCESS_LOG, f"access_log {directory}/a.log;", 1)])
    (directory / "temp").mkdir(exist_ok=True)
    (directory / "animegan.conf").write_text(text)
    (directory / "nginx.conf").write_text(main_config(directory, directory / "animegan.conf"))
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(directory), "-c", str(directory / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )


@dataclass
class Edge:
    host: str
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def log_entry(self, request_id: str, timeout_s: float = 5.0) -> dict:
        """The access-log line of one request (written when nginx lets go of it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.access_log.exists():
                for line in self.access_log.read_text().splitlines():
                    entry = json.loads(line)
                    if entry["request_id"] == request_id:
                        return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {request_id}")
            time.sleep(0.1)


@contextlib.contextmanager
def running_edge(
    directory: Path,
    upstream: str,
    config: AppConfig,
    adjust: Callable[[str], str] = lambda text: text,
) -> Iterator[Edge]:
    """The shipped file rendered for ``config`` (then ``adjust``-ed: a test's own numbers)
    with this test's addresses, served by nginx from ``directory`` until exit."""
    binary = nginx_binary()
    (directory / "temp").mkdir(parents=True)
    port = free_port()
    conf = replace_exactly(
        adjust(render_for(config)),
        [
            (SHIPPED_UPSTREAM, f"server {upstream};", 1),
            (SHIPPED_LISTEN, f"listen 127.0.0.1:{port};", 1),
            (SHIPPED_ACCESS_LOG, f"access_log {directory / 'access.log'} animegan;", 1),
        ],
    )
    (directory / "animegan.conf").write_text(conf)
    main = directory / "nginx.conf"
    main.write_text(main_config(directory, directory / "animegan.conf"))
    output = (directory / "nginx.out").open("wb")
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(main)], stdout=output, stderr=output
    )
    try:
        _wait_listening(process, directory, port)
        yield Edge("127.0.0.1", port, directory)
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown; the master stops its workers
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


def _wait_listening(process: subprocess.Popen, directory: Path, port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            logs = (directory / "nginx.out").read_text()
            if (directory / "error.log").exists():
                logs += (directory / "error.log").read_text()
            pytest.fail(f"nginx exited with {process.returncode}:\n{logs}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            pytest.fail("nginx did not listen within 15 s", pytrace=False)
        time.sleep(0.05)


# ---- Talking to the edge byte by byte ----------------------------------------------


def new_id(label: str) -> str:
    return f"edge-{label}-{uuid.uuid4().hex[:12]}"


def open_socket(edge: Edge, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((edge.host, edge.port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(method: str, path: str, request_id: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: edge.test", f"X-Request-ID: {request_id}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def wait_for_close(sock: socket.socket, timeout_s: float) -> tuple[float, bytes]:
    """Seconds until the peer closed the connection, and anything it sent before."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return time.monotonic() - started, received


def websocket_messages(
    url: str, sock: socket.socket, subprotocols: list[str] | None = None, origin: str | None = None
) -> tuple[list[dict], int | None]:
    """Every JSON message of a WebSocket until the server closes it, and its close code
    (``origin``: the Origin a browser's page would send)."""
    messages = []
    options = {"open_timeout": 30, "subprotocols": subprotocols, "origin": origin}
    with connect(url, sock=sock, **options) as websocket:
        try:
            while True:
                messages.append(json.loads(websocket.recv(timeout=60)))
        except ConnectionClosed as closed:
            return messages, closed.rcvd.code if closed.rcvd else None
