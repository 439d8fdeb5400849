"""The ``animegan`` command as a user runs it: the installed console script (or
``python -m serve_app.cli`` where it is not installed), in a subprocess of its own."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.paths import REPO


def animegan_command() -> list[str]:
    script = Path(sys.executable).with_name("animegan")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "serve_app.cli"]


def cli_env(url: str, key: str | None) -> dict[str, str]:
    """This environment, reaching the service at ``url`` as ``key`` (None: no key)."""
    env = {**os.environ, "ANIMEGAN_URL": url}
    env.pop("ANIMEGAN_API_KEY", None)
    if key is not None:
        env["ANIMEGAN_API_KEY"] = key
    return env


def run_animegan(
    *args: str, url: str, key: str | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*animegan_command(), *args],
        cwd=REPO,
        env=cli_env(url, key),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class RunningAnimegan:
    """An ``animegan`` command left running, its stderr read line by line as it comes."""

    def __init__(self, *args: str, url: str, key: str | None = None) -> None:
        self.process = subprocess.Popen(
            [*animegan_command(), *args],
            cwd=REPO,
            env=cli_env(url, key),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, text: str, timeout_s: float = 120) -> str:
        """The first stderr line containing ``text``; fails if the command ends first."""
        while True:
            line = self._lines.get(timeout=timeout_s)
            if line is None:
                raise AssertionError(f"the command ended without {text!r}: {self.stderr}")
            self.stderr.append(line)
            if text in line:
                return line

    def finish(self, timeout_s: float = 120) -> tuple[int, str]:
        """Its exit code and stdout once it ends (its stdout is a line: it fits the pipe)."""
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout_s)
        return code, self.process.stdout.read()

    def stop(self) -> None:
        """Killed if still running (by its own pid), its pipes closed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(30)  # the pipe ends with the process
        self.process.stdout.close()
        self.process.stderr.close()
