"""A closed-loop HTTP load generator: ``concurrency`` clients, each sending its next
request as soon as the previous one is answered.

Closed loop at a fixed concurrency is what makes points comparable: the offered load is
set by the client count, not by a rate the server may not sustain. Each point runs a
warm-up (discarded), then a measured window; requests still in flight when the window
closes are awaited (so the next point starts on an idle server) but not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import aiohttp
import numpy as np

from load_tests.workloads import MULTIPART_CONTENT_TYPE, UploadSource, multipart_body

ERROR_BACKOFF_S = 0.05


@dataclass(frozen=True)
class Sample:
    start: float
    end: float
    status: int  # HTTP status, or -1 when no answer came
    cache: str | None  # the X-Cache header, where the server sends one


@dataclass(frozen=True)
class Phase:
    warmup_s: float
    duration_s: float


@dataclass
class PointResult:
    """One (target, workload, size, concurrency) point."""

    target: str
    workload: str
    size: int | None
    concurrency: int
    duration_s: float
    completed: int
    errors: int
    throughput: float  # successful answers per second in the window
    p50_ms: float | None
    p95_ms: float | None
    mean_ms: float | None
    statuses: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    answered: int = 0  # 200s over the whole point: warm-up, window and drain
    other_cpu_cores: float | None = None  # CPU used by processes outside the benchmark
    cpu_ms_per_answer: dict[str, float] = field(default_factory=dict)  # by process role
    cpu_cores_used: float | None = None  # the server's and the client's CPU over the point

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples: list[Sample], window: tuple[float, float], **labels) -> PointResult:
    """Figures of the samples that ended inside ``window`` (perf_counter seconds)."""
    start, end = window
    inside = [s for s in samples if start <= s.end <= end]
    ok = [s for s in inside if s.status == 200]
    latencies_ms = np.array([(s.end - s.start) * 1e3 for s in ok])
    has = latencies_ms.size > 0
    return PointResult(
        **labels,
        duration_s=end - start,
        completed=len(ok),
        errors=len(inside) - len(ok),
        throughput=len(ok) / (end - start),
        p50_ms=float(np.percentile(latencies_ms, 50)) if has else None,
        p95_ms=float(np.percentile(latencies_ms, 95)) if has else None,
        mean_ms=float(latencies_ms.mean()) if has else None,
        statuses=dict(Counter(str(s.status) for s in inside)),
        cache=dict(Counter(s.cache for s in ok if s.cache)),
        answered=sum(s.status == 200 for s in samples),
    )


async def _send(session: aiohttp.ClientSession, url: str, data: bytes) -> Sample:
    start = time.perf_counter()
    try:
        async with session.post(
            url, data=multipart_body(data), headers={"Content-Type": MULTIPART_CONTENT_TYPE}
        ) as response:
            await response.read()
            status, cache = response.status, response.headers.get("X-Cache")
    except (aiohttp.ClientError, asyncio.TimeoutError):
        status, cache = -1, None
    return Sample(start, time.perf_counter(), status, cache)


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    next_upload: UploadSource,
    stop_at: float,
    samples: list[Sample],
) -> None:
    while time.perf_counter() < stop_at:
        sample = await _send(session, url, next_upload())
        samples.append(sample)
        if sample.status < 0:  # no server: do not spin on the CPU the server would use
            await asyncio.sleep(ERROR_BACKOFF_S)


async def _closed_loop(
    url: str, next_upload: UploadSource, concurrency: int, phase: Phase, timeout_s: float
) -> tuple[list[Sample], tuple[float, float]]:
    samples: list[Sample] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        begin = time.perf_counter()
        window = (begin + phase.warmup_s, begin + phase.warmup_s + phase.duration_s)
        clients = [
            _client(session, url, next_upload, window[1], samples) for _ in range(concurrency)
        ]
        await asyncio.gather(*clients)
    return samples, window


def run_point(
    url: str,
    next_upload: UploadSource,
    concurrency: int,
    phase: Phase,
    *,
    target: str,
    workload: str,
    size: int | None,
    timeout_s: float = 120.0,
) -> PointResult:
    """Run one closed-loop point against ``url`` (POST, multipart field ``image``)."""
    samples, window = asyncio.run(_closed_loop(url, next_upload, concurrency, phase, timeout_s))
    return summarize(
        samples, window, target=target, workload=workload, size=size, concurrency=concurrency
    )
