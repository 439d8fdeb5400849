"""Unit tests of serve_app.cache: no Ray instance, shards replaced by fakes."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import pickle
import random
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from serve_app.config import CacheConfig
from serve_app.pipeline.cache_actor import (
    ResultCache,
    shard_index,
    shard_max_bytes,
    shard_names,
    shard_number,
)
from serve_app.pipeline.cache_client import CacheClient
from serve_app.pipeline.lru import (
    _ENTRY_OVERHEAD,
    ByteBoundedLRU,
    CachedImage,
    CacheStats,
    _sizeof,
    image_digest,
)
from tests.support.job_service import until


def img(n: int, tag: str = "x") -> CachedImage:
    """A CachedImage whose data is exactly n bytes long."""
    return CachedImage(data=(tag.encode() * n)[:n], media_type="image/png", width=1, height=1)


def cost(n: int, key: str = "k0") -> int:
    """What an entry of ``img(n)`` under ``key`` counts against the bound."""
    return _sizeof(key, img(n))


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- keys


def test_image_digest_known_value() -> None:
    expected = hashlib.blake2b(b"abc", digest_size=20).hexdigest()
    assert image_digest(b"abc") == expected
    assert len(image_digest(b"")) == 40


def test_sizeof_counts_key_data_media_type_and_overhead() -> None:
    key, value = "k" * 40, img(1000)
    expected = (
        sys.getsizeof(key)
        + sys.getsizeof(value.data)
        + sys.getsizeof(value.media_type)
        + _ENTRY_OVERHEAD
    )
    assert _sizeof(key, value) == expected
    assert _sizeof(key + "longer", value) == expected + len("longer")
    assert _ENTRY_OVERHEAD >= 300  # measured; see the comment at the constant
    cache = ByteBoundedLRU(max_bytes=10**6)
    cache.put(key, value)
    assert cache.stats().bytes == expected  # stats report the accounted size


def test_byte_bound_and_lru_order() -> None:
    size = cost(300)  # keys k0..k4 have the same length, so the same cost
    cache = ByteBoundedLRU(max_bytes=3 * size + size // 2)
    for i in range(4):
        assert cache.put(f"k{i}", img(300))
    # Room for 3: k0 went first.
    assert cache.stats().bytes == 3 * size
    assert cache.get("k0") is None
    # Touch k1, then add: k2 (now least recently used) goes, k1 survives.
    assert cache.get("k1") is not None
    cache.put("k4", img(300))
    assert cache.get("k1") is not None
    assert cache.get("k2") is None
    stats = cache.stats()
    assert stats.bytes <= stats.max_bytes == 3 * size + size // 2
    assert stats.entries == len(cache) == 3
    assert stats.evictions == 2


def test_replacing_a_key_accounts_bytes_once() -> None:
    cache = ByteBoundedLRU(max_bytes=cost(400) + cost(700))
    cache.put("a", img(400))
    cache.put("a", img(700))
    assert cache.stats().bytes == cost(700, "a")
    assert len(cache) == 1
    assert cache.stats().evictions == 0


def test_oversize_value_rejected_without_evicting() -> None:
    bound = cost(600, "a") + cost(400, "b")
    cache = ByteBoundedLRU(max_bytes=bound)
    cache.put("a", img(600))
    cache.put("b", img(400))
    assert cache.put("huge", img(bound)) is False
    assert cache.get("huge") is None
    assert cache.get("a") is not None and cache.get("b") is not None
    assert cache.stats().evictions == 0
    exact = bound - cost(0, "exact")  # the data length whose entry costs exactly the bound
    assert cache.put("exact", img(exact)) is True
    assert cache.put("exact", img(exact + 1)) is False
    # The overhead counts too: 10 bytes of data do not fit in 10 + a few bytes.
    assert ByteBoundedLRU(max_bytes=100).put("k", img(10)) is False


def test_hit_miss_counters_and_ratio() -> None:
    cache = ByteBoundedLRU(max_bytes=10_000)
    assert cache.stats().hit_ratio == 0.0  # no lookups yet: no division by zero
    cache.put("a", img(10))
    cache.get("a")
    cache.get("a")
    cache.get("a")
    cache.get("nope")
    s = cache.stats()
    assert (s.hits, s.misses) == (3, 1)
    assert s.hit_ratio == pytest.approx(0.75)
    assert s.to_dict()["hit_ratio"] == pytest.approx(0.75)
    assert isinstance(s, CacheStats)


def test_clear_keeps_counters() -> None:
    cache = ByteBoundedLRU(max_bytes=10_000)
    cache.put("a", img(10))
    cache.get("a")
    cache.clear()
    s = cache.stats()
    assert (s.entries, s.bytes, s.hits) == (0, 0, 1)
    assert cache.get("a") is None


def test_ttl_expiry_with_fake_timer() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=10_000, ttl_s=10.0, timer=timer)
    cache.put("a", img(100))
    timer.now += 5
    cache.put("b", img(100))
    assert cache.get("a") is not None
    timer.now += 6  # a is 11 s old, b 6 s
    assert cache.get("a") is None
    assert cache.get("b") is not None
    s = cache.stats()
    assert (s.entries, s.bytes) == (1, cost(100, "b"))
    assert s.expirations == 1
    assert s.evictions == 0
    timer.now += 100
    assert len(cache) == 0
    assert cache.stats().expirations == 2


def test_ttl_cache_still_bounded_by_bytes() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=5 * cost(100), ttl_s=60.0, timer=timer)
    for i in range(10):
        cache.put(str(i), img(100))
    s = cache.stats()
    assert s.bytes == 5 * cost(100, "0")
    assert s.evictions == 5
    assert s.expirations == 0


def test_zero_ttl_means_no_expiry_and_bad_args_rejected() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=10_000, ttl_s=0, timer=timer)
    cache.put("a", img(10))
    timer.now += 1e9
    assert cache.get("a") is not None
    with pytest.raises(ValueError):
        ByteBoundedLRU(max_bytes=-1)
    with pytest.raises(ValueError):
        ByteBoundedLRU(max_bytes=10, ttl_s=-1)


@pytest.mark.parametrize("ttl_s", [None, 30.0])
def test_churn_never_exceeds_bound(ttl_s: float | None) -> None:
    rng = random.Random(1234)
    timer = FakeTimer()
    max_bytes = 64 * 1024
    cache = ByteBoundedLRU(max_bytes=max_bytes, ttl_s=ttl_s, timer=timer)
    stored = rejected = 0
    for i in range(20_000):
        timer.now += 0.01
        size = rng.randint(0, 70 * 1024)  # some larger than the whole cache
        key = f"k{rng.randint(0, 5000)}"
        if cache.put(key, img(size, tag=str(i % 10))):
            stored += 1
        else:
            rejected += 1
            assert cost(size, key) > max_bytes
        if i % 97 == 0:
            assert cache.stats().bytes <= max_bytes
    s = cache.stats()
    assert s.bytes <= max_bytes
    assert s.bytes == sum(_sizeof(k, cache._data[k].value) for k in list(cache._data))
    assert stored > 0 and rejected > 0
    assert s.evictions > 0


@pytest.mark.parametrize("ttl_s", [None, 60.0])
def test_many_tiny_entries_stay_within_the_bound_in_real_memory(ttl_s: float | None) -> None:
    """The bound holds for the memory the cache really takes, not only for data bytes:
    25,000 puts of 10-byte results, with tracemalloc watching everything the cache keeps
    alive (counting data only, all would be kept: some 13 MB)."""
    max_bytes = 2**20
    # Each put unpickles its key and value, as the actor receives them: its own key
    # string, bytes, media type string and ints. Pickled before tracing starts, so that
    # only what the cache keeps is measured.
    blobs = [
        pickle.dumps(
            (image_digest(str(i).encode()), CachedImage(b"%10d" % i, "image/webp", 512, 384))
        )
        for i in range(25_000)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ByteBoundedLRU(max_bytes=max_bytes, ttl_s=ttl_s)
        peak_held = 0
        for i, blob in enumerate(blobs):
            cache.put(*pickle.loads(blob))
            if i % 100 == 0:
                peak_held = max(peak_held, tracemalloc.get_traced_memory()[0] - before)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = cache.stats()
    assert stats.bytes <= max_bytes
    assert max(peak_held, held) <= max_bytes, (peak_held, held, stats)
    assert stats.evictions > 20_000
    # Not far below either: the accounting does not throw most of the room away.
    assert held >= max_bytes // 2, (held, stats)


def test_configure_shrinks_in_place_keeping_the_most_recent() -> None:
    size = cost(100, "k00")
    cache = ByteBoundedLRU(max_bytes=10 * size)
    store = cache._data
    for i in range(10):
        cache.put(f"k{i:02d}", img(100))
    assert cache.get("k00") is not None  # k00 becomes the most recently used
    cache.configure(4 * size)
    assert cache._data is store  # resized in place, not rebuilt
    assert cache.max_bytes == 4 * size
    assert set(cache._data) == {"k00", "k07", "k08", "k09"}
    s = cache.stats()
    assert (s.entries, s.bytes, s.max_bytes, s.evictions) == (4, 4 * size, 4 * size, 6)
    cache.put("k10", img(100))  # the new bound holds for new entries too
    assert cache.stats().bytes == 4 * size
    assert cache.put("big", img(4 * size)) is False


def test_configure_grows_in_place_and_keeps_everything() -> None:
    size = cost(100)
    cache = ByteBoundedLRU(max_bytes=2 * size)
    for i in range(2):
        cache.put(f"k{i}", img(100))
    cache.configure(5 * size)
    for i in range(2, 5):
        cache.put(f"k{i}", img(100))
    s = cache.stats()
    assert (s.entries, s.bytes, s.max_bytes, s.evictions) == (5, 5 * size, 5 * size, 0)
    cache.configure(0)  # zero: keeps nothing, stores nothing
    assert (len(cache), cache.stats().bytes) == (0, 0)
    assert cache.put("k", img(1)) is False


def test_configure_bound_only_keeps_ttl_expiry_times() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=10 * cost(10), ttl_s=10.0, timer=timer)
    cache.put("a", img(10))
    timer.now += 8
    cache.configure(20 * cost(10), ttl_s=10.0)
    timer.now += 3  # 11 s after the put: expired on its original schedule
    assert cache.get("a") is None
    assert cache.stats().expirations == 1


def test_configure_new_ttl_rebuilds_keeping_recent_entries_and_counters() -> None:
    timer = FakeTimer()
    size = cost(10, "k00")
    cache = ByteBoundedLRU(max_bytes=10 * size, timer=timer)
    for i in range(12):  # 2 evictions
        cache.put(f"k{i:02d}", img(10))
    assert cache.get("k02") is not None
    cache.configure(3 * size, ttl_s=5.0)  # LRU -> TTL, and smaller
    assert {k for k in cache._data} == {"k02", "k10", "k11"}
    assert cache.stats().evictions == 2 + 7
    timer.now += 6  # the carried-over entries now expire
    assert len(cache) == 0
    assert cache.stats().expirations == 3
    cache.put("a", img(10))
    cache.configure(3 * size, ttl_s=None)  # TTL -> LRU: kept, never expires
    timer.now += 1e6
    assert cache.get("a") is not None
    assert cache.stats().hits == 2  # counters survive both rebuilds


def test_configure_rejects_bad_values_and_changes_nothing() -> None:
    cache = ByteBoundedLRU(max_bytes=10 * cost(10))
    cache.put("a", img(10))
    with pytest.raises(ValueError):
        cache.configure(-1)
    with pytest.raises(ValueError):
        cache.configure(100, ttl_s=-1)
    assert cache.max_bytes == 10 * cost(10) and cache.get("a") is not None


# ---------------------------------------------------------------- ResultCache (actor body)


def test_result_cache_actor_body() -> None:
    async def scenario() -> None:
        rc = ResultCache(max_bytes=cost(10) * 2)
        assert await rc.ping() == "ok"
        assert await rc.put("k", img(10)) is True
        assert await rc.put("big", img(cost(10) * 2)) is False
        assert await rc.get("k") == img(10)
        assert await rc.get("missing") is None
        stats = await rc.stats()
        assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1
        assert stats["config"] == {
            "max_bytes": cost(10) * 2,
            "ttl_s": None,
            "generation": 0.0,
            "layout": "",
        }
        assert await rc.get_many(["k", "missing"]) == [img(10), None]
        assert await rc.put_many([("a", img(1)), ("big", img(cost(10) * 2))]) == 1
        await rc.clear()
        assert (await rc.stats())["entries"] == 0

    asyncio.run(scenario())


def test_result_cache_configure_ignores_an_older_config() -> None:
    async def scenario() -> None:
        rc = ResultCache(max_bytes=100_000)
        assert await rc.configure(50_000, None, generation=2.0, layout="new") is True
        # An older generation with another layout (an old replica in a rolling update):
        assert await rc.configure(90_000, 5.0, generation=1.0, layout="old") is False
        config = await rc.config()
        assert (config["max_bytes"], config["ttl_s"], config["layout"]) == (50_000, None, "new")
        # The same layout from a replica made a little earlier: applied, generation kept.
        assert await rc.configure(50_000, None, generation=1.5, layout="new") is True
        assert (await rc.config())["generation"] == 2.0
        # A newer generation wins whatever its layout.
        assert await rc.configure(70_000, None, generation=3.0, layout="newer") is True
        assert (await rc.stats())["max_bytes"] == 70_000

    asyncio.run(scenario())


# ---------------------------------------------------------------- shard layout


def test_shard_names_number_and_index() -> None:
    assert shard_names("rc", 3) == ["rc-0", "rc-1", "rc-2"]
    assert shard_names("rc", 1) == ["rc-0"]
    with pytest.raises(ValueError):
        shard_names("rc", 0)
    assert shard_index("0000000a" + "f" * 32, 3) == 10 % 3
    assert shard_index("not hex at all", 4) == shard_index("not hex at all", 4)
    assert [shard_number("rc", n) for n in ("rc-0", "rc-12")] == [0, 12]
    others = ["rc", "rc-", "rc-x", "rc-1-0", "rc-01", "rcx-1", "xrc-1", "r.-1", "rc-1 "]
    assert [shard_number("rc", n) for n in others] == [None] * len(others)
    assert shard_number("a.b", "a.b-3") == 3 and shard_number("a.b", "axb-3") is None


@pytest.mark.parametrize(("total", "shards"), [(10_000, 4), (10_001, 3), (7, 8), (0, 2)])
def test_shard_max_bytes_sums_to_the_total(total: int, shards: int) -> None:
    bounds = shard_max_bytes(total, shards)
    assert len(bounds) == shards
    assert sum(bounds) == total
    assert max(bounds) - min(bounds) <= 1


# ---------------------------------------------------------------- CacheClient with fake shards


class FakeMethod:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)  # an un-awaited coroutine, as an ObjectRef is awaitable


class FakeShard:
    """Stands in for an ActorHandle of ResultCache; ``mode`` makes it misbehave."""

    def __init__(self, max_bytes: int = 100_000, ttl_s: float | None = None) -> None:
        self.args = (max_bytes, ttl_s)
        self.body = ResultCache(max_bytes, ttl_s)
        self.mode = "ok"  # "ok" | "hang" | "raise" | "unavailable" | "dead"
        for method in ("get", "put", "get_many", "put_many", "stats", "configure", "config"):
            setattr(self, method, FakeMethod(self._wrap(method)))

    def restart(self) -> None:
        """What Ray's restart does: the constructor again, with the creation arguments."""
        self.body = ResultCache(*self.args)

    def _wrap(self, method: str) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.mode == "hang":
                await asyncio.sleep(30)
            if self.mode in ("raise", "dead"):
                raise ActorDiedError()
            if self.mode == "unavailable":
                raise ActorUnavailableError("restarting", None)
            return await getattr(self.body, method)(*args, **kwargs)

        return call


