"""The shared result cache's ceiling: operations/s of the ResultCache actor(s).

    python -m load_tests.cache_bench                    # shards 1, 2, 4 (about 1.5 min)
    python -m load_tests.cache_bench --quick --shards 1 2

Caller processes (Ray actors standing in for ingress replicas) each hold a ``CacheClient``
with the per-ingress L1 off, so every call reaches a shard, exactly as an ingress replica's
L1 misses do. Each runs ``--concurrency`` async callers for ``--duration`` seconds per case.
Cases: ``get`` of a present key and ``put`` of a new one, with a small value (1 KiB) and a
PNG-sized one (200 KiB, about a 512 px PNG). Values above 100 KiB travel through Ray's
object store, smaller ones inline in the RPC: the two sizes cost differently.

It starts a private local Ray (never joins a cluster), prints a table and writes JSON to
``load_tests/results/cache_bench.json``. On a 2-core machine the callers and the shards
share the cores, so more shards cannot show much scaling there: read the single-shard
ceiling as "one actor process, one core" and the shard rows for what they are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import ray

from serve_app.cache import CacheClient, CachedImage, get_or_create_cache_shards, image_digest

REPO = Path(__file__).resolve().parents[1]
SMALL = 1024
PNG_SIZED = 200 * 1024
PRODUCTION_TIMEOUT_S = 0.25  # CacheConfig.timeout_s: a slower call is a miss in production
CASES = (("get", SMALL), ("get", PNG_SIZED), ("put", SMALL), ("put", PNG_SIZED))


@dataclass
class CaseResult:
    shards: int
    op: str
    value_bytes: int
    callers: int  # processes
    concurrency: int  # async callers per process
    ops_per_s: float
    mb_per_s: float
    p50_ms: float
    p99_ms: float
    over_timeout: float  # share of calls slower than the production cache timeout
    misses: int  # gets that found nothing (should be 0: the keys are present)
    errors: int  # failed or timed-out calls (CacheClient counts them)
    shard_cpu: float  # CPU use of the busiest shard process (1.0 = one core all the time)
    caller_cpu: float  # CPU use of the caller processes, summed


@ray.remote(num_cpus=0)
class Caller:
    """One stand-in ingress replica: a CacheClient, L1 off, and a burst of async callers."""

    def __init__(self, base_name: str, shards: int, max_bytes: int, timeout_s: float):
        self._client = CacheClient(base_name, shards, max_bytes, None, 0, timeout_s)
        self._tag = uuid.uuid4().hex

    def pid(self) -> int:
        return os.getpid()

    async def connect(self) -> int:
        stats = await self._client.stats()  # one call per shard: every handle resolved
        return stats["shards_answered"]

    async def fill(self, keys: list[str], size: int) -> None:
        value = CachedImage(os.urandom(size), "image/png", 512, 512)
        await asyncio.gather(*(self._client.put(key, value) for key in keys))

    async def run(
        self, op: str, keys: list[str], size: int, concurrency: int, duration_s: float, at: float
    ) -> dict:
        value = CachedImage(os.urandom(size), "image/png", 512, 512)
        await asyncio.sleep(max(0.0, at - time.time()))  # all callers start together
        errors_before = self._client._errors
        latencies: list[float] = []
        misses = 0
        end = time.perf_counter() + duration_s

        async def caller(index: int) -> None:
            nonlocal misses
            n = index
            while time.perf_counter() < end:
                start = time.perf_counter()
                if op == "get":
                    if await self._client.get(keys[n % len(keys)]) is None:
                        misses += 1
                else:
                    await self._client.put(image_digest(f"{self._tag}-{n}".encode()), value)
                latencies.append(time.perf_counter() - start)
                n += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return {
            "ops": len(latencies),
            "elapsed_s": time.perf_counter() - started,
            "latencies": latencies,
            "misses": misses,
            "errors": self._client._errors - errors_before,
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _cpu_seconds(processes: list[psutil.Process]) -> list[float]:
    times = [process.cpu_times() for process in processes]
    return [t.user + t.system for t in times]


def run_shards(
    shards: int, callers: int, concurrency: int, duration_s: float, max_bytes: int
) -> list[CaseResult]:
    base = f"cache-bench-{uuid.uuid4().hex[:8]}"
    actors = get_or_create_cache_shards(base, shards, max_bytes, None)
    # Generous client timeout: measure the ceiling, count the slow calls separately.
    clients = [Caller.remote(base, shards, max_bytes, 10.0) for _ in range(callers)]
    assert all(n == shards for n in ray.get([c.connect.remote() for c in clients]))
    shard_processes = [psutil.Process(_pid(actor)) for actor in actors]
    caller_processes = [psutil.Process(ray.get(c.pid.remote())) for c in clients]
    results = []
    try:
        for op, size in CASES:
            keys = [image_digest(f"{base}-{size}-{i}".encode()) for i in range(64)]
            if op == "get":
                ray.get(clients[0].fill.remote(keys, size))
            at = time.time() + 0.5
            calls = [c.run.remote(op, keys, size, concurrency, duration_s, at) for c in clients]
            time.sleep(max(0.0, at - time.time()))
            shard_cpu, caller_cpu = _cpu_seconds(shard_processes), _cpu_seconds(caller_processes)
            replies = ray.get(calls)
            shard_cpu = [
                b - a for a, b in zip(shard_cpu, _cpu_seconds(shard_processes), strict=True)
            ]
            caller_cpu = [
                b - a for a, b in zip(caller_cpu, _cpu_seconds(caller_processes), strict=True)
            ]
            latencies = [x for reply in replies for x in reply["latencies"]]
            elapsed = max(reply["elapsed_s"] for reply in replies)
            ops = sum(reply["ops"] for reply in replies)
            result = CaseResult(
                shards=shards,
                op=op,
                value_bytes=size,
                callers=callers,
                concurrency=concurrency,
                ops_per_s=ops / elapsed,
                mb_per_s=ops * size / elapsed / 1e6,
                p50_ms=percentile(latencies, 0.50) * 1e3,
                p99_ms=percentile(latencies, 0.99) * 1e3,
                over_timeout=sum(x > PRODUCTION_TIMEOUT_S for x in latencies) / max(1, ops),
                misses=sum(reply["misses"] for reply in replies),
                errors=sum(reply["errors"] for reply in replies),
                shard_cpu=max(shard_cpu) / elapsed,
                caller_cpu=sum(caller_cpu) / elapsed,
            )
            print(row(result), flush=True)
            results.append(result)
    finally:
        for actor in [*clients, *actors]:
            ray.kill(actor)
    return results


HEADER = (
    "| shards | op | value | callers × conc. | ops/s | MB/s | p50 ms | p99 ms "
    "| > 250 ms | busiest shard CPU | callers CPU | misses | errors |\n"
    "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: CaseResult) -> str:
    size = f"{r.value_bytes // 1024} KiB"
    return (
        f"| {r.shards} | {r.op} | {size} | {r.callers} × {r.concurrency} | {r.ops_per_s:,.0f} "
        f"| {r.mb_per_s:,.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.over_timeout:.1%} "
        f"| {r.shard_cpu:.0%} | {r.caller_cpu:.0%} | {r.misses} | {r.errors} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.cache_bench")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--callers", type=int, default=2, help="caller processes")
    parser.add_argument("--concurrency", type=int, default=16, help="async callers each")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per case")
    parser.add_argument("--max-bytes", type=int, default=256 * 2**20, help="all shards")
    parser.add_argument("--quick", action="store_true", help="0.5 s per case (smoke test)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "load_tests" / "results" / "cache_bench.json"
    )
    args = parser.parse_args(argv)
    duration = 0.5 if args.quick else args.duration

    ray.init(
        address="local",  # a private instance: never a recorded cluster
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 2**20,
    )
    started = time.time()
    load_before = os.getloadavg()
    try:
        print(HEADER, flush=True)
        results = [
            result
            for shards in args.shards
            for result in run_shards(
                shards, args.callers, args.concurrency, duration, args.max_bytes
            )
        ]
    finally:
        ray.shutdown()

    best = {
        f"{op} {size // 1024} KiB": max(
            (r.ops_per_s for r in results if (r.op, r.value_bytes) == (op, size)), default=0
        )
        for op, size in CASES
    }
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.time() - started, 1),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            # Other work on the machine skews every figure: the 1-minute load before/after.
            "loadavg_before": load_before[0],
            "loadavg_after": os.getloadavg()[0],
            "ray": ray.__version__,
            "callers": args.callers,
            "concurrency": args.concurrency,
            "duration_s": duration,
        },
        "results": [asdict(r) for r in results],
        "best_ops_per_s": best,
        "median_ops_per_s": statistics.median(r.ops_per_s for r in results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
