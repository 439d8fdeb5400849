"""The record store a config asks for: SQLite beside a local job store, or Redis; the
stores' URLs as a node's environment may set them; whether the records can be reached."""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

from serve_app.config import JobsConfig
from serve_app.jobs.events import ChangeFeed, PolledChanges
from serve_app.jobs.record_store import RecordStore, SqliteRecords

RECORDS_FILE = "records.sqlite3"

logger = logging.getLogger(__name__)


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


class RecordsHealth:
    """Whether the record store answered this replica's last look; an outage and the
    recovery are each logged once."""

    def __init__(self, config: JobsConfig) -> None:
        self._config = config
        self.away = False

    async def check(self, records: RecordStore) -> None:
        """At start, one cheap read: an unreachable record store is said at once."""
        try:
            await records.usage()
        except Exception as error:
            self.failed(error)
        else:
            config = self._config
            logger.info(
                "jobs: records in %s, uploads and results in %s",
                shown_url(config.records_url) if config.records_url else "SQLite (this node)",
                shown_url(config.store_url),
            )

    def failed(self, error: Exception) -> None:
        if self.away:
            return
        self.away = True
        logger.error(
            "jobs: the job records cannot be reached (%s); /v1/jobs answers 503 store_error "
            "until they can, running jobs are written once they are back, /v1/stylize is "
            "served meanwhile",
            getattr(error, "message", None) or error,
        )

    def answered(self) -> None:
        if self.away:
            self.away = False
            logger.info("jobs: the job records can be reached again")


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
