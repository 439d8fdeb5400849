"""Result cache: key derivation, a bytes-bounded LRU, the shared cache actor and its client.

The request path (see DESIGN.md) looks a result up in three places: an in-process L1 of
the ingress replica, then one shard of the shared ``ResultCache`` actor, then it computes.
The cache is an optimisation only: every failure on the shared path is a miss, never an
error the user sees.

Nothing here touches Ray at import time; Serve imports this module in every replica.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import ray
from cachetools import LRUCache, TTLCache
from ray.actor import ActorHandle

logger = logging.getLogger(__name__)

CACHE_NAMESPACE = "animegan"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # ray._common.constants.HEAD_NODE_RESOURCE_NAME

# Bump when the key's encoding or the meaning of a part changes: old entries then miss
# instead of being served for a request they no longer match.
_KEY_VERSION = 1
_DIGEST_SIZE = 20


@dataclass(frozen=True)
class CachedImage:
    """One encoded result, as stored in the cache and returned to the route."""

    data: bytes
    media_type: str
    width: int
    height: int


def image_digest(data: bytes) -> str:
    """BLAKE2b-160 hex digest of the uploaded bytes."""
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()


def cache_key(
    image_digest: str,
    *,
    style: str,
    weights_digest: str,
    size: int,
    fmt: str,
    quality: int | None,
) -> str:
    """Key of one result: every input that changes the output bytes is part of it.

    JSON of a sorted dict is the canonical encoding, so no two different part tuples can
    produce the same byte string (``("ab", "c")`` vs ``("a", "bc")``) and ``None`` differs
    from ``0``. Parts are taken as given: the caller passes canonical values.
    """
    parts = {
        "v": _KEY_VERSION,
        "image": image_digest,
        "style": style,
        "weights": weights_digest,
        "size": size,
        "format": fmt,
        "quality": quality,
    }
    encoded = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=_DIGEST_SIZE).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int
    hit_ratio: float
    # Entries dropped because their TTL ran out (kept apart from evictions, which mean
    # "the byte bound forced it out" and are the signal for sizing the cache).
    expirations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hit_ratio(hits: int, misses: int) -> float:
    lookups = hits + misses
    return hits / lookups if lookups else 0.0


def _sizeof(value: CachedImage) -> int:
    return len(value.data)


class _CountingLRU(LRUCache):
    """LRUCache that counts the entries the byte bound pushes out."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int]) -> None:
        super().__init__(maxsize, getsizeof=getsizeof)
        self.evictions = 0
        self.expirations = 0

    def popitem(self) -> tuple[Any, Any]:
        # cachetools calls popitem only to make room, so each call is one eviction.
        item = super().popitem()
        self.evictions += 1
        return item


class _CountingTTL(TTLCache):
    """TTLCache that counts evictions (byte bound) and expirations (TTL) apart."""

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float],
        getsizeof: Callable[[Any], int],
    ) -> None:
        # Set first: the overrides below update them.
        self.evictions = 0
        self.expirations = 0
        super().__init__(maxsize, ttl, timer=timer, getsizeof=getsizeof)

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self.evictions += 1
        return item

    def expire(self, now: float | None = None) -> list[tuple[Any, Any]]:
        expired = super().expire(now)
        self.expirations += len(expired)
        return expired


