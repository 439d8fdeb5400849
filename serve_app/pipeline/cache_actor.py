"""The shared result cache: detached, named Ray actors (shards), each an LRU of results.

The shard actors are detached, so they outlive deploys; the config of the newest deploy
reaches them through ``CacheClient.connect()``. Nothing here touches Ray at import time.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Protocol

import ray
from ray.actor import ActorHandle

from serve_app.pipeline.lru import ByteBoundedLRU, CachedImage, image_digest

CACHE_NAMESPACE = "animegan"


HEAD_NODE_RESOURCE = "node:__internal_head__"  # ray._common.constants.HEAD_NODE_RESOURCE_NAME


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

    async def get_many(self, keys: list[str]) -> list[CachedImage | None]:
        return [self._lru.get(key) for key in keys]

    async def put_many(self, items: list[tuple[str, CachedImage]]) -> int:
        """How many were kept (one too large for the bound is not)."""
        return sum(self._lru.put(key, value) for key, value in items)

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
