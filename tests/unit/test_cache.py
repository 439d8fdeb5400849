"""Unit tests of serve_app.cache: no Ray instance, shards replaced by fakes."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from serve_app.cache import (
    ByteBoundedLRU,
    CacheClient,
    CachedImage,
    CacheStats,
    ResultCache,
    cache_key,
    image_digest,
    shard_index,
    shard_names,
)


def img(n: int, tag: str = "x") -> CachedImage:
    """A CachedImage whose size (len(data)) is exactly n bytes."""
    return CachedImage(data=(tag.encode() * n)[:n], media_type="image/png", width=1, height=1)


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


KEY_PARTS: dict[str, Any] = {
    "style": "paprika",
    "weights_digest": "58086c9db9fc7a9e5c2876ca31b8079599352643",
    "size": 512,
    "fmt": "png",
    "quality": None,
}


def test_cache_key_is_stable_and_hex() -> None:
    a = cache_key("ab" * 20, **KEY_PARTS)
    b = cache_key("ab" * 20, **dict(reversed(list(KEY_PARTS.items()))))
    assert a == b
    assert len(a) == 40
    int(a, 16)


@pytest.mark.parametrize(
    ("part", "other"),
    [
        ("style", "face_paint_512_v2"),
        ("weights_digest", "d75102f8f201ddaf8dbe6b913b1a97585b55f838"),
        ("size", 256),
        ("fmt", "jpeg"),
        ("quality", 90),
        ("quality", 0),  # None and 0 must not collide
    ],
)
def test_cache_key_changes_with_each_part(part: str, other: Any) -> None:
    base = cache_key("ab" * 20, **KEY_PARTS)
    assert cache_key("ab" * 20, **{**KEY_PARTS, part: other}) != base


def test_cache_key_changes_with_image_and_has_no_separator_ambiguity() -> None:
    assert cache_key("ab" * 20, **KEY_PARTS) != cache_key("cd" * 20, **KEY_PARTS)
    # Moving characters between adjacent parts must change the key.
    k1 = cache_key("img", **{**KEY_PARTS, "style": "ab", "weights_digest": "c"})
    k2 = cache_key("img", **{**KEY_PARTS, "style": "a", "weights_digest": "bc"})
    assert k1 != k2


def test_shard_names_and_index() -> None:
    assert shard_names("rc", 3) == ["rc-0", "rc-1", "rc-2"]
    assert shard_names("rc", 1) == ["rc-0"]
    with pytest.raises(ValueError):
        shard_names("rc", 0)
    assert shard_index("0000000a" + "f" * 32, 3) == 10 % 3
    assert shard_index("not hex at all", 4) == shard_index("not hex at all", 4)


# ---------------------------------------------------------------- ByteBoundedLRU


def test_byte_bound_and_lru_order() -> None:
    cache = ByteBoundedLRU(max_bytes=1000)
    for i in range(4):
        assert cache.put(f"k{i}", img(300))
    # 4 x 300 > 1000: k0 went first.
    assert cache.stats().bytes == 900
    assert cache.get("k0") is None
    # Touch k1, then add: k2 (now least recently used) goes, k1 survives.
    assert cache.get("k1") is not None
    cache.put("k4", img(300))
    assert cache.get("k1") is not None
    assert cache.get("k2") is None
    stats = cache.stats()
    assert stats.bytes <= stats.max_bytes == 1000
    assert stats.entries == len(cache) == 3
    assert stats.evictions == 2


def test_replacing_a_key_accounts_bytes_once() -> None:
    cache = ByteBoundedLRU(max_bytes=1000)
    cache.put("a", img(400))
    cache.put("a", img(700))
    assert cache.stats().bytes == 700
    assert len(cache) == 1
    assert cache.stats().evictions == 0


def test_oversize_value_rejected_without_evicting() -> None:
    cache = ByteBoundedLRU(max_bytes=1000)
    cache.put("a", img(600))
    cache.put("b", img(400))
    assert cache.put("huge", img(1001)) is False
    assert cache.get("huge") is None
    assert cache.get("a") is not None and cache.get("b") is not None
    assert cache.stats().evictions == 0
    assert cache.put("exact", img(1000)) is True  # exactly max_bytes fits


def test_hit_miss_counters_and_ratio() -> None:
    cache = ByteBoundedLRU(max_bytes=100)
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
    cache = ByteBoundedLRU(max_bytes=100)
    cache.put("a", img(10))
    cache.get("a")
    cache.clear()
    s = cache.stats()
    assert (s.entries, s.bytes, s.hits) == (0, 0, 1)
    assert cache.get("a") is None


def test_ttl_expiry_with_fake_timer() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=1000, ttl_s=10.0, timer=timer)
    cache.put("a", img(100))
    timer.now += 5
    cache.put("b", img(100))
    assert cache.get("a") is not None
    timer.now += 6  # a is 11 s old, b 6 s
    assert cache.get("a") is None
    assert cache.get("b") is not None
    s = cache.stats()
    assert (s.entries, s.bytes) == (1, 100)
    assert s.expirations == 1
    assert s.evictions == 0
    timer.now += 100
    assert len(cache) == 0
    assert cache.stats().expirations == 2


def test_ttl_cache_still_bounded_by_bytes() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=500, ttl_s=60.0, timer=timer)
    for i in range(10):
        cache.put(str(i), img(100))
    s = cache.stats()
    assert s.bytes == 500
    assert s.evictions == 5
    assert s.expirations == 0


def test_zero_ttl_means_no_expiry_and_bad_args_rejected() -> None:
    timer = FakeTimer()
    cache = ByteBoundedLRU(max_bytes=100, ttl_s=0, timer=timer)
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
        if cache.put(f"k{rng.randint(0, 5000)}", img(size, tag=str(i % 10))):
            stored += 1
        else:
            rejected += 1
            assert size > max_bytes
        if i % 97 == 0:
            assert cache.stats().bytes <= max_bytes
    s = cache.stats()
    assert s.bytes <= max_bytes
    assert s.bytes == sum(len(cache._data[k].data) for k in list(cache._data))
    assert stored > 0 and rejected > 0
    assert s.evictions > 0


# ---------------------------------------------------------------- ResultCache (actor body)


def test_result_cache_actor_body() -> None:
    async def scenario() -> None:
        rc = ResultCache(max_bytes=100)
        assert await rc.ping() == "ok"
        assert await rc.put("k", img(10)) is True
        assert await rc.put("big", img(101)) is False
        assert await rc.get("k") == img(10)
        assert await rc.get("missing") is None
        stats = await rc.stats()
        assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1
        await rc.clear()
        assert (await rc.stats())["entries"] == 0

    asyncio.run(scenario())


# ---------------------------------------------------------------- CacheClient with fake shards


class FakeMethod:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)  # an un-awaited coroutine, like an ObjectRef is awaitable


class FakeShard:
    """Stands in for an ActorHandle of ResultCache; ``mode`` makes it misbehave."""

    def __init__(self, max_bytes: int = 10_000) -> None:
        self.body = ResultCache(max_bytes)
        self.mode = "ok"  # "ok" | "hang" | "raise" | "unavailable"
        self.get = FakeMethod(self._wrap(self.body.get))
        self.put = FakeMethod(self._wrap(self.body.put))
        self.stats = FakeMethod(self._wrap(self.body.stats))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any) -> Any:
            if self.mode == "hang":
                await asyncio.sleep(30)
            if self.mode == "raise":
                raise ActorDiedError()
            if self.mode == "unavailable":
                raise ActorUnavailableError("restarting", None)
            return await fn(*args)

        return call


class FakeResolver:
    """Replaces get_or_create_cache_actor: name -> FakeShard, counting look-ups."""

    def __init__(self, shards: int, per_shard: int = 10_000) -> None:
        self.by_name = {name: FakeShard(per_shard) for name in shard_names("rc", shards)}
        self.lookups = 0
        self.args: list[tuple[str, int, float | None]] = []

    def __call__(self, name: str, max_bytes: int, ttl_s: float | None) -> FakeShard:
        self.lookups += 1
        self.args.append((name, max_bytes, ttl_s))
        return self.by_name[name]

    def shard_for(self, key: str, shards: int) -> FakeShard:
        return self.by_name[f"rc-{shard_index(key, shards)}"]


def make_client(
    shards: int = 1, timeout_s: float = 0.25, local_max_bytes: int = 10_000
) -> tuple[CacheClient, FakeResolver]:
    resolver = FakeResolver(shards)
    client = CacheClient(
        "rc",
        shards,
        max_bytes=10_000 * shards,
        ttl_s=None,
        local_max_bytes=local_max_bytes,
        timeout_s=timeout_s,
        resolver=resolver,
    )
    return client, resolver


KEY = "0123abcd" + "0" * 32


def test_client_init_does_not_resolve() -> None:
    _, resolver = make_client()
    assert resolver.lookups == 0


def test_client_connect_resolves_every_shard_without_the_call_budget() -> None:
    def slow_resolver(name: str, max_bytes: int, ttl_s: float | None) -> FakeShard:
        time.sleep(0.2)  # longer than the client's per-call budget below
        return FakeShard(max_bytes)

    async def scenario() -> None:
        client = CacheClient("rc", 2, 2000, None, 0, timeout_s=0.05, resolver=slow_resolver)
        await client.connect()
        await client.put(KEY, img(10))
        assert await client.get(KEY) == img(10)
        assert (await client.stats())["errors"] == 0

    asyncio.run(scenario())


def test_client_connect_failure_is_not_fatal() -> None:
    def broken(name: str, max_bytes: int, ttl_s: float | None) -> FakeShard:
        raise RuntimeError("no cluster")

    async def scenario() -> None:
        client = CacheClient("rc", 1, 1000, None, 0, timeout_s=0.05, resolver=broken)
        await client.connect()
        assert await client.get(KEY) is None

    asyncio.run(scenario())


def test_client_round_trip_and_l1_hit_avoids_shard() -> None:
    async def scenario() -> None:
        client, resolver = make_client()
        shard = resolver.by_name["rc-0"]
        await client.put(KEY, img(50))
        assert shard.put.calls == 1
        assert await client.get(KEY) == img(50)
        assert shard.get.calls == 0  # served from L1
        assert resolver.args == [("rc-0", 10_000, None)]

    asyncio.run(scenario())


def test_client_shard_hit_fills_l1() -> None:
    async def scenario() -> None:
        client, resolver = make_client()
        shard = resolver.by_name["rc-0"]
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
        client, resolver = make_client(local_max_bytes=0)
        await client.put(KEY, img(50))
        assert await client.get(KEY) == img(50)
        assert resolver.by_name["rc-0"].get.calls == 1

    asyncio.run(scenario())


def test_client_hanging_shard_is_a_timely_miss() -> None:
    async def scenario() -> None:
        client, resolver = make_client(timeout_s=0.1)
        resolver.by_name["rc-0"].mode = "hang"
        t0 = time.perf_counter()
        assert await client.get(KEY) is None
        elapsed = time.perf_counter() - t0
        assert 0.09 <= elapsed < 0.5, elapsed
        t0 = time.perf_counter()
        await client.put(KEY + "1", img(5))  # a hanging put is also bounded
        assert time.perf_counter() - t0 < 0.5
        stats = await client.stats()  # stats of a hanging shard: bounded, empty
        assert stats["errors"] == 3
        assert stats["shards_answered"] == 0
        # A timeout keeps the handle: no new look-up was needed.
        assert resolver.lookups == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["raise", "unavailable"])
def test_client_failing_shard_is_a_miss_and_handle_is_re_resolved(mode: str) -> None:
    async def scenario() -> None:
        client, resolver = make_client()
        shard = resolver.by_name["rc-0"]
        await shard.body.put(KEY, img(50))
        shard.mode = mode
        assert await client.get(KEY) is None
        assert (await client.stats())["errors"] == 2  # the get and the stats call
        assert resolver.lookups == 2  # each failure dropped the handle
        shard.mode = "ok"  # "recreated"
        assert await client.get(KEY) == img(50)
        assert resolver.lookups == 3

    asyncio.run(scenario())


def test_client_put_failure_is_swallowed_but_l1_still_filled() -> None:
    async def scenario() -> None:
        client, resolver = make_client()
        resolver.by_name["rc-0"].mode = "raise"
        await client.put(KEY, img(50))  # must not raise
        assert await client.get(KEY) == img(50)  # from L1
        assert (await client.stats())["errors"] == 2  # put + stats

    asyncio.run(scenario())


def test_client_resolver_failure_is_a_miss() -> None:
    def broken(name: str, max_bytes: int, ttl_s: float | None) -> Any:
        raise ConnectionError("GCS unreachable")

    async def scenario() -> None:
        client = CacheClient("rc", 2, 1000, None, 1000, timeout_s=0.1, resolver=broken)
        assert await client.get(KEY) is None
        await client.put(KEY, img(5))
        stats = await client.stats()
        assert stats["errors"] == 4  # get, put, stats x 2 shards
        assert stats["shared"]["entries"] == 0

    asyncio.run(scenario())


def test_client_slow_resolver_is_bounded() -> None:
    def slow(name: str, max_bytes: int, ttl_s: float | None) -> Any:
        time.sleep(0.3)
        return FakeShard()

    async def scenario() -> None:
        client = CacheClient("rc", 1, 1000, None, 1000, timeout_s=0.05, resolver=slow)
        t0 = time.perf_counter()
        assert await client.get(KEY) is None
        assert time.perf_counter() - t0 < 0.25

    asyncio.run(scenario())


def test_client_spreads_keys_and_sums_stats() -> None:
    async def scenario() -> None:
        client, resolver = make_client(shards=3)
        keys = [image_digest(str(i).encode()) for i in range(60)]
        for k in keys:
            await client.put(k, img(10))
        per_shard = [(await s.body.stats())["entries"] for s in resolver.by_name.values()]
        assert all(n > 0 for n in per_shard)
        assert sum(per_shard) == 60
        for k in keys:  # each key went to its stable shard
            assert await resolver.shard_for(k, 3).body.get(k) is not None
        stats = await client.stats()
        assert stats["shards"] == 3 and stats["shards_answered"] == 3
        shared = stats["shared"]
        assert shared["entries"] == 60
        assert shared["bytes"] == 600
        assert shared["max_bytes"] == 30_000
        assert shared["hits"] == 60  # the direct body.get checks above
        assert shared["hit_ratio"] == pytest.approx(1.0)
        assert stats["errors"] == 0

    asyncio.run(scenario())


def test_client_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        client, resolver = make_client()
        resolver.by_name["rc-0"].mode = "raise"
        for _ in range(20):
            await client.get(KEY)

    with caplog.at_level("WARNING", logger="serve_app.cache"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.name == "serve_app.cache"]
    assert len(warnings) == 1
    assert "treated as a miss" in warnings[0].getMessage()
