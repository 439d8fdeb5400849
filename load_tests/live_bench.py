"""The live workload: camera streams over ``/v1/live`` (a WebSocket), next to the bare model.

Per repetition, against the service the benchmark started (``run``):

- streams: 1, 4 and 8 clients at once, each sending a 256×192 JPEG every 1/15 s (a 15 fps
  camera asking for ``size=256``), cycling through a few distinct frames cut from the
  sample photos (never the same frame twice in a row); after a warm-up, a measured window:
  per stream the frames answered a second, each answer's latency (the frame's send time to
  the arrival of its stylized frame, matched by ``seq``) and the frames the service
  skipped (a newer frame replaced a waiting one); in all, the frames answered a second
  against the model's own limit at that shape;
- interactive: single photos one after another, idle and while streams run; p50s.

Streams start a fraction of a frame apart, as independent cameras would; a stream sends
on its own clock and never waits for answers (the service drops what it cannot take).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from PIL import Image
from websockets import ConnectionClosed, Subprotocol
from websockets.asyncio.client import ClientConnection, connect

from load_tests.job_bench import photo_p50_ms
from load_tests.report import spread, table
from load_tests.workloads import UploadSource
from serve_app.http.live import LIVE_PROTOCOL

SIZE = 256  # the streams' `size`: the output's longer side
FRAME = (256, 192)  # what the clients send (4:3, already at the size they ask for)
FPS = 15
FRAMES = 8  # distinct frames each stream cycles through
QUALITY = 80
OPEN_TIMEOUT_S = 60
# A window stays open past its planned end until it holds this many answers (a slow or
# busy machine, a --quick run), but at most MAX_EXTENSION_S longer (as loadgen's).
MIN_ANSWERS = 3
MAX_EXTENSION_S = 120.0

# (target, numerator (point, field), denominator (point, field), wanted, higher is better)
TARGETS = (
    *(
        (
            f"live, {n} streams: answered frames/s / min(model limit, frames sent)",
            (f"live {n}", "fps"),
            (f"live {n}", "bound_fps"),
            0.85,
            True,
        )
        for n in (4, 8)
    ),
    *(
        (
            f"live, {n} stream{'s' if n > 1 else ''}: frame p95 / one model pass",
            (f"live {n}", "p95_ms"),
            ("model live", "pass_ms"),
            2.5,
            False,
        )
        for n in (1, 4, 8)
    ),
    (
        "photo p50 during live streams / idle",
        ("live photos", "photo_during_p50_ms"),
        ("live photos", "photo_idle_p50_ms"),
        2.0,
        False,
    ),
)


@dataclass(frozen=True)
class LivePlan:
    streams: tuple[int, ...]  # one point per stream count
    warmup_s: float
    measure_s: float
    photo_streams: int  # streams running while photos are timed
    photos: int  # photos timed idle, and again during the streams


FULL = LivePlan((1, 4, 8), 3.0, 12.0, 4, 12)
QUICK = LivePlan((1,), 0.5, 2.0, 1, 2)


def make_frames(photos: list[Image.Image], count: int = FRAMES, seed: int = 0) -> list[bytes]:
    """``count`` distinct FRAME-sized JPEGs: crops of varied place and scale, at FRAME's
    aspect ratio, of the photos in turn."""
    rng = random.Random(seed)
    width, height = FRAME
    frames = []
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = min(photo.width / width, photo.height / height) * rng.uniform(0.4, 0.95)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = rng.randint(0, photo.width - crop_w), rng.randint(0, photo.height - crop_h)
        buffer = io.BytesIO()
        box = (left, top, left + crop_w, top + crop_h)
        photo.resize(FRAME, Image.Resampling.BILINEAR, box).save(buffer, "JPEG", quality=QUALITY)
        frames.append(buffer.getvalue())
    return frames


# --------------------------------------------------------------------------- one stream


class Answer(NamedTuple):
    at: float  # the stylized frame's arrival
    latency_s: float  # from its frame's send
    seq: int
    skipped: int  # frames the service skipped so far on this stream (its header's count)


@dataclass
class StreamLog:
    sent: list[float] = field(default_factory=list)  # send time of frame ``seq``
    answers: list[Answer] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)  # arrival of each error message
    closed_by_server: str | None = None  # "code reason" when the service ended the stream


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


async def _receive(socket: ClientConnection, log: StreamLog) -> None:
    """Each answer is a JSON header then the stylized frame: the frame's arrival is the
    answer's time."""
    header: dict[str, Any] | None = None
    with contextlib.suppress(ConnectionClosed):
        async for message in socket:
            now = time.perf_counter()
            if isinstance(message, str):
                data = json.loads(message)
                if "error" in data:
                    log.errors.append(now)
                elif "seq" in data:
                    header = data
            elif header is not None:
                seq = header["seq"]
                log.answers.append(Answer(now, now - log.sent[seq], seq, header["skipped"]))
                header = None