class FakeDirectory:
    """Replaces RayShardDirectory: live shards by name; counts what clients ask of it."""

    def __init__(self) -> None:
        self.live: dict[str, FakeShard] = {}
        self.lookups = 0
        self.created: list[tuple[str, int, float | None]] = []
        self.released: list[str] = []

    def lookup(self, name: str) -> FakeShard | None:
        self.lookups += 1
        return self.live.get(name)

    def create(self, name: str, max_bytes: int, ttl_s: float | None) -> FakeShard:
        if name not in self.live:
            self.created.append((name, max_bytes, ttl_s))
            self.live[name] = FakeShard(max_bytes, ttl_s)
        return self.live[name]

    def names(self) -> list[str]:
        return list(self.live)

    def release(self, name: str) -> None:
        shard = self.live.pop(name, None)
        if shard is not None:
            shard.mode = "dead"  # handles held elsewhere now fail, as after ray.kill
            self.released.append(name)

    def bound(self, name: str) -> int:
        return self.live[name].body._lru.max_bytes


def cache_config(
    shards: int = 1,
    max_bytes: int | None = None,
    *,
    ttl_s: float | None = None,
    local_max_bytes: int = 100_000,
    timeout_s: float = 0.25,
) -> CacheConfig:
    return CacheConfig(
        name="rc",
        shards=shards,
        max_bytes=100_000 * shards if max_bytes is None else max_bytes,
        ttl_s=ttl_s,
        local_max_bytes=local_max_bytes,
        timeout_s=timeout_s,
    )


