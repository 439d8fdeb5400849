"""Result cache: a bytes-bounded LRU, the shared cache actor and its client.

The request path (``pipeline.py``) looks a result up in three places: an in-process L1 of
the ingress replica, then one shard of the shared ``ResultCache`` actor, then it computes.
The cache is an optimisation only: every failure on the shared path is a miss, never an
error the user sees.

The shard actors are detached, so they outlive deploys; the config of the newest deploy
reaches them through ``CacheClient.connect()`` (see there for how a rolling update with
two configs at once is handled).

Nothing here touches Ray at import time; Serve imports this module in every replica.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Protocol

import ray
from cachetools import LRUCache, TTLCache
from ray.actor import ActorHandle

from serve_app.config import CacheConfig

logger = logging.getLogger(__name__)

CACHE_NAMESPACE = "animegan"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # ray._common.constants.HEAD_NODE_RESOURCE_NAME

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


# Memory one entry holds beyond the three variable-size objects _sizeof measures itself
# (the key, the data bytes, the media type string): the CachedImage instance (unpickled,
# as in the actor, it carries a real __dict__) and its two ints, our (value, size) tuple
# and size int, and cachetools' bookkeeping (slots in its data, size and order dicts;
# TTLCache's link and expiry). Without it, 100,000 small results "cost" their data only
# while really taking some 50 MB.
# Measured with tracemalloc (CPython 3.11, cachetools 8.0) over puts of distinct
# 40-character keys and unpickled values, subtracting the three measured objects: ~440
# bytes per entry (LRU) and ~525 (TTL) after 10,000 puts into an unbounded cache; under
# churn behind a bound (100,000+ puts, sampled every 50) up to ~720 (LRU) and ~760 (TTL),
# because dicts keep their capacity after deletions. 800 covers the worst with a margin;
# test_many_tiny_entries_stay_within_the_bound_in_real_memory checks it.
_ENTRY_OVERHEAD = 800


def _sizeof(key: str, value: CachedImage) -> int:
    """Bytes one entry holds: key + data + media type objects + the measured overhead."""
    return (
        sys.getsizeof(key)
        + sys.getsizeof(value.data)
        + sys.getsizeof(value.media_type)
        + _ENTRY_OVERHEAD
    )


class _Entry(NamedTuple):
    value: CachedImage
    size: int  # _sizeof(key, value), computed once: cachetools' getsizeof sees no key


def _entry_size(entry: _Entry) -> int:
    return entry.size


class _CountingLRU(LRUCache):
    """LRUCache that counts the entries the byte bound pushes out."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, getsizeof=_entry_size)
        self.evictions = 0
        self.expirations = 0

    def popitem(self) -> tuple[Any, Any]:
        # cachetools calls popitem only to make room, so each call is one eviction.
        item = super().popitem()
        self.evictions += 1
        return item

    def pop_oldest(self) -> tuple[Any, Any]:
        """The least recently used entry, removed without counting an eviction."""
        return super().popitem()