async def _send(socket, frames: list[bytes], first: int, start_at: float, stop, log) -> None:
    """A frame every 1/FPS s from ``start_at`` until ``stop``; a late clock skips the frames
    it missed rather than sending them in a burst (a camera does not catch up)."""
    await _sleep_or_stop(start_at - time.perf_counter(), stop)
    tick = 0
    while not stop.is_set():
        log.sent.append(time.perf_counter())
        try:
            await socket.send(frames[(first + len(log.sent)) % len(frames)])
        except ConnectionClosed:
            return
        tick = max(tick + 1, int((time.perf_counter() - start_at) * FPS))
        await _sleep_or_stop(start_at + tick / FPS - time.perf_counter(), stop)


async def _stream(socket, frames, first: int, start_at: float, stop, log: StreamLog) -> None:
    receiver = asyncio.ensure_future(_receive(socket, log))
    await _send(socket, frames, first, start_at, stop, log)
    if not stop.is_set():  # sending ended early: the service closed the stream
        await receiver
        log.closed_by_server = f"{socket.close_code} {socket.close_reason}"
    await socket.close()
    await receiver


# --------------------------------------------------------------------------- one point


def _open(url: str):
    return connect(
        url,
        subprotocols=[Subprotocol(LIVE_PROTOCOL)],
        compression=None,  # JPEG does not deflate: it would only cost CPU
        proxy=None,
        open_timeout=OPEN_TIMEOUT_S,
    )


async def _streams(
    url: str,
    frames: list[bytes],
    count: int,
    warmup_s: float,
    measure_s: float,
    during: Callable[[], Any] | None,
) -> tuple[list[StreamLog], float, float, Any]:
    """``count`` streams at once: all connected, then each starting 1/(count·FPS) s after
    the one before; the window opens after ``warmup_s`` and lasts ``measure_s`` (kept open
    until it holds MIN_ANSWERS answers) or, with ``during``, as long as ``during`` runs (in
    a thread)."""
    logs = [StreamLog() for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(_open(url)) for _ in range(count)]
        stop, base = asyncio.Event(), time.perf_counter()
        tasks = [
            asyncio.ensure_future(
                _stream(
                    socket, frames, i * len(frames) // count, base + i / (count * FPS), stop, log
                )
            )
            for i, (socket, log) in enumerate(zip(sockets, logs, strict=True))
        ]
        opens = base + warmup_s
        await asyncio.sleep(max(0.0, opens - time.perf_counter()))
        result = None
        if during is not None:
            result = await asyncio.to_thread(during)
        else:
            await asyncio.sleep(max(0.0, opens + measure_s - time.perf_counter()))
            give_up = time.perf_counter() + MAX_EXTENSION_S
            while _answers_since(logs, opens) < MIN_ANSWERS and time.perf_counter() < give_up:
                if all(task.done() for task in tasks):
                    break
                await asyncio.sleep(1 / FPS)
        closes = time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)
    return logs, opens, closes, result


def _answers_since(logs: list[StreamLog], opens: float) -> int:
    return sum(answer.at >= opens for log in logs for answer in log.answers)


def _percentile(ms: list[float], share: float) -> float | None:
    return ms[min(len(ms) - 1, int(share * len(ms)))] if ms else None