def make_client(
    shards: int = 1,
    timeout_s: float = 0.25,
    local_max_bytes: int = 100_000,
    directory: FakeDirectory | None = None,
    **config: Any,
) -> tuple[CacheClient, FakeDirectory]:
    directory = directory or FakeDirectory()
    settings = cache_config(shards, timeout_s=timeout_s, local_max_bytes=local_max_bytes, **config)
    return CacheClient(settings, resolver=directory), directory


def key_on(shard: int, shards: int, tag: str = "") -> str:
    """A cache key that lands on ``shard`` of ``shards``."""
    i = 0
    while True:
        key = image_digest(f"{tag}{i}".encode())
        if shard_index(key, shards) == shard:
            return key
        i += 1


KEY = "0123abcd" + "0" * 32


def test_client_init_does_not_resolve() -> None:
    _, directory = make_client()
    assert directory.lookups == 0 and directory.created == []


def test_client_connect_resolves_every_shard_without_the_call_budget() -> None:
    class SlowDirectory(FakeDirectory):
        def create(self, name: str, max_bytes: int, ttl_s: float | None) -> FakeShard:
            time.sleep(0.2)  # longer than the client's per-call budget below
            return super().create(name, max_bytes, ttl_s)

    async def scenario() -> None:
        client, directory = make_client(2, timeout_s=0.05, directory=SlowDirectory())
        await client.connect()
        assert sorted(directory.live) == ["rc-0", "rc-1"]
        await client.put(KEY, img(10))
        assert await client.get(KEY) == img(10)
        assert (await client.stats())["errors"] == 0

    asyncio.run(scenario())