class ByteBoundedLRU:
    """LRU of ``CachedImage`` bounded by the total bytes of their ``data``.

    Thread-safe (cachetools is not): a Serve replica may call it from a worker thread.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float | None = None,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if ttl_s is not None and ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0 or None, got {ttl_s}")
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        # ttl_s of 0 or None: no expiry (a config value of 0 reads naturally as "off").
        self._data: _CountingLRU | _CountingTTL
        if ttl_s:
            self._data = _CountingTTL(max_bytes, ttl_s, timer=timer, getsizeof=_sizeof)
        else:
            self._data = _CountingLRU(max_bytes, getsizeof=_sizeof)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def get(self, key: str) -> CachedImage | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self._misses += 1
            else:
                self._hits += 1
            return value

    def put(self, key: str, value: CachedImage) -> bool:
        """Store ``value``; False (nothing stored, nothing evicted) if it alone is too big."""
        if _sizeof(value) > self._max_bytes:
            return False
        with self._lock:
            self._data[key] = value
        return True

    def stats(self) -> CacheStats:
        with self._lock:
            # currsize and len() drop expired entries first, so the figures are current.
            size = self._data.currsize
            return CacheStats(
                entries=len(self._data),
                bytes=size,
                max_bytes=self._max_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._data.evictions,
                hit_ratio=_hit_ratio(self._hits, self._misses),
                expirations=self._data.expirations,
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        """Drop every entry; counters are kept (they describe the cache's whole life)."""
        with self._lock:
            self._data.clear()


class ResultCache:
    """Body of the shared cache actor: one ``ByteBoundedLRU`` behind async methods.

    Async so that the actor serves calls concurrently on one event loop; the methods never
    await, so each runs to completion without interleaving.
    """

    def __init__(self, max_bytes: int, ttl_s: float | None = None) -> None:
        self._lru = ByteBoundedLRU(max_bytes, ttl_s)

    async def get(self, key: str) -> CachedImage | None:
        return self._lru.get(key)

    async def put(self, key: str, value: CachedImage) -> bool:
        return self._lru.put(key, value)

    async def stats(self) -> dict[str, Any]:
        return self._lru.stats().to_dict()

    async def clear(self) -> None:
        self._lru.clear()

    async def ping(self) -> str:
        return "ok"


def shard_names(base_name: str, shards: int) -> list[str]:
    """Actor names of the shards: always ``f"{base_name}-{i}"``, also for one shard."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return [f"{base_name}-{i}" for i in range(shards)]


@functools.lru_cache(maxsize=1)
def _remote_result_cache() -> Any:
    # Built once, lazily: ray.remote() at import time would be a side effect, and a new
    # ActorClass per call would re-export the class to the cluster every time.
    return ray.remote(ResultCache)


def get_or_create_cache_actor(name: str, max_bytes: int, ttl_s: float | None) -> ActorHandle:
    """The named detached cache actor, created if it does not exist (or died for good).

    Detached: it outlives the Serve app, so a redeploy keeps the cache warm. An existing
    actor keeps the ``max_bytes``/``ttl_s`` it was created with.
    """
    return (
        _remote_result_cache()
        .options(
            name=name,
            namespace=CACHE_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            # On the head, as Serve places its controller: a 0-CPU actor elsewhere could
            # sit on a node the autoscaler removes, taking the shard's entries with it.
            resources={HEAD_NODE_RESOURCE: 0.001},
            max_restarts=-1,
            # No retries: a cache call that was lost is a miss; retrying it behind the
            # client's short timeout buys nothing.
            max_task_retries=0,
        )
        .remote(max_bytes, ttl_s)
    )


def get_or_create_cache_shards(
    base_name: str, shards: int, max_bytes: int, ttl_s: float | None
) -> list[ActorHandle]:
    """One handle per shard; ``max_bytes`` is split evenly over the shards."""
    names = shard_names(base_name, shards)
    return [get_or_create_cache_actor(name, max_bytes // shards, ttl_s) for name in names]


def shard_index(key: str, shards: int) -> int:
    """Stable shard of ``key`` across processes (Python's ``hash()`` is salted per process)."""
    try:
        prefix = int(key[:8], 16)
    except ValueError:  # not one of our hex keys: hash it to get a stable number
        prefix = int(image_digest(key.encode())[:8], 16)
    return prefix % shards


# (shard actor name, per-shard max_bytes, ttl_s) -> handle; tests inject a fake.
Resolver = Callable[[str, int, float | None], Any]


class _RateLimitedWarning:
    """Log at most one warning per interval; the suppressed count goes into the next one."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar warnings suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        logger.warning(msg, *args)


class CacheClient:
    """Two-level cache for an ingress replica: in-process L1, then a shard of the actor.

    Every shard call is bounded by ``timeout_s``; any failure is a miss (``get``) or
    ignored (``put``), counted in ``errors`` and logged at warning, rate-limited.
    """

    def __init__(
        self,
        base_name: str,
        shards: int,
        max_bytes: int,
        ttl_s: float | None,
        local_max_bytes: int,
        timeout_s: float = 0.25,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self._names = shard_names(base_name, shards)
        self._per_shard_bytes = max_bytes // shards
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._resolver: Resolver = resolver or get_or_create_cache_actor
        self._local = ByteBoundedLRU(local_max_bytes, ttl_s)
        self._handles: list[Any | None] = [None] * shards
        self._errors = 0
        self._warn = _RateLimitedWarning()

    @property
    def shards(self) -> int:
        return len(self._names)

    async def connect(self) -> None:
        """Find or create every shard now, outside the per-call time box (creating an
        actor takes longer than a lookup should), so first requests do not miss."""
        for index in range(self.shards):
            try:
                await self._handle(index, deadline=None)
            except Exception as exc:  # calls find it again lazily; never fatal
                self._failed(index, "connect", f"{type(exc).__name__}: {exc}")

    async def get(self, key: str) -> CachedImage | None:
        value = self._local.get(key)
        if value is not None:
            return value
        value = await self._call(shard_index(key, self.shards), "get", key)
        if isinstance(value, CachedImage):
            self._local.put(key, value)
            return value
        return None

    async def put(self, key: str, value: CachedImage) -> None:
        self._local.put(key, value)
        await self._call(shard_index(key, self.shards), "put", key, value)

    async def stats(self) -> dict[str, Any]:
        replies = await asyncio.gather(*(self._call(i, "stats") for i in range(self.shards)))
        answered = [r for r in replies if isinstance(r, dict)]
        return {
            "shared": _sum_stats(answered),
            "local": self._local.stats().to_dict(),
            "errors": self._errors,
            "shards": self.shards,
            "shards_answered": len(answered),
        }

    async def _call(self, index: int, method: str, *args: Any) -> Any:
        """``handle.<method>.remote(*args)`` on one shard, time-boxed; None on any failure."""
        deadline = time.monotonic() + self._timeout_s
        try:
            handle = await self._handle(index, deadline)
            ref = getattr(handle, method).remote(*args)
            return await asyncio.wait_for(ref, max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            # Keep the handle: a slow actor is the same actor when looked up by name again.
            self._failed(index, method, f"timed out after {self._timeout_s:.3f}s")
        except Exception as exc:  # RayActorError, ActorUnavailableError, anything: a miss
            # Drop the handle: the next call looks the actor up by name, and get_if_exists
            # creates a new one if this one died for good.
            self._handles[index] = None
            # Ray's messages can run to many lines of traceback: keep the log line short.
            self._failed(index, method, f"{type(exc).__name__}: {str(exc)[:200]}")
        return None

    async def _handle(self, index: int, deadline: float | None) -> Any:
        """The shard's handle, looked up (or created) by name when there is none yet."""
        handle = self._handles[index]
        if handle is None:
            # The lookup blocks on the GCS: run it off the event loop, within the budget.
            lookup = asyncio.to_thread(
                self._resolver, self._names[index], self._per_shard_bytes, self._ttl_s
            )
            budget = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            handle = await asyncio.wait_for(lookup, budget)
            self._handles[index] = handle
        return handle

    def _failed(self, index: int, method: str, why: str) -> None:
        self._errors += 1
        self._warn(
            "result cache shard %s: %s failed (%s); treated as a miss",
            self._names[index],
            method,
            why,
        )


def _sum_stats(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats of all shards as one cache; hit_ratio is recomputed from the sums."""
    fields = ("entries", "bytes", "max_bytes", "hits", "misses", "evictions", "expirations")
    total = {f: sum(int(r.get(f, 0)) for r in replies) for f in fields}
    total["hit_ratio"] = _hit_ratio(total["hits"], total["misses"])
    return total
