"""``animegan stylize --server URL``: the same command, the work done by a running service.

Each input goes to ``POST /v1/stylize``; a video, or one the service makes as a job
instead (422 ``use_jobs``: a long animation, a size past its synchronous bound), is
submitted to ``POST /v1/jobs``, followed with a bar of its frames, and its result downloaded. Only
the stylize flags given on the command line are sent: the service's defaults (its styles,
not this machine's registry) apply to the rest. ``-`` as the input reads stdin, as the
output writes stdout. Exit codes as the local command's (``cli/output.py``): 1 when an
input failed (each reported on stderr), 4 when the service cannot be reached.
"""

from __future__ import annotations

import argparse
import math
import mimetypes
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serve_app.cli.flags import flag_of
from serve_app.cli.jobs import follow_job
from serve_app.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    SUFFIX_FORMATS,
    err,
    free_name,
    overwritten_input,
)
from serve_app.client import Client, NoAnswer, ServiceError
from serve_app.client.wire import describe, written_whole
from serve_app.errors import UseJobs, error_from_answer
from serve_app.options import option_fields

STDIO = "-"
EXTENSIONS = {"image/jpeg": ".jpg", "video/x-matroska": ".mkv", "video/quicktime": ".mov"}


def given_options(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The stylize options whose flags ``argv`` names (the parser fills in the others with
    the local defaults, which the service does not share)."""
    given = {}
    for option in option_fields():
        flag = flag_of(option)
        if any(word == flag or word.startswith(flag + "=") for word in argv):
            given[option.name] = getattr(args, option.name)
    return given


def cmd_stylize_remote(args: argparse.Namespace, argv: Sequence[str]) -> int:
    options = given_options(args, argv)
    inputs: list[str] = [str(path) for path in args.inputs]
    output = str(args.output)
    single = len(inputs) == 1 and (output == STDIO or not Path(output).is_dir())
    if not single and output == STDIO:
        err("animegan: error: several inputs write to a directory, not to stdout (-o -)")
        return EXIT_USAGE
    if inputs.count(STDIO) > 1:
        err("animegan: error: stdin (-) can be read once")
        return EXIT_USAGE
    if single and STDIO not in (inputs[0], output):
        refused = overwritten_input([Path(inputs[0])], Path(output))
        if refused is not None:
            err(f"animegan: error: {refused}")
            return EXIT_USAGE
    if single and "format" not in options and output != STDIO:
        fmt = SUFFIX_FORMATS.get(Path(output).suffix.lower())
        if fmt is not None:
            options["format"] = fmt
    failed = 0
    taken = {Path(source).resolve() for source in inputs if source != STDIO}  # never replaced
    with Client(args.server, args.key) as client:
        for source in inputs:
            try:
                _stylize_one(client, source, output, single, options, taken)
            except NoAnswer as error:
                err(f"animegan: error: {describe(error)}")
                return EXIT_UNAVAILABLE
            except (ServiceError, OSError) as error:
                failed += 1
                reason = describe(error) if isinstance(error, ServiceError) else str(error)
                err(f"{source}: {reason}")
    if failed:
        err(f"animegan: {failed} of {len(inputs)} input(s) failed")
        return EXIT_FAILED
    return EXIT_OK


def _stylize_one(
    client: Client,
    source: str,
    output: str,
    single: bool,
    options: dict[str, Any],
    taken: set[Path],
) -> None:
    def target_of(media_type: str) -> str:
        return _target(source, output, single, media_type, taken)

    data = sys.stdin.buffer.read() if source == STDIO else Path(source).read_bytes()
    media_type = mimetypes.guess_type(source)[0] if source != STDIO else None
    if media_type is not None and media_type.startswith("video/"):
        _as_job(client, source, data, media_type, options, target_of)  # always a job
        return
    try:
        picture = client.stylize(data, media_type=media_type, **options)
    except UseJobs:
        _as_job(client, source, data, media_type, options, target_of)
        return
    _write(target_of(picture.media_type), picture.data)


def _as_job(
    client: Client,
    source: str,
    data: bytes,
    media_type: str | None,
    options: dict[str, Any],
    target_of: Callable[[str], str],
) -> None:
    """A video, long animation or large print: a job, followed to its end, its result
    fetched."""
    submitted = client.submit_job(data, media_type=media_type, **options)
    job = follow_job(client, submitted["id"], math.inf, first=submitted)
    if job["state"] != "done":
        error = job.get("error") or {}
        code, message = error.get("code", job["state"]), error.get("message", "")
        # The job's own code, without a status: the submission was answered 202.
        raise error_from_answer(code, f"job {job['id']} {job['state']}: {message}", 0)
    target = target_of((job.get("result") or {}).get("media_type", ""))
    if target == STDIO:
        with tempfile.TemporaryDirectory() as folder:
            download = client.result(job["id"], Path(folder) / "result")
            with download.path.open("rb") as file:
                shutil.copyfileobj(file, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return
    client.result(job["id"], target)


def _target(source: str, output: str, single: bool, media_type: str, taken: set[Path]) -> str:
    """Where an input's output goes: ``output`` itself for one input, else a file in the
    ``output`` directory named after the input, with the extension of what came back
    (``a-1.png`` after ``a.png`` when two inputs share a name, or when ``a.png`` is an
    input)."""
    if single:
        return output
    extension = EXTENSIONS.get(media_type) or mimetypes.guess_extension(media_type) or ".bin"
    stem = Path(source).stem if source != STDIO else "stdin"
    return str(free_name(Path(output), stem, extension, taken))


def _write(target: str, data: bytes) -> None:
    if target == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with written_whole(Path(target)) as file:
        file.write(data)
