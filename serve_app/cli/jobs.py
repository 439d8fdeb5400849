"""``animegan jobs``: a running service's jobs over HTTP, from the command line.

    animegan jobs submit clip.mp4 --style paprika --size 512 --wait -o anime.mp4
    animegan jobs list --state done --all
    animegan jobs show ID | follow ID | cancel ID | result ID -o OUT

The stylize flags are the options' own (``cli/flags.py``); the requests are
the client's (``serve_app.client``). Each command prints the job as it is when the command ends on
stdout (``ID STATE``, or the service's JSON with ``--json``); progress and errors go to
stderr. Exit codes: ``cli/output.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.cli.flags import add_service_option_flags, given_option_values
from serve_app.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    err,
    out,
    overwritten_input,
    progress_enabled,
)
from serve_app.client import Client, Download, NoAnswer, ServiceError
from serve_app.client.wire import API_KEY_ENV, DEFAULT_URL, URL_ENV, describe, refused
from serve_app.jobs.records import JOB_STATES, TERMINAL_STATES

EXIT_CODES = (
    "exit codes: 0 done; 1 the job failed, was cancelled or did not end within --wait; "
    "2 usage, or a local file that cannot be read or written; 3 the service refused the "
    "request (4xx: its error code and message on stderr); 4 the service failed (5xx) or "
    "could not be reached"
)


# --- parser ------------------------------------------------------------------------------


def add_jobs_commands(commands: argparse._SubParsersAction) -> None:
    """``animegan jobs ...`` under the command's subcommands."""
    jobs = commands.add_parser(
        "jobs",
        allow_abbrev=False,
        help="a running service's jobs over HTTP: submit, list, show, follow, fetch, cancel",
        description="Reach the jobs of a running service (docs/api.md#jobs). " + EXIT_CODES,
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    common = _common_flags()

    submit = actions.add_parser(
        "submit",
        allow_abbrev=False,
        parents=[common],
        help="submit a picture, animation or video as a job",
        description="POST the file to /v1/jobs with the stylize options given as flags, "
        "and print the job's id and state. " + EXIT_CODES,
        epilog="Put FILE before --wait: `--wait FILE` reads FILE as the seconds.",
    )
    submit.add_argument("file", type=Path, metavar="FILE")
    add_service_option_flags(submit)
    submit.add_argument("--idempotency-key", metavar="K", help="the same key again: the same job")
    submit.add_argument("--webhook", metavar="URL", help="told when the job ends (allow-listed)")
    submit.add_argument(
        "--webhook-events", metavar="EVENTS", help="comma-separated: running,done,failed,cancelled"
    )
    submit.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=math.inf,
        metavar="SECONDS",
        help="follow the job to its end (at most SECONDS), progress on stderr",
    )
    submit.add_argument(
        "-o", "--output", type=Path, metavar="OUT", help="once done, download it to OUT (waits)"
    )
    submit.set_defaults(handler=cmd_submit)

    listing = actions.add_parser(
        "list",
        allow_abbrev=False,
        parents=[common],
        help="your jobs, newest first (needs an API key)",
    )
    listing.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    listing.add_argument("--limit", type=int, metavar="N", help="jobs per page (service: 1..100)")
    listing.add_argument("--cursor", metavar="C", help="the page after this next_cursor")
    listing.add_argument("--all", action="store_true", help="every page, not just the first")
    listing.set_defaults(handler=cmd_list)

    for name, handler, text in (
        ("show", cmd_show, "a job's state, progress and result"),
        ("follow", cmd_follow, "follow a job to its end, progress on stderr"),
        ("cancel", cmd_cancel, "cancel a job and delete its files"),
        ("result", cmd_result, "download a finished job's output"),
    ):
        action = actions.add_parser(
            name, allow_abbrev=False, parents=[common], help=text, description=EXIT_CODES
        )
        action.add_argument("job_id", metavar="ID")
        if name == "result":
            action.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
        action.set_defaults(handler=handler)


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the service (default: ${URL_ENV}, else {DEFAULT_URL})")
    common.add_argument(
        "--key", help=f"API key, sent as `Authorization: Bearer` (default: ${API_KEY_ENV})"
    )
    common.add_argument("--json", action="store_true", help="print the service's JSON")
    common.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds per request (60)"
    )
    return common


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.key, timeout_s=args.timeout)


def _run(body: Callable[[], int]) -> int:
    """A command's exit code; the service's errors and local files' on stderr."""
    try:
        return body()
    except ServiceError as error:
        err(f"animegan: error: {describe(error)}")
        return EXIT_REFUSED if refused(error) else EXIT_UNAVAILABLE
    except OSError as exc:
        err(f"animegan: error: {exc.filename or ''}: {exc.strerror or exc}")
        return EXIT_USAGE


# --- commands ----------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    wait_s = math.inf if args.wait is None and args.output is not None else args.wait

    if args.output is not None:
        refused = overwritten_input([args.file], args.output)
        if refused is not None:
            err(f"animegan: error: {refused}")
            return EXIT_USAGE

    def submit() -> int:
        with _client(args) as client:
            job = client.submit_job(
                args.file,
                idempotency_key=args.idempotency_key,
                webhook=args.webhook,
                webhook_events=args.webhook_events,
                **given_option_values(args),
            )
            if wait_s is None:
                _print_job(job, args.json)
                return EXIT_OK
            err(f"job {job['id']}: submitted")
            job = follow_job(client, job["id"], wait_s, first=job)
            code = _ending(job, wait_s)
            if code == EXIT_OK and args.output is not None:
                _download(client, job["id"], args.output)
            _print_job(job, args.json)
            return code

    return _run(submit)


