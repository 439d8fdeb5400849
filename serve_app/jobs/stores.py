"""The record store a config asks for: SQLite beside a local job store, or Redis; and the
stores' URLs as a node's environment may set them."""

from __future__ import annotations

import inspect
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

from serve_app.config import JobsConfig
from serve_app.jobs.events import ChangeFeed, PolledChanges
from serve_app.jobs.record_store import RecordStore, SqliteRecords

RECORDS_FILE = "records.sqlite3"


def shown_url(url: str) -> str:
    """A store's URL as logs and errors show it: any password in it left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_environment(config: JobsConfig) -> JobsConfig:
    """``config`` with the store URLs this node's environment sets (the variables that
    ``store_url_env`` and ``records_url_env`` name, when set and not empty): a Serve
    config cannot read the environment, so a cluster's nodes are told this way."""
    changes = {}
    for field, env in (
        ("store_url", config.store_url_env),
        ("records_url", config.records_url_env),
    ):
        value = os.environ.get(env, "").strip() if env else ""
        if value:
            changes[field] = value
    return config.model_copy(update=changes) if changes else config


def open_record_store(
    config: JobsConfig, local_root: Path | None
) -> tuple[RecordStore, ChangeFeed | None]:
    """The records of ``config`` and the feed of changes other replicas write.

    ``local_root``: the job store's folder when it is on this node (None: object storage,
    which needs a shared record store too, or jobs would be invisible across nodes)."""
    url = config.records_url
    if url is None:
        if local_root is None:
            raise ValueError(
                "jobs.store_url is not a local folder: set jobs.records_url to a Redis URL "
                "(redis://host:port/db) so that every node sees every job"
            )
        return _sqlite(local_root / RECORDS_FILE, config)
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return _sqlite(Path(urlparse(url).path), config)
    if scheme in ("redis", "rediss", "unix"):
        from serve_app.jobs.redis_store import RedisRecords

        store = RedisRecords(url)
        return CountedRecords(store), store.feed()
    raise ValueError(
        f"jobs.records_url {url!r}: expected redis://..., rediss://... or sqlite:///..."
    )


def _sqlite(path: Path, config: JobsConfig) -> tuple[RecordStore, ChangeFeed]:
    store = CountedRecords(SqliteRecords(path, threads=config.io_threads))
    return store, PolledChanges(store.changes, store.newest_change, config.poll_interval_s)


class CountedRecords:
    """A record store that counts the calls made to it, by operation: what jobs cost the
    store (``/v1/stats`` shows it; e.g. that a job's event followers read nothing per
    change). Everything else is the store's own."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attribute):
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attribute(*args, **kwargs)

        return counted
