"""What the ``animegan`` command says and how it ends: its lines on stdout, its messages on
stderr (past any progress bar) and its exit codes, shared by every subcommand."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1  # an input, a download or a job failed (a job: or was cancelled, or is late)
EXIT_USAGE = 2  # usage, weights or device error; a file that cannot be read
EXIT_REFUSED = 3  # the service refused the request (4xx): its code and message on stderr
EXIT_UNAVAILABLE = 4  # the service failed (5xx) or could not be reached

# An output file's suffix -> the picture format it asks for.
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)  # keeps a running progress bar intact


def progress_enabled() -> bool:
    return sys.stderr.isatty()


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links too, where both exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def overwritten_input(inputs: Iterable[Path], output: Path) -> str | None:
    """The message refusing ``output`` when it is one of the ``inputs`` (writing it would
    empty the input while it is read, or replace it before it is), else None."""
    for source in inputs:
        if same_file(source, output):
            return f"the output {str(output)!r} is the input {str(source)!r}: choose another name"
    return None


def free_name(folder: Path, stem: str, suffix: str, taken: set[Path]) -> Path:
    """``folder/<stem><suffix>``, or ``<stem>-1<suffix>``, ``-2``... while that path is
    ``taken`` (resolved: an earlier output of this call, or one of its inputs, which an
    output never replaces); the path returned is taken from then on."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.resolve() in taken:
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    taken.add(path.resolve())
    return path
