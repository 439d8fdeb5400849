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
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from serve_app.concurrency import run_detached
from serve_app.config import CacheConfig
from serve_app.pipeline.cache_actor import (
    RayShardDirectory,
    ShardDirectory,
    shard_index,
    shard_max_bytes,
    shard_names,
    shard_number,
)
from serve_app.pipeline.lru import ByteBoundedLRU, CachedImage, hit_ratio

logger = logging.getLogger(__name__)


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
        self._owes_release = True  # the shards past this config's count, until released
        self._releasing: asyncio.Task | None = None
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
                "result cache: shard %s did not take the config; extra shards released once "
                "it answers",
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

    async def get_many(self, keys: Sequence[str]) -> list[CachedImage | None]:
        """As ``get`` for each key, with one call per shard for the keys not held here."""
        found: dict[str, CachedImage | None] = {key: self._local.get(key) for key in keys}
        by_shard = _by_shard([key for key, value in found.items() if value is None], self.shards)
        replies = await asyncio.gather(
            *(self._call(index, "get_many", wanted) for index, wanted in by_shard.items())
        )
        for wanted, reply in zip(by_shard.values(), replies, strict=True):
            for key, value in zip(wanted, reply or [None] * len(wanted), strict=True):
                if isinstance(value, CachedImage):
                    self._local.put(key, value)
                    found[key] = value
        return [found[key] for key in keys]

    async def put_many(self, items: Sequence[tuple[str, CachedImage]]) -> None:
        """As ``put`` for each item, with one call per shard."""
        values = dict(items)
        for key, value in values.items():
            self._local.put(key, value)
        by_shard = _by_shard(list(values), self.shards)
        await asyncio.gather(
            *(
                self._call(index, "put_many", [(key, values[key]) for key in keys])
                for index, keys in by_shard.items()
            )
        )

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
        if self._owes_release and not self._superseded and isinstance(replies[0], dict):
            self._release_beside()
        return {
            "shared": _sum_stats(answered),
            "local": self._local.stats().to_dict(),
            "errors": self._errors,
            "shards": self.shards,
            "shards_answered": len(answered),
        }

    def _release_beside(self) -> None:
        """The release connect() could not make (shard 0 was away then), in a task of its
        own: listing and killing actors is no part of answering a stats() call."""
        if self._releasing is None or self._releasing.done():
            self._releasing = run_detached(self._release_extra_shards())

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
        except Exception as exc:  # stats() tries again: say so once in a while
            self._warn("result cache: cannot list shard actors (%s); none released", exc)
            return
        self._owes_release = False
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


def _by_shard(keys: list[str], shards: int) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for key in keys:
        grouped.setdefault(shard_index(key, shards), []).append(key)
    return grouped


def _sum_stats(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Stats of all shards as one cache; hit_ratio is recomputed from the sums."""
    fields = ("entries", "bytes", "max_bytes", "hits", "misses", "evictions", "expirations")
    total = {f: sum(int(r.get(f, 0)) for r in replies) for f in fields}
    total["hit_ratio"] = hit_ratio(total["hits"], total["misses"])
    return total