def test_client_connect_failure_is_not_fatal() -> None:
    class Broken(FakeDirectory):
        def lookup(self, name: str) -> FakeShard | None:
            raise RuntimeError("no cluster")

    async def scenario() -> None:
        client, _ = make_client(timeout_s=0.05, directory=Broken())
        await client.connect()
        assert await client.get(KEY) is None

    asyncio.run(scenario())


def test_connect_applies_the_config_to_existing_shards() -> None:
    """A detached shard made under an older config takes the new bound and TTL."""

    async def scenario() -> None:
        directory = FakeDirectory()
        size = cost(10, "k000")
        old = directory.create("rc-0", 100 * size, None)
        for i in range(100):
            await old.body.put(f"k{i:03d}", img(10))
        client, _ = make_client(1, max_bytes=30 * size, ttl_s=60.0, directory=directory)
        await client.connect()
        config = await old.body.config()
        assert (config["max_bytes"], config["ttl_s"]) == (30 * size, 60.0)
        stats = await old.body.stats()
        assert (stats["entries"], stats["max_bytes"]) == (30, 30 * size)
        assert await old.body.get("k099") is not None  # the most recent ones were kept
        assert await old.body.get("k000") is None
        assert directory.created == [("rc-0", 100 * size, None)]  # found, not made

    asyncio.run(scenario())


