"""What the ``animegan`` command says and how it ends: its lines on stdout, its messages on
stderr (past any progress bar) and its exit codes, shared by every subcommand."""

from __future__ import annotations

import sys

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
