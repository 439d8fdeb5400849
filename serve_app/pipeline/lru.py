"""The result cache's store: a bytes-bounded LRU (optionally with a TTL) of encoded results.

Thread-safe, Ray-free; each shard actor and each ingress replica's L1 hold one.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from cachetools import LRUCache, TTLCache

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


def hit_ratio(hits: int, misses: int) -> float:
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
                hit_ratio=hit_ratio(self._hits, self._misses),
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