def test_connect_splits_max_bytes_over_the_shards_exactly() -> None:
    async def scenario() -> None:
        directory = FakeDirectory()
        directory.create("rc-0", 10_001, None)  # one shard holding everything before
        client, _ = make_client(3, max_bytes=10_001, directory=directory)
        await client.connect()
        bounds = [directory.bound(n) for n in shard_names("rc", 3)]
        assert bounds == [3334, 3334, 3333]
        assert (await client.stats())["shared"]["max_bytes"] == 10_001

    asyncio.run(scenario())


def test_connect_releases_the_shards_beyond_the_count() -> None:
    async def scenario() -> None:
        directory = FakeDirectory()
        for name in [*shard_names("rc", 4), "rc-x", "rc-1-0", "rcx-5", "other-2"]:
            directory.create(name, 1000, None)
        client, _ = make_client(1, directory=directory)
        await client.connect()
        assert sorted(directory.released) == ["rc-1", "rc-2", "rc-3"]
        assert sorted(directory.live) == ["other-2", "rc-0", "rc-1-0", "rc-x", "rcx-5"]
        await client.connect()  # again (another replica of the same deploy): no-op
        assert len(directory.released) == 3

    asyncio.run(scenario())


def test_shards_beyond_the_count_are_released_once_shard_0_answers() -> None:
    """Shard 0 away while connect() ran (it could not tell whether a newer config owns
    the cache): the shards a config with more made are released at the first stats call
    that reaches it, not held for good."""

    async def scenario() -> None:
        directory = FakeDirectory()
        for name in shard_names("rc", 3):
            directory.create(name, 1000, None)
        directory.live["rc-0"].mode = "raise"
        client, _ = make_client(1, timeout_s=0.05, directory=directory)
        await client.connect()
        assert directory.released == []
        directory.live["rc-0"].mode = "ok"
        await client.stats()  # starts the release beside it

        async def released() -> bool:
            return len(directory.released) == 2

        await until(released)
        assert sorted(directory.released) == ["rc-1", "rc-2"]
        await client.stats()  # once
        assert len(directory.released) == 2

    asyncio.run(scenario())