def cmd_list(args: argparse.Namespace) -> int:
    def listing() -> int:
        with _client(args) as client:
            if args.all:
                jobs, cursor = list(client.jobs(args.state, args.limit)), None
            else:
                page = client.jobs_page(args.state, args.cursor, args.limit)
                jobs, cursor = page["jobs"], page.get("next_cursor")
        if args.json:
            out(json.dumps({"jobs": jobs, "next_cursor": cursor}, indent=2))
            return EXIT_OK
        rows = [("ID", "STATE", "KIND", "PROGRESS", "CREATED")]
        rows += [
            (job["id"], job["state"], job["kind"], _percent(job), _when(job["created_at"]))
            for job in jobs
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if cursor is not None:
            err(f"more jobs: --cursor {cursor} (or --all)")
        return EXIT_OK

    return _run(listing)


def cmd_show(args: argparse.Namespace) -> int:
    def show() -> int:
        with _client(args) as client:
            job = client.job(args.job_id)
        if args.json:
            out(json.dumps(job, indent=2))
        else:
            for name, value in _description(job):
                out(f"{name + ':':<10} {value}")
        return EXIT_OK

    return _run(show)


def cmd_follow(args: argparse.Namespace) -> int:
    def follow() -> int:
        with _client(args) as client:
            job = follow_job(client, args.job_id, math.inf)
        _print_job(job, args.json)
        return _ending(job, math.inf)

    return _run(follow)


def cmd_cancel(args: argparse.Namespace) -> int:
    def cancel() -> int:
        with _client(args) as client:
            _print_job(client.cancel(args.job_id), args.json)
        return EXIT_OK

    return _run(cancel)


def cmd_result(args: argparse.Namespace) -> int:
    def result() -> int:
        with _client(args) as client:
            download = _download(client, args.job_id, args.output)
        if args.json:
            out(json.dumps({"path": str(download.path), "bytes": download.bytes}))
        else:
            out(str(download.path))
        return EXIT_OK

    return _run(result)


# --- following and printing --------------------------------------------------------------


class JobProgress:
    """A followed job on stderr: each state once, as it is reached, and a running job's
    progress (a bar on a terminal; otherwise a line at each tenth)."""

    def __init__(self, bar: bool) -> None:
        self._bar_enabled = bar
        self._bar = None
        self._state: str | None = None
        self._tenths = 0

    def show(self, job: dict) -> None:
        if job["state"] != self._state:
            self.close()
            self._state = job["state"]
            err(f"job {job['id']}: {job['state']}")
        if job["state"] != "running":
            return
        percent = 100 * float(job.get("progress") or 0)
        if self._bar_enabled:
            self._update_bar(job, percent)
        elif int(percent // 10) > self._tenths:
            self._tenths = int(percent // 10)
            err(f"job {job['id']}: running {_percent(job)}{_frames(job)}")

    def _update_bar(self, job: dict, percent: float) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=100,
                desc=f"job {job['id'][:8]}",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}",
            )
        self._bar.update(percent - self._bar.n)
        if job.get("eta_s") is not None:
            self._bar.set_postfix_str(f"{job['eta_s']:.0f} s left{_frames(job)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def follow_job(client: Client, job_id: str, wait_s: float, first: dict | None = None) -> dict:
    """The job at its end (or as it is after ``wait_s``), its progress shown on the way.
    ``first``: the job as known already (the submission's answer)."""
    if first is not None and first["state"] in TERMINAL_STATES:
        return first
    last = first
    progress = JobProgress(bar=progress_enabled())
    try:
        if first is not None:
            progress.show(first)
        for job in client.follow(job_id, None if math.isinf(wait_s) else wait_s):
            last = job
            progress.show(job)
    finally:
        progress.close()
    if last is None:
        raise NoAnswer(f"job {job_id}: the service sent nothing to follow", "bad_response")
    return last


def _ending(job: dict, wait_s: float) -> int:
    """A followed job's exit code, and on stderr why it is not 0."""
    state = job["state"]
    if state == "done":
        return EXIT_OK
    if state == "failed":
        error = job.get("error") or {}
        err(f"job {job['id']} failed: {error.get('code')}: {error.get('message')}")
    elif state == "cancelled":
        err(f"job {job['id']} was cancelled")
    else:
        err(f"job {job['id']} is still {state} after {wait_s:g} s")
    return EXIT_FAILED


def _download(client: Client, job_id: str, target: Path) -> Download:
    download = client.result(job_id, target)
    err(f"job {job_id}: wrote {download.path} ({download.bytes} bytes, {download.media_type})")
    return download


def _print_job(job: dict, as_json: bool) -> None:
    out(json.dumps(job, indent=2) if as_json else f"{job['id']} {job['state']}")


def _description(job: dict) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("state", job["state"]),
        ("kind", job["kind"]),
        ("progress", f"{_percent(job)}{_frames(job)}"),
        ("created", _when(job["created_at"])),
    ]
    if job.get("finished_at"):
        rows.append(("finished", _when(job["finished_at"])))
    elif job.get("eta_s") is not None:
        rows.append(("eta", f"{job['eta_s']:.0f} s"))
    if job.get("error"):
        rows.append(("error", f"{job['error']['code']}: {job['error']['message']}"))
    result = job.get("result")
    if result:
        shape = f"{result['width']}×{result['height']}"
        rows.append(("result", f"{result['media_type']} {shape}, {result['bytes']} bytes"))
    rows.append(("options", json.dumps(job["options"], sort_keys=True)))
    return rows


def _percent(job: dict) -> str:
    return f"{100 * float(job.get('progress') or 0):.0f}%"


def _frames(job: dict) -> str:
    total = job.get("frames_total") or 1
    return f" (frames {job.get('frames_done', 0)}/{total})" if total > 1 else ""


def _when(unix_time: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_time))