class _CountingTTL(TTLCache):
    """TTLCache that counts evictions (byte bound) and expirations (TTL) apart."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        # Set first: the overrides below update them.
        self.evictions = 0
        self.expirations = 0
        super().__init__(maxsize, ttl, timer=timer, getsizeof=_entry_size)

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self.evictions += 1
        return item

    def pop_oldest(self) -> tuple[Any, Any]:
        """The least recently used live entry, removed without counting an eviction."""
        return super().popitem()

    def expire(self, now: float | None = None) -> list[tuple[Any, Any]]:
        expired = super().expire(now)
        self.expirations += len(expired)
        return expired


_Store = _CountingLRU | _CountingTTL


def _resize_in_place(store: _Store, maxsize: int) -> bool:
    """Set the store's bound and evict down to it; False if this cachetools cannot.

    cachetools has no public way to change ``maxsize``; ``Cache.__setitem__`` reads the
    name-mangled attribute behind the read-only property, so that is what to set. The
    check afterwards catches a cachetools that renamed it (the caller then rebuilds).
    """
    if not hasattr(store, "_Cache__maxsize"):
        return False
    store._Cache__maxsize = maxsize  # type: ignore[attr-defined]
    if store.maxsize != maxsize:
        return False
    while store.currsize > maxsize:  # TTLCache: expired entries go first, then the LRU
        store.popitem()
    return True


def _drain(store: _Store) -> Iterator[tuple[str, _Entry]]:
    """Remove and yield every live entry, least recently used first."""
    while True:
        try:
            yield store.pop_oldest()
        except KeyError:
            return


class ByteBoundedLRU:
    """LRU of ``CachedImage`` bounded by the memory its entries hold (see ``_sizeof``).

    Thread-safe (cachetools is not): a Serve replica may call it from a worker thread.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float | None = None,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_bounds(max_bytes, ttl_s)
        self._max_bytes = max_bytes
        # ttl_s of 0 or None: no expiry (a config value of 0 reads naturally as "off").
        self._ttl_s = ttl_s or None
        self._timer = timer
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._data: _Store = self._new_store(max_bytes, self._ttl_s)

    def _new_store(self, max_bytes: int, ttl_s: float | None) -> _Store:
        if ttl_s:
            return _CountingTTL(max_bytes, ttl_s, timer=self._timer)
        return _CountingLRU(max_bytes)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def ttl_s(self) -> float | None:
        return self._ttl_s

    def configure(self, max_bytes: int, ttl_s: float | None = None) -> None:
        """Apply a new bound and TTL, keeping the most recently used entries that fit.

        A new bound alone resizes in place (entries keep their expiry times). A new TTL
        rebuilds the store: the entries are carried over, least recently used first, so
        a smaller bound drops the oldest, and each gets the new TTL from now.
        """
        _check_bounds(max_bytes, ttl_s)
        ttl_s = ttl_s or None
        with self._lock:
            self._max_bytes = max_bytes
            if ttl_s == self._ttl_s and _resize_in_place(self._data, max_bytes):
                return
            old, self._ttl_s = self._data, ttl_s
            self._data = self._new_store(max_bytes, ttl_s)
            for key, entry in _drain(old):  # expired ones are counted by old.expire
                if entry.size <= max_bytes:
                    self._data[key] = entry
            # The counters describe the cache's whole life, not one store's.
            self._data.evictions += old.evictions
            self._data.expirations += old.expirations

    def get(self, key: str) -> CachedImage | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            return entry.value

    def put(self, key: str, value: CachedImage) -> bool:
        """Store ``value``; False (nothing stored, nothing evicted) if it alone is too big."""
        size = _sizeof(key, value)
        with self._lock:  # under the lock: configure() may change the bound meanwhile
            if size > self._max_bytes:
                return False
            self._data[key] = _Entry(value, size)
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


def _check_bounds(max_bytes: int, ttl_s: float | None) -> None:
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    if ttl_s is not None and ttl_s < 0:
        raise ValueError(f"ttl_s must be >= 0 or None, got {ttl_s}")


class ResultCache:
    """Body of the shared cache actor: one ``ByteBoundedLRU`` behind async methods.

    Async so that the actor serves calls concurrently on one event loop; the methods never
    await, so each runs to completion without interleaving.

    Besides its bound, a shard remembers which config set it (``layout``: shard count,
    total bytes, TTL) and when that config's client was made (``generation``), so that
    the clients of an older deploy, still running during a rolling update, can neither
    undo the newer config nor bring back shards it released (see ``CacheClient``).
    """

    def __init__(self, max_bytes: int, ttl_s: float | None = None) -> None:
        self._lru = ByteBoundedLRU(max_bytes, ttl_s)
        # Not configured by any client yet (also after a restart, which runs __init__
        # again with the creation arguments): any client may configure it.
        self._generation = 0.0
        self._layout = ""

    async def configure(
        self,
        max_bytes: int,
        ttl_s: float | None = None,
        *,
        generation: float = 0.0,
        layout: str = "",
    ) -> bool:
        """Apply a bound and TTL; False (nothing changed) if a newer config set this shard."""
        if generation < self._generation and layout != self._layout:
            return False
        self._lru.configure(max_bytes, ttl_s)
        self._generation = max(generation, self._generation)
        self._layout = layout
        return True

    async def config(self) -> dict[str, Any]:
        return {
            "max_bytes": self._lru.max_bytes,
            "ttl_s": self._lru.ttl_s,
            "generation": self._generation,
            "layout": self._layout,
        }

    async def get(self, key: str) -> CachedImage | None:
        return self._lru.get(key)

    async def put(self, key: str, value: CachedImage) -> bool:
        return self._lru.put(key, value)

    async def stats(self) -> dict[str, Any]:
        return {**self._lru.stats().to_dict(), "config": await self.config()}

    async def clear(self) -> None:
        self._lru.clear()

    async def ping(self) -> str:
        return "ok"