def test_old_replicas_miss_on_released_shards_and_never_recreate_them() -> None:
    """A rolling update from 4 shards to 1: replicas of the old deploy run on for a while."""

    async def scenario() -> None:
        old, directory = make_client(4, local_max_bytes=0)
        await old.connect()
        keys = {i: key_on(i, 4) for i in range(4)}
        for key in keys.values():
            await old.put(key, img(10))
        new, _ = make_client(1, max_bytes=50_000, local_max_bytes=0, directory=directory)
        await new.connect()
        assert sorted(directory.live) == ["rc-0"]
        for _ in range(5):  # misses, no exception, nothing re-created
            for i, key in keys.items():
                got = await old.get(key)
                assert (got is not None) == (i == 0 and shard_index(key, 1) == 0)
                await old.put(key, img(10))
            stats = await old.stats()
        assert sorted(directory.live) == ["rc-0"]
        assert stats["shards_answered"] == 1
        # The old replica did not put its own bound back on shard 0 either.
        assert directory.bound("rc-0") == 50_000
        # And the new replica sees one shard with the whole (new) bound.
        new_stats = await new.stats()
        assert new_stats["shared"]["max_bytes"] == 50_000 and new_stats["errors"] == 0

    asyncio.run(scenario())


def test_a_lagging_old_connect_neither_reconfigures_nor_releases() -> None:
    async def scenario() -> None:
        old, directory = make_client(1, max_bytes=10_000)  # made first: older generation
        new, _ = make_client(4, max_bytes=40_000, directory=directory)
        assert new.generation > old.generation
        await new.connect()
        await old.connect()  # the old replica's connect only now gets its turn
        assert sorted(directory.live) == shard_names("rc", 4)
        assert directory.released == []
        assert [directory.bound(n) for n in shard_names("rc", 4)] == [10_000] * 4
        await old.stats()  # nor does a later stats() call reconfigure
        assert directory.bound("rc-0") == 10_000

    asyncio.run(scenario())


def test_a_shard_killed_for_good_is_recreated_by_a_current_client() -> None:
    async def scenario() -> None:
        client, directory = make_client(2, local_max_bytes=0)
        await client.connect()
        key = key_on(1, 2)
        await client.put(key, img(10))
        directory.release("rc-1")  # an operator's ray.kill(no_restart=True)
        assert await client.get(key) is None  # the call that finds it dead: a miss
        await client.put(key, img(10))  # looked up, missing, re-created (empty)
        assert await client.get(key) == img(10)
        assert [c for c in directory.created if c[0] == "rc-1"] == [("rc-1", 100_000, None)] * 2

    asyncio.run(scenario())