def _stream_figures(log: StreamLog, opens: float, closes: float) -> dict:
    seconds = closes - opens
    inside = [a for a in log.answers if opens <= a.at <= closes]
    before = [a for a in log.answers if a.at < opens]
    ms = sorted(a.latency_s * 1e3 for a in inside)
    # Skipped: the service's count (as of each answer's sending) between the last answer
    # before the window and the last inside it, of the frames sent between those arrivals
    # (on loopback, about the frames it received meanwhile).
    since = before[-1] if before else Answer(opens, 0.0, -1, 0)
    last = inside[-1] if inside else since
    return {
        "fps": len(inside) / seconds,
        "sent_fps": sum(opens <= t <= closes for t in log.sent) / seconds,
        "answered": len(inside),
        "p50_ms": statistics.median(ms) if ms else None,
        "p95_ms": _percentile(ms, 0.95),
        "skipped": last.skipped - since.skipped,
        "received": bisect.bisect(log.sent, last.at) - bisect.bisect(log.sent, since.at),
        "errors": sum(opens <= t <= closes for t in log.errors),
        "closed_by_server": log.closed_by_server,
    }


def _point(logs: list[StreamLog], opens: float, closes: float) -> dict:
    per_stream = [_stream_figures(log, opens, closes) for log in logs]
    ms = sorted(a.latency_s * 1e3 for log in logs for a in log.answers if opens <= a.at <= closes)
    received = sum(s["received"] for s in per_stream)
    return {
        "streams": len(logs),
        "window_s": closes - opens,
        "fps": sum(s["fps"] for s in per_stream),
        "sent_fps": sum(s["sent_fps"] for s in per_stream),
        "slowest_stream_fps": min(s["fps"] for s in per_stream),
        "p50_ms": statistics.median(ms) if ms else None,
        "p95_ms": _percentile(ms, 0.95),
        "ok": sum(s["answered"] for s in per_stream),
        "skipped": sum(s["skipped"] for s in per_stream),
        "skipped_share": sum(s["skipped"] for s in per_stream) / received if received else None,
        "errors": sum(s["errors"] for s in per_stream)
        + sum(s["closed_by_server"] is not None for s in per_stream),
        "per_stream": per_stream,
    }


def measure(
    url: str,
    frames: list[bytes],
    count: int,
    warmup_s: float,
    measure_s: float,
    during: Callable[[], Any] | None = None,
) -> tuple[dict, Any]:
    """One point: ``count`` streams; its figures, and what ``during`` returned."""
    logs, opens, closes, result = asyncio.run(
        _streams(url, frames, count, warmup_s, measure_s, during)
    )
    return _point(logs, opens, closes), result


def run(
    url: str,
    photo_url: str,
    photos: UploadSource,
    frames: list[bytes],
    plan: LivePlan,
    repeats: int,
    log: Callable[[str, dict], None] = lambda name, figures: None,
) -> dict[str, list[dict]]:
    """The live points, one list entry per repetition: ``live N`` for each stream count,
    ``live photos`` (photo p50s idle and during ``plan.photo_streams`` streams)."""
    points: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for count in plan.streams:
            figures, _ = measure(url, frames, count, plan.warmup_s, plan.measure_s)
            points.setdefault(f"live {count}", []).append(figures)
            log(f"live {count}", figures)
        idle = photo_p50_ms(photo_url, photos, plan.photos)
        figures, busy = measure(
            url,
            frames,
            plan.photo_streams,
            plan.warmup_s,
            0.0,
            lambda: photo_p50_ms(photo_url, photos, plan.photos),
        )
        figures = {**figures, "photo_idle_p50_ms": idle, "photo_during_p50_ms": busy}
        figures.pop("per_stream")
        points.setdefault("live photos", []).append(figures)
        log("live photos", figures)
    return points


def add_bounds(points: dict[str, list[dict]]) -> None:
    """Each stream point's ``bound_fps``: the frames/s the service could answer at best in
    its repetition, the model's limit at the frames' shape or the frames sent if fewer."""
    model = points.get("model live", [])
    for count in stream_counts(points):
        for rep, run_ in enumerate(points[f"live {count}"]):
            limit = model[rep]["rps"] if rep < len(model) else None
            run_["bound_fps"] = None if limit is None else min(limit, run_["sent_fps"])


