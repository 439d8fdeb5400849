"""A closed-loop HTTP load generator: ``concurrency`` clients, each sending its next upload
as soon as its previous one is answered.

A fixed client count sets the offered load, whatever rate the server sustains, so points
are comparable. A point has a warm-up (discarded) and a measured window; requests still in
flight when the window closes are awaited (the next point starts on an idle server) but
not counted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter

import httpx

from load_tests.workloads import CONTENT_TYPE, UploadSource, multipart

NO_SERVER_BACKOFF_S = 0.05
# A window stays open past its planned end until it holds this many answers (a slow or
# busy machine, a --quick run), but at most MAX_EXTENSION_S longer.
MIN_ANSWERS = 3
MAX_EXTENSION_S = 300.0


async def _closed_loop(
    url: str, next_upload: UploadSource, concurrency: int, warmup_s: float, measure_s: float
) -> tuple[list[tuple[float, float, int, str | None]], float, float]:
    samples: list[tuple[float, float, int, str | None]] = []  # start, end, status, X-Cache
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        opens = time.perf_counter() + warmup_s
        window = {"closes": opens + measure_s, "answers": 0}
        give_up = window["closes"] + MAX_EXTENSION_S

        def still_open() -> bool:
            now = time.perf_counter()
            return now < window["closes"] or (window["answers"] < MIN_ANSWERS and now < give_up)

        async def one_client() -> None:
            while still_open():
                body = multipart(next_upload())
                start = time.perf_counter()
                try:
                    response = await client.post(
                        url, content=body, headers={"Content-Type": CONTENT_TYPE}
                    )
                    status, cache = response.status_code, response.headers.get("X-Cache")
                except httpx.HTTPError:
                    status, cache = -1, None
                end = time.perf_counter()
                samples.append((start, end, status, cache))
                if status == 200 and end >= opens:
                    if end > window["closes"] and window["answers"] < MIN_ANSWERS:
                        window["closes"] = end
                    window["answers"] += end <= window["closes"]
                if status < 0:  # no server: do not spin on the CPU it would use
                    await asyncio.sleep(NO_SERVER_BACKOFF_S)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return samples, opens, window["closes"]


def run_point(
    url: str, next_upload: UploadSource, concurrency: int, warmup_s: float, measure_s: float
) -> dict:
    """One point (POST, multipart field ``image``) over the requests that ended inside the
    measured window (``measure_s``, or longer; see MIN_ANSWERS): 200s per second, and the
    latencies of every answer, errors included, so that a server timing requests out never
    looks faster for it."""
    samples, opens, closes = asyncio.run(
        _closed_loop(url, next_upload, concurrency, warmup_s, measure_s)
    )
    inside = [s for s in samples if opens <= s[1] <= closes]
    ok = sum(status == 200 for _, _, status, _ in inside)
    ms = sorted((end - start) * 1e3 for start, end, status, _ in inside if status > 0)
    return {
        "concurrency": concurrency,
        "rps": ok / (closes - opens),
        "p50_ms": statistics.median(ms) if ms else None,
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else None,
        "mean_ms": statistics.fmean(ms) if ms else None,
        "ok": ok,
        "ok_all": sum(status == 200 for _, _, status, _ in samples),  # warm-up included
        "errors": len(inside) - ok,
        "cache": dict(Counter(s[3] for s in inside if s[2] == 200 and s[3])),
    }