def test_stats_reconfigures_a_shard_that_restarted_with_its_creation_args() -> None:
    async def scenario() -> None:
        directory = FakeDirectory()
        shard = directory.create("rc-0", 1_000_000, None)  # created under an old config
        client, _ = make_client(1, max_bytes=20_000, directory=directory)
        await client.connect()
        assert directory.bound("rc-0") == 20_000
        shard.restart()  # back to 1_000_000, as Ray restarts it in place
        assert directory.bound("rc-0") == 1_000_000
        await client.stats()
        assert directory.bound("rc-0") == 20_000
        calls = shard.configure.calls
        await client.stats()  # configured now: no further configure calls
        assert shard.configure.calls == calls

    asyncio.run(scenario())


def test_client_round_trip_and_l1_hit_avoids_shard() -> None:
    async def scenario() -> None:
        client, directory = make_client()
        await client.put(KEY, img(50))
        shard = directory.live["rc-0"]
        assert shard.put.calls == 1
        assert await client.get(KEY) == img(50)
        assert shard.get.calls == 0  # served from L1
        assert directory.created == [("rc-0", 100_000, None)]

    asyncio.run(scenario())


def test_client_shard_hit_fills_l1() -> None:
    async def scenario() -> None:
        client, directory = make_client()
        shard = directory.create("rc-0", 100_000, None)
        await shard.body.put(KEY, img(50))  # written by another replica
        assert await client.get(KEY) == img(50)
        assert await client.get(KEY) == img(50)
        assert shard.get.calls == 1
        stats = await client.stats()
        assert stats["local"]["hits"] == 1
        assert stats["shared"]["hits"] == 1

    asyncio.run(scenario())


def test_client_l1_disabled_always_asks_shard() -> None:
    async def scenario() -> None:
        client, directory = make_client(local_max_bytes=0)
        await client.put(KEY, img(50))
        assert await client.get(KEY) == img(50)
        assert directory.live["rc-0"].get.calls == 1

    asyncio.run(scenario())


def test_client_hanging_shard_is_a_timely_miss() -> None:
    async def scenario() -> None:
        client, directory = make_client(timeout_s=0.1)
        directory.create("rc-0", 100_000, None).mode = "hang"  # a call answers after 30 s
        t0 = time.perf_counter()
        # Unbounded, the call would wait out the hang: past the 10 s given here.
        assert await asyncio.wait_for(client.get(KEY), 10) is None
        elapsed = time.perf_counter() - t0
        assert elapsed >= 0.09, elapsed  # it waited for its budget
        await asyncio.wait_for(client.put(KEY + "1", img(5)), 10)  # a hanging put too
        stats = await client.stats()  # stats of a hanging shard: bounded, empty
        assert stats["errors"] == 3
        assert stats["shards_answered"] == 0
        # A timeout keeps the handle: no new look-up was needed.
        assert directory.lookups == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["raise", "unavailable"])
def test_client_failing_shard_is_a_miss_and_handle_is_re_resolved(mode: str) -> None:
    async def scenario() -> None:
        client, directory = make_client()
        shard = directory.create("rc-0", 100_000, None)
        await shard.body.put(KEY, img(50))
        shard.mode = mode
        assert await client.get(KEY) is None
        assert (await client.stats())["errors"] == 2  # the get and the stats call
        assert directory.lookups == 2  # each failure dropped the handle
        shard.mode = "ok"  # restarted
        assert await client.get(KEY) == img(50)
        assert directory.lookups == 3

    asyncio.run(scenario())


def test_client_put_failure_is_swallowed_but_l1_still_filled() -> None:
    async def scenario() -> None:
        client, directory = make_client()
        directory.create("rc-0", 100_000, None).mode = "raise"
        await client.put(KEY, img(50))  # must not raise
        assert await client.get(KEY) == img(50)  # from L1
        assert (await client.stats())["errors"] == 2  # put + stats

    asyncio.run(scenario())