def stream_counts(points: dict[str, list[dict]]) -> list[int]:
    """The stream counts measured (points ``live N``)."""
    counts = []
    for name in points:
        kind, _, count = name.partition(" ")
        if kind == "live" and count.isdigit():
            counts.append(int(count))
    return sorted(counts)


# --------------------------------------------------------------------------- the report


def _ratios(runs: list[dict], top: str, bottoms: list[float | None]) -> str:
    return spread(
        [
            run.get(top) / bottom if run.get(top) is not None and bottom else None
            for run, bottom in zip(runs, bottoms, strict=False)
        ]
    )


def markdown(points: dict[str, list[dict]], plan: dict) -> list[str]:
    """The live figures as a Markdown section (a list of lines); ``plan``: LivePlan's
    fields as the run used them."""
    model = points.get("model live", [])
    pass_ms = [run.get("pass_ms") for run in model]
    width, height = FRAME
    rows = []
    for count in stream_counts(points):
        runs = points[f"live {count}"]
        cells = [spread([run.get(key) for run in runs]) for key in ("sent_fps", "fps")]
        slowest = spread([run.get("slowest_stream_fps") for run in runs])
        bounds = [run.get("bound_fps") for run in runs]
        vs_model = _ratios(runs, "fps", bounds) + (" (≥ 0.85)" if count >= 4 else "")
        latency = [spread([run.get(key) for run in runs]) for key in ("p50_ms", "p95_ms")]
        vs_pass = _ratios(runs, "p95_ms", pass_ms) + " (≤ 2.5)"
        skipped = spread([run["skipped_share"] for run in runs])
        errors = str(sum(run["errors"] for run in runs))
        rows.append([str(count), *cells, slowest, vs_model, *latency, vs_pass, skipped, errors])
    headers = [
        "streams",
        "frames sent/s",
        "answered/s, all",
        "answered/s, slowest stream",
        "answered / min(model, sent) (goal)",
        "p50 ms",
        "p95 ms",
        "p95 / one model pass (goal)",
        "skipped (share)",
        "errors",
    ]
    photos = points.get("live photos", [])
    idle = spread([run["photo_idle_p50_ms"] for run in photos])
    busy = spread([run["photo_during_p50_ms"] for run in photos])
    ratio = _ratios(photos, "photo_during_p50_ms", [run["photo_idle_p50_ms"] for run in photos])
    model_cell = spread([run.get("rps") for run in model])
    return [
        "## Live: camera streams",
        "",
        table(headers, rows),
        "",
        f"Streams: WebSocket clients of `/v1/live?size={SIZE}`, each sending a {width}×{height} "
        f"JPEG every 1/{FPS} s from {FRAMES} distinct crops of the sample photos (none twice "
        "in a row), started a fraction of a frame apart; after a "
        f"{plan['warmup_s']:g} s warm-up, a window of {plan['measure_s']:g} s. A frame's "
        "latency: its send to the arrival of its stylized frame (matched by `seq`); skipped: "
        "the share of the frames received that a newer one replaced while waiting (the "
        "service's count, from the answers' headers). The model's limit "
        f"at {width}×{height}: {model_cell} frames/s (the best of batch 1 and the Stylizer's "
        f"batch, same process layout), one pass {spread(pass_ms)} ms (batch 1).",
        "",
        f"Single photos one by one (256 px, unique): idle p50 {idle} ms, while "
        f"{plan['photo_streams']} stream(s) run {busy} ms: {ratio}× (goal ≤ 2).",
    ]


def plan_figures(plan: LivePlan) -> dict:
    return {
        "streams": list(plan.streams),
        "warmup_s": plan.warmup_s,
        "measure_s": plan.measure_s,
        "photo_streams": plan.photo_streams,
        "photos": plan.photos,
        "fps": FPS,
        "frame": list(FRAME),
    }
