"""The ResultCache actor and CacheClient against a real local Ray instance."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import ray

from serve_app.config import CacheConfig
from serve_app.pipeline.cache_actor import (
    CACHE_NAMESPACE,
    get_or_create_cache_actor,
    get_or_create_cache_shards,
    shard_index,
    shard_max_bytes,
    shard_names,
)
from serve_app.pipeline.cache_client import CacheClient
from serve_app.pipeline.lru import CachedImage, _sizeof, image_digest
from tests.support.serve import app_args, deploy, wait_healthy

pytestmark = pytest.mark.integration

T = TypeVar("T")

# Generous: actor processes start slowly on a busy 2-core machine. The client's own
# timeout is what keeps each call short; this only bounds the polling loops.
EVENTUALLY_S = 60.0
CLIENT_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def ray_local(ray_serve: str) -> Iterator[None]:
    # The session's Ray (conftest's ray_serve): one Ray per test session, and the
    # redeploy test at the end needs Serve on it.
    yield


def img(n: int, tag: str = "x") -> CachedImage:
    return CachedImage(data=(tag.encode() * n)[:n], media_type="image/png", width=3, height=2)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def actor_id(handle: Any) -> str:
    return handle._actor_id.hex()


def wait_for_actor(handle: Any) -> None:
    """Block until the actor answers (startup, or the end of a restart)."""
    deadline = time.monotonic() + EVENTUALLY_S
    while True:
        try:
            assert ray.get(handle.ping.remote(), timeout=10) == "ok"
            return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_until_dead(handle: Any) -> None:
    """Block until calls to ``handle`` fail for good (ray.kill returns before that)."""
    deadline = time.monotonic() + EVENTUALLY_S
    while time.monotonic() < deadline:
        try:
            ray.get(handle.ping.remote(), timeout=10)
        except ray.exceptions.ActorDiedError:
            return
        time.sleep(0.05)
    pytest.fail("actor still answers after ray.kill(no_restart=True)")


async def eventually(fn: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
    """Call ``fn`` until ``ok(result)``; ``fn`` raising fails the test at once."""
    deadline = time.monotonic() + EVENTUALLY_S
    while True:
        result = await fn()
        if ok(result):
            return result
        assert time.monotonic() < deadline, f"gave up waiting, last result: {result!r}"
        await asyncio.sleep(0.1)


def test_get_or_create_returns_the_same_named_actor(ray_local: None) -> None:
    name = unique("same")
    first = get_or_create_cache_actor(name, 1000, None)
    second = get_or_create_cache_actor(name, 5000, None)  # existing actor keeps its size
    assert actor_id(first) == actor_id(second)
    by_name = ray.get_actor(name, namespace=CACHE_NAMESPACE)
    assert actor_id(by_name) == actor_id(first)
    wait_for_actor(first)
    assert ray.get(second.stats.remote())["max_bytes"] == 1000


def test_shards_split_max_bytes_and_reuse_actors(ray_local: None) -> None:
    base = unique("split")
    handles = get_or_create_cache_shards(base, 2, 3001, None)
    again = get_or_create_cache_shards(base, 2, 3001, None)
    assert [actor_id(h) for h in handles] == [actor_id(h) for h in again]
    bounds = []
    for name, handle in zip(shard_names(base, 2), handles, strict=True):
        assert actor_id(ray.get_actor(name, namespace=CACHE_NAMESPACE)) == actor_id(handle)
        wait_for_actor(handle)
        bounds.append(ray.get(handle.stats.remote())["max_bytes"])
    assert bounds == [1501, 1500]  # whole bytes, summing to max_bytes


def test_round_trip_through_the_actor(ray_local: None) -> None:
    handle = get_or_create_cache_actor(unique("rt"), 10_000, None)
    value = img(1234, tag="ab")
    assert ray.get(handle.put.remote("k", value)) is True
    assert ray.get(handle.put.remote("big", img(10_001))) is False
    got = ray.get(handle.get.remote("k"))
    assert got == value and isinstance(got, CachedImage)
    assert ray.get(handle.get.remote("missing")) is None
    stats = ray.get(handle.stats.remote())
    counts = (stats["entries"], stats["bytes"], stats["hits"], stats["misses"])
    assert counts == (1, _sizeof("k", value), 1, 1)


def shared_client(
    base: str, shards: int = 1, max_bytes: int = 30_000, ttl_s: float | None = None
) -> CacheClient:
    # No L1 (local_max_bytes=0): every get must reach the shared actor.
    config = CacheConfig(
        name=base,
        shards=shards,
        max_bytes=max_bytes,
        ttl_s=ttl_s,
        local_max_bytes=0,
        timeout_s=CLIENT_TIMEOUT_S,
    )
    return CacheClient(config, resolver=None)


def shard_stats(base: str, shards: int) -> list[dict[str, Any]]:
    handles = [ray.get_actor(n, namespace=CACHE_NAMESPACE) for n in shard_names(base, shards)]
    return ray.get([h.stats.remote() for h in handles], timeout=30)


def is_gone(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=CACHE_NAMESPACE)
    except ValueError:
        return True
    return False


def wait_until(ok: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENTUALLY_S
    while not ok():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_client_survives_actor_restart(ray_local: None) -> None:
    base = unique("restart")
    client = shared_client(base)
    key, value = image_digest(b"restart"), img(100)

    async def scenario() -> None:
        await eventually(lambda: client.put(key, value), lambda _: True)
        await eventually(lambda: client.get(key), lambda got: got == value)
        handle = ray.get_actor(shard_names(base, 1)[0], namespace=CACHE_NAMESPACE)
        before = actor_id(handle)
        ray.kill(handle, no_restart=False)
        # The kill lands asynchronously; from then on the client sees misses (a timeout
        # while restarting, then the empty new instance), never an exception ...
        await eventually(lambda: client.get(key), lambda got: got is None)
        wait_for_actor(handle)
        assert actor_id(handle) == before  # same actor, restarted in place
        assert (await client.stats())["shared"]["entries"] == 0
        # ... and works again once the actor is back.
        await client.put(key, value)
        assert await client.get(key) == value

    asyncio.run(scenario())


def test_client_recreates_an_actor_killed_for_good(ray_local: None) -> None:
    base = unique("dead")
    name = shard_names(base, 1)[0]
    client = shared_client(base)
    key, value = image_digest(b"dead"), img(100)

    async def scenario() -> None:
        await eventually(lambda: client.put(key, value), lambda _: True)
        await eventually(lambda: client.get(key), lambda got: got == value)
        old = ray.get_actor(name, namespace=CACHE_NAMESPACE)
        errors_before = (await client.stats())["errors"]
        ray.kill(old, no_restart=True)
        wait_until_dead(old)
        # Misses, never raises, while the actor is dead or being recreated.
        for _ in range(3):
            assert await client.get(key) is None
        assert (await client.stats())["errors"] > errors_before

        async def put_then_get() -> CachedImage | None:
            await client.put(key, value)
            return await client.get(key)

        await eventually(put_then_get, lambda got: got == value)
        new = ray.get_actor(name, namespace=CACHE_NAMESPACE)
        assert actor_id(new) != actor_id(old)

    asyncio.run(scenario())


def test_sharded_client_spreads_keys_and_sums_stats(ray_local: None) -> None:
    base = unique("sharded")
    client = shared_client(base, shards=3, max_bytes=300_000)  # 30 entries fit easily
    keys = [image_digest(str(i).encode()) for i in range(30)]

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        # The first calls may time out (counted as errors) while the three actors start.
        warm = await eventually(client.stats, lambda s: s["shards_answered"] == 3)
        for key in keys:
            await client.put(key, img(100))
        for key in keys:
            assert await client.get(key) == img(100)
        return warm, await client.stats()

    warm, stats = asyncio.run(scenario())
    handles = [ray.get_actor(n, namespace=CACHE_NAMESPACE) for n in shard_names(base, 3)]
    per_shard = [ray.get(h.stats.remote()) for h in handles]
    assert all(s["entries"] > 0 for s in per_shard), per_shard
    assert all(s["max_bytes"] == 100_000 for s in per_shard)
    shared = stats["shared"]
    assert stats["shards"] == 3 and stats["shards_answered"] == 3
    assert stats["errors"] == warm["errors"]  # no failures once the actors were up
    assert shared["entries"] == 30 == sum(s["entries"] for s in per_shard)
    assert shared["bytes"] == sum(_sizeof(key, img(100)) for key in keys)
    assert shared["max_bytes"] == 300_000
    assert (shared["hits"], shared["misses"]) == (30, 0)
    assert shared["hit_ratio"] == pytest.approx(1.0)


# ---------------------------------------------------------------- config changes on connect


def test_connect_applies_a_new_max_bytes_and_ttl_to_a_running_shard(ray_local: None) -> None:
    base = unique("resize")
    keys = [image_digest(f"resize-{i}".encode()) for i in range(20)]
    entry = _sizeof(keys[0], img(100))

    async def scenario() -> None:
        first = shared_client(base, max_bytes=40 * entry)
        await first.connect()
        for key in keys:
            await first.put(key, img(100))
        # The next deploy: a smaller bound and a TTL, applied to the same detached actor.
        second = shared_client(base, max_bytes=5 * entry, ttl_s=600.0)
        await second.connect()
        for key in keys[-5:]:  # the most recent entries that fit were kept
            assert await second.get(key) == img(100)

    handle = get_or_create_cache_actor(shard_names(base, 1)[0], 1, None)
    before = actor_id(handle)
    asyncio.run(scenario())
    [stats] = shard_stats(base, 1)
    assert (stats["max_bytes"], stats["entries"], stats["bytes"]) == (5 * entry, 5, 5 * entry)
    assert stats["evictions"] == 15
    assert stats["config"]["ttl_s"] == 600.0
    assert actor_id(ray.get_actor(shard_names(base, 1)[0], namespace=CACHE_NAMESPACE)) == before


def test_four_shards_to_one_releases_three_and_old_clients_only_miss(ray_local: None) -> None:
    base = unique("shrink")
    names = shard_names(base, 4)
    keys = {i: next(k for k in (image_digest(f"{i}-{j}".encode()) for j in range(999))
                    if shard_index(k, 4) == i) for i in range(4)}  # fmt: skip

    async def scenario() -> None:
        old = shared_client(base, shards=4, max_bytes=40_000)
        await old.connect()
        shard0 = actor_id(ray.get_actor(names[0], namespace=CACHE_NAMESPACE))
        new = shared_client(base, shards=1, max_bytes=25_000)
        await new.connect()
        for name in names[1:]:
            wait_until(lambda name=name: is_gone(name), f"{name} to be released")
        assert actor_id(ray.get_actor(names[0], namespace=CACHE_NAMESPACE)) == shard0
        # The old deploy's replica, still running: misses on the released shards, never
        # an exception, and does not bring them back.
        for _ in range(3):
            for i in (1, 2, 3):
                assert await old.get(keys[i]) is None
                await old.put(keys[i], img(100))
            stats = await old.stats()
            assert stats["shards_answered"] == 1
        await old.put(keys[0], img(100))  # shard 0 still serves it
        assert await old.get(keys[0]) == img(100)
        assert all(is_gone(name) for name in names[1:])
        # Nor did it put its own bound back on shard 0.
        assert (await new.stats())["shared"]["max_bytes"] == 25_000

    asyncio.run(scenario())
    for name in names[1:]:
        with pytest.raises(ValueError):
            ray.get_actor(name, namespace=CACHE_NAMESPACE)


def test_one_shard_to_four_splits_the_configured_max_bytes(ray_local: None) -> None:
    base = unique("grow")
    max_bytes = 4 * 2**20 + 3

    async def scenario() -> None:
        await shared_client(base, shards=1, max_bytes=max_bytes).connect()
        assert [s["max_bytes"] for s in shard_stats(base, 1)] == [max_bytes]
        await shared_client(base, shards=4, max_bytes=max_bytes).connect()

    asyncio.run(scenario())
    bounds = [s["max_bytes"] for s in shard_stats(base, 4)]
    assert bounds == shard_max_bytes(max_bytes, 4)
    assert sum(bounds) == max_bytes


# ---------------------------------------------------------------- through a Serve redeploy


def test_redeploy_applies_the_cache_config(default_app: str) -> None:
    """`serve deploy` with other cache args: 1 -> 4 shards, then back to the default 1."""
    base = f"test-cache-{os.getpid()}"  # the test application's cache (conftest)
    names = shard_names(base, 4)
    max_bytes = 8 * 2**20 + 1
    deploy(
        app_args(cache={"name": base, "shards": 4, "max_bytes": max_bytes, "local_max_bytes": 0})
    )

    def split_applied() -> bool:
        if any(is_gone(name) for name in names):
            return False
        return [s["max_bytes"] for s in shard_stats(base, 4)] == shard_max_bytes(max_bytes, 4)

    wait_until(split_applied, "the 4-shard config on the shards")
    assert sum(s["max_bytes"] for s in shard_stats(base, 4)) == max_bytes

    deploy()  # the default application: one shard, the default bound
    default_bound = CacheConfig().max_bytes
    wait_until(lambda: all(is_gone(name) for name in names[1:]), "shards 1..3 to be released")
    wait_until(lambda: shard_stats(base, 1)[0]["max_bytes"] == default_bound, "the default bound")
    wait_healthy(default_app)