def test_many_keys_cost_one_call_per_shard_and_fill_l1() -> None:
    async def scenario() -> None:
        client, directory = make_client(shards=2)
        await client.connect()
        keys = [key_on(shard, 2, tag) for shard in (0, 1) for tag in ("a", "b", "c")]
        await client.put_many([(key, img(n + 1)) for n, key in enumerate(keys)])
        shards = [directory.live["rc-0"], directory.live["rc-1"]]
        assert [shard.put_many.calls for shard in shards] == [1, 1]
        assert [shard.put.calls for shard in shards] == [0, 0]

        fresh, _ = make_client(shards=2, directory=directory)  # another replica: empty L1
        wanted = [*keys, key_on(0, 2, "absent")]
        found = await fresh.get_many(wanted)
        assert found == [img(n + 1) for n in range(len(keys))] + [None]
        assert [shard.get_many.calls for shard in shards] == [1, 1]
        assert await fresh.get_many(keys) == found[:-1]  # from L1 now: no call
        assert [shard.get_many.calls for shard in shards] == [1, 1]

    asyncio.run(scenario())


def test_many_keys_on_a_failing_shard_are_misses_the_others_answer() -> None:
    async def scenario() -> None:
        client, directory = make_client(shards=2, local_max_bytes=0)
        await client.connect()
        good, bad = key_on(0, 2), key_on(1, 2)
        await client.put_many([(good, img(5)), (bad, img(6))])
        directory.live["rc-1"].mode = "raise"
        assert await client.get_many([bad, good]) == [None, img(5)]
        await client.put_many([(bad, img(7))])  # must not raise
        assert (await client.stats())["errors"] >= 2

    asyncio.run(scenario())


def test_client_resolver_failure_is_a_miss() -> None:
    class Broken(FakeDirectory):
        def lookup(self, name: str) -> FakeShard | None:
            raise ConnectionError("GCS unreachable")

    async def scenario() -> None:
        client, _ = make_client(2, timeout_s=0.1, directory=Broken())
        assert await client.get(KEY) is None
        await client.put(KEY, img(5))
        stats = await client.stats()
        assert stats["errors"] == 4  # get, put, stats x 2 shards
        assert stats["shared"]["entries"] == 0

    asyncio.run(scenario())


def test_client_slow_resolver_is_bounded() -> None:
    release = threading.Event()

    class Slow(FakeDirectory):
        def lookup(self, name: str) -> FakeShard | None:
            release.wait(10)  # held until the test lets go
            return super().lookup(name)

    async def scenario() -> None:
        client, directory = make_client(timeout_s=0.05, directory=Slow())
        try:
            assert await asyncio.wait_for(client.get(KEY), 10) is None
            # Answered while the look-up is still held: the client did not wait for it.
            assert directory.lookups == 0
        finally:
            release.set()

    asyncio.run(scenario())


def test_client_spreads_keys_and_sums_stats() -> None:
    async def scenario() -> None:
        client, directory = make_client(3)
        keys = [image_digest(str(i).encode()) for i in range(60)]
        for k in keys:
            await client.put(k, img(10))
        shards = [directory.live[n] for n in shard_names("rc", 3)]
        per_shard = [(await s.body.stats())["entries"] for s in shards]
        assert all(n > 0 for n in per_shard)
        assert sum(per_shard) == 60
        for k in keys:  # each key went to its stable shard
            assert await directory.live[f"rc-{shard_index(k, 3)}"].body.get(k) is not None
        stats = await client.stats()
        assert stats["shards"] == 3 and stats["shards_answered"] == 3
        shared = stats["shared"]
        assert shared["entries"] == 60
        assert shared["bytes"] == sum(_sizeof(k, img(10)) for k in keys)
        assert shared["max_bytes"] == 300_000
        assert shared["hits"] == 60  # the direct body.get checks above
        assert shared["hit_ratio"] == pytest.approx(1.0)
        assert stats["errors"] == 0

    asyncio.run(scenario())


def test_client_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        client, directory = make_client()
        directory.create("rc-0", 100_000, None).mode = "raise"
        for _ in range(20):
            await client.get(KEY)

    with caplog.at_level("WARNING", logger="serve_app.pipeline.cache_client"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.name == "serve_app.pipeline.cache_client"]
    assert len(warnings) == 1
    assert "treated as a miss" in warnings[0].getMessage()