def shard_names(base_name: str, shards: int) -> list[str]:
    """Actor names of the shards: always ``f"{base_name}-{i}"``, also for one shard."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return [f"{base_name}-{i}" for i in range(shards)]


def shard_number(base_name: str, actor_name: str) -> int | None:
    """``i`` if ``actor_name`` is ``f"{base_name}-{i}"``, else None."""
    match = re.fullmatch(re.escape(base_name) + r"-(0|[1-9][0-9]*)", actor_name)
    return int(match.group(1)) if match else None


def shard_max_bytes(max_bytes: int, shards: int) -> list[int]:
    """Each shard's bound: ``max_bytes`` split as evenly as whole bytes allow, summing to it."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    share, rest = divmod(max_bytes, shards)
    return [share + (1 if i < rest else 0) for i in range(shards)]


@functools.lru_cache(maxsize=1)
def _remote_result_cache() -> Any:
    # Built once, lazily: ray.remote() at import time would be a side effect, and a new
    # ActorClass per call would re-export the class to the cluster every time.
    return ray.remote(ResultCache)


def get_or_create_cache_actor(name: str, max_bytes: int, ttl_s: float | None) -> ActorHandle:
    """The named detached cache actor, created if it does not exist (or died for good).

    Detached: it outlives the Serve app, so a redeploy keeps the cache warm. An existing
    actor keeps its bound and TTL here; ``CacheClient.connect()`` applies a new config
    (and Ray restarts an actor with the arguments it was created with, which
    ``CacheClient.stats()`` corrects).
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
    """One handle per shard; ``max_bytes`` is split over the shards (``shard_max_bytes``)."""
    names = shard_names(base_name, shards)
    bounds = shard_max_bytes(max_bytes, shards)
    return [
        get_or_create_cache_actor(name, bound, ttl_s)
        for name, bound in zip(names, bounds, strict=True)
    ]


def shard_index(key: str, shards: int) -> int:
    """Stable shard of ``key`` across processes (Python's ``hash()`` is salted per process)."""
    try:
        prefix = int(key[:8], 16)
    except ValueError:  # not one of our hex keys: hash it to get a stable number
        prefix = int(image_digest(key.encode())[:8], 16)
    return prefix % shards


class ShardDirectory(Protocol):
    """Where a client finds, creates and releases shard actors (blocking calls; the
    client runs them in a thread). ``RayShardDirectory`` is the real one; tests inject
    a fake."""

    def lookup(self, name: str) -> Any | None:
        """The live (or restarting) actor of that name, None if there is none."""

    def create(self, name: str, max_bytes: int, ttl_s: float | None) -> Any:
        """The actor of that name, created with these arguments if there is none."""

    def names(self) -> list[str]:
        """Names of all live named actors in ``CACHE_NAMESPACE``."""

    def release(self, name: str) -> None:
        """Kill that actor for good, freeing its memory (no-op if it is gone)."""


class RayShardDirectory:
    """The shard actors in the Ray cluster this process is connected to."""

    def lookup(self, name: str) -> ActorHandle | None:
        try:
            return ray.get_actor(name, namespace=CACHE_NAMESPACE)
        except ValueError:  # Ray's "no actor with that name"
            return None

    def create(self, name: str, max_bytes: int, ttl_s: float | None) -> ActorHandle:
        return get_or_create_cache_actor(name, max_bytes, ttl_s)

    def names(self) -> list[str]:
        return [
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == CACHE_NAMESPACE
        ]

    def release(self, name: str) -> None:
        handle = self.lookup(name)
        if handle is not None:
            ray.kill(handle, no_restart=True)


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


class _ShardRetired(Exception):
    """A newer config released this shard: calls to it are misses from now on."""


# connect() waits this long per shard for a new actor to start and take its config: far
# beyond the per-call timeout (an actor process takes seconds to start on a busy node),
# yet bounded, so that a shard that cannot be placed does not hold connect() forever.
_CONNECT_TIMEOUT_S = 60.0


class CacheClient:
    """Two-level cache for an ingress replica: in-process L1, then a shard of the actor.

    Every shard call is bounded by ``config.timeout_s``; any failure is a miss (``get``)
    or ignored (``put``), counted in ``errors`` and logged at warning, rate-limited.

    Config changes reach the detached shards on deploy: ``connect()`` creates missing
    shards, configures every shard with ``config.max_bytes`` split over
    ``config.shards`` (``shard_max_bytes``: the shards together never hold more) and
    ``config.ttl_s``, and releases (kills) shards numbered ``config.shards`` or more,
    left over from a config with more shards.

    During a rolling update the replicas of the old deploy keep their old config for a
    while. Each client carries a ``generation`` (the wall-clock time it was made, so a
    later deploy's clients have a larger one, as long as clocks agree to better than the
    time between deploys) and its ``layout``; a shard ignores ``configure`` from an
    older generation with another layout. From that follow the choices for a shard that
    is gone after the client had a handle to it:

    - Shard 0 is part of every layout: it is re-created (under its name, empty).
    - Shard i > 0 is re-created only if this client's config is still the newest, i.e.
      shard 0 was not configured by a newer generation with another layout. Otherwise
      a newer config released it: it stays gone, and calls to it are quick misses, so
      that old replicas neither crash nor bring back released shards (which nobody
      would release again until the next deploy).

    A shard that Ray restarts in place comes back with the bound it was created with;
    ``stats()`` (which the ingress calls every few seconds under traffic) sees an older
    generation or another layout there and configures it again.
    """

    def __init__(self, config: CacheConfig, *, resolver: ShardDirectory | None = None) -> None:
        self._names = shard_names(config.name, config.shards)
        self._base_name = config.name
        self._bounds = shard_max_bytes(config.max_bytes, config.shards)
        self._ttl_s = config.ttl_s
        self._timeout_s = config.timeout_s
        self._directory: ShardDirectory = resolver or RayShardDirectory()
        self._local = ByteBoundedLRU(config.local_max_bytes, config.ttl_s)
        self._handles: list[Any | None] = [None] * config.shards
        self._retired: set[int] = set()
        self._generation = time.time()
        self._layout = json.dumps([config.shards, config.max_bytes, config.ttl_s])
        self._superseded = False
        self._errors = 0
        self._warn = _RateLimitedWarning()

    @property
    def shards(self) -> int:
        return len(self._names)

    @property
    def generation(self) -> float:
        return self._generation

    async def connect(self) -> None:
        """Create, configure and release shards for this config (see the class doc).

        Runs outside the per-call time box (creating an actor and waiting for it to
        start takes longer than a lookup should), so first requests do not miss. Never
        raises: what fails here is logged, and calls find their shard again lazily.
        """
        # Shard 0 first: whether it takes this config tells whether a newer one has
        # taken over, in which case this client creates and releases nothing.
        owner = await self._connect_shard(0)
        if owner is False:
            self._supersede()
        await asyncio.gather(*(self._connect_shard(i) for i in range(1, self.shards)))
        if owner:
            await self._release_extra_shards()
        elif owner is None:
            logger.warning(
                "result cache: shard %s did not take the config; extra shards not released",
                self._names[0],
            )

    async def _connect_shard(self, index: int) -> bool | None:
        """Find (or create) one shard and configure it: whether it took the config,
        None if it could not be reached."""
        create = index == 0 or not self._superseded
        try:
            deadline = time.monotonic() + _CONNECT_TIMEOUT_S
            await self._handle(index, deadline, create=create)
            return await self._configure(index, deadline)
        except _ShardRetired:
            self._retired.add(index)
        except Exception as exc:  # calls find it again lazily; never fatal
            self._failed(index, "connect", f"{type(exc).__name__}: {str(exc)[:200]}")
        return None

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
        indexes = range(self.shards)
        replies = await asyncio.gather(*(self._call(i, "stats") for i in indexes))
        answered = [r for r in replies if isinstance(r, dict)]
        stale = [
            i
            for i, r in zip(indexes, replies, strict=True)
            if isinstance(r, dict) and self._stale(r)
        ]
        if stale:  # restarted in place, or created by an older client: configure again
            await asyncio.gather(*(self._reconfigure(i) for i in stale))
        return {
            "shared": _sum_stats(answered),
            "local": self._local.stats().to_dict(),
            "errors": self._errors,
            "shards": self.shards,
            "shards_answered": len(answered),
        }

    def _stale(self, reply: dict[str, Any]) -> bool:
        """Whether a shard's stats show a config this client should replace."""
        config = reply.get("config") or {}
        if self._superseded or config.get("layout") == self._layout:
            return False
        if float(config.get("generation", 0.0)) > self._generation:
            self._supersede()  # a newer deploy's config: leave it
            return False
        return True

    async def _reconfigure(self, index: int) -> None:
        try:
            deadline = time.monotonic() + self._timeout_s
            applied = await self._configure(index, deadline)
        except Exception as exc:  # the next stats() call tries again
            self._failed(index, "configure", f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        if not applied:
            self._supersede()

    async def _configure(self, index: int, deadline: float) -> bool:
        """Apply this client's config to one shard; False if a newer config owns it."""
        handle = await self._handle(index, deadline)
        ref = handle.configure.remote(
            self._bounds[index], self._ttl_s, generation=self._generation, layout=self._layout
        )
        return bool(await asyncio.wait_for(ref, _budget(deadline)))

    async def _release_extra_shards(self) -> None:
        """Kill the shards of this cache numbered ``shards`` or more (a config with more
        shards made them; nothing of this config reaches them, so they only hold memory)."""
        try:
            names = await asyncio.to_thread(self._directory.names)
        except Exception as exc:
            logger.warning("result cache: cannot list shard actors (%s); none released", exc)
            return
        for name in names:
            number = shard_number(self._base_name, name)
            if number is None or number < self.shards:
                continue
            try:
                await asyncio.to_thread(self._directory.release, name)
            except Exception as exc:  # another replica may have released it first
                logger.warning("result cache: cannot release shard %s (%s)", name, exc)
            else:
                logger.info(
                    "result cache: released shard %s (config has %d shards)", name, self.shards
                )

    def _supersede(self) -> None:
        if not self._superseded:
            self._superseded = True
            logger.info(
                "result cache: a newer config owns the shards; this replica keeps its "
                "config %s until it is replaced, and creates or releases no shard",
                self._layout,
            )

    async def _call(self, index: int, method: str, *args: Any) -> Any:
        """``handle.<method>.remote(*args)`` on one shard, time-boxed; None on any failure."""
        if index in self._retired:
            return None
        deadline = time.monotonic() + self._timeout_s
        try:
            handle = await self._handle(index, deadline)
            ref = getattr(handle, method).remote(*args)
            return await asyncio.wait_for(ref, _budget(deadline))
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            # Keep the handle: a slow actor is the same actor when looked up by name again.
            self._failed(index, method, f"timed out after {self._timeout_s:.3f}s")
        except _ShardRetired:
            self._retired.add(index)
            self._failed(index, method, "released by a newer config")
        except Exception as exc:  # RayActorError, ActorUnavailableError, anything: a miss
            # Drop the handle: the next call looks the actor up by name again (and
            # re-creates it if it died for good, as the class doc describes).
            self._handles[index] = None
            # Ray's messages can run to many lines of traceback: keep the log line short.
            self._failed(index, method, f"{type(exc).__name__}: {str(exc)[:200]}")
        return None

    async def _handle(self, index: int, deadline: float, *, create: bool | None = None) -> Any:
        """The shard's handle, looked up by name when there is none yet, and created if
        it does not exist and ``create`` (None: if ``_may_create`` says so)."""
        handle = self._handles[index]
        if handle is not None:
            return handle
        name = self._names[index]
        # Look-ups block on the GCS: run them off the event loop, within the budget.
        handle = await _in_thread(deadline, self._directory.lookup, name)
        if handle is None:
            if create is None:
                create = await self._may_create(index, deadline)
            if not create:
                raise _ShardRetired(name)
            bound = self._bounds[index]
            handle = await _in_thread(deadline, self._directory.create, name, bound, self._ttl_s)
        self._handles[index] = handle
        return handle

    async def _may_create(self, index: int, deadline: float) -> bool:
        """Whether a missing shard is this client's to re-create (see the class doc)."""
        if index == 0:
            return True
        if not self._superseded:
            shard0 = await self._handle(0, deadline)
            config = await asyncio.wait_for(shard0.config.remote(), _budget(deadline))
            newer = float(config["generation"]) > self._generation
            if newer and config["layout"] != self._layout:
                self._supersede()
        return not self._superseded

    def _failed(self, index: int, method: str, why: str) -> None:
        self._errors += 1
        self._warn(
            "result cache shard %s: %s failed (%s); treated as a miss",
            self._names[index],
            method,
            why,
        )


def _budget(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


async def _in_thread(deadline: float, fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), _budget(deadline))


def _sum_stats(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats of all shards as one cache; hit_ratio is recomputed from the sums."""
    fields = ("entries", "bytes", "max_bytes", "hits", "misses", "evictions", "expirations")
    total = {f: sum(int(r.get(f, 0)) for r in replies) for f in fields}
    total["hit_ratio"] = _hit_ratio(total["hits"], total["misses"])
    return total
