"""Where job records live: every read and write a job needs, each one atomic.

Two implementations of :class:`RecordStore`: :class:`SqliteRecords` (this module) for one
node — a database file beside the job store, shared by every ingress replica of the node,
nothing to run — and ``RedisRecords`` (``redis_store.py``) for clusters. The job service
relies on these guarantees, so both give them:

- a runner writes a record only while it holds the job's lease and the job is not over
  (``update``/``finish`` are compare-and-set on the runner and the state): a cancel always
  wins over a runner that is still writing;
- ``claim`` hands a job's lease to one runner at a time (a dead runner's job is taken
  over by exactly one replica);
- ``create`` reserves the job's store space against the bound, and finds the same
  owner's job for the same content or idempotency key, in one step;
- every operation costs the same with 10 records or 100,000: indexed lookups only; no
  call lists or reads all records (expiry and takeovers take the due ones, a page at a
  time, in the background).

The store also keeps leased places (``hold_place``): bounded holds that every replica
sharing it counts, such as an API key's live streams; a place its holder stops renewing
lapses.

Longer than most modules, on purpose: the protocol and its SQLite implementation, one
transaction per operation, are read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from serve_app.errors import StoreError, StoreFull, TooManyJobs
from serve_app.jobs.records import ACTIVE_STATES, JobRecord

T = TypeVar("T")


def too_many_jobs(bound: int) -> TooManyJobs:
    return TooManyJobs(
        f"this API key has {bound} jobs queued or running, the most it may; submit more as "
        "they finish"
    )


class RecordStore(Protocol):
    async def create(
        self,
        record: JobRecord,
        find_same_content: bool,
        max_bytes: int,
        max_active: int | None = None,
    ) -> tuple[JobRecord, bool]:
        """Insert ``record`` (reserving its ``reserved_bytes``), unless its owner already
        has a job for its idempotency key, or (``find_same_content``) a live job for its
        content key: then that job, and False. Raises TooManyJobs when the owner already
        has ``max_active`` jobs queued or running (or being made) in the store, and
        StoreFull when the reservation would pass ``max_bytes``."""

    async def find(self, record: JobRecord, find_same_content: bool) -> JobRecord | None:
        """The job ``create`` would answer instead of inserting ``record``, or None (it
        inserts nothing)."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def expired_at(self, job_id: str, owner: str) -> float | None:
        """When a removed job of ``owner`` expired (kept for a while, so its id answers
        clearly to its owner; to anyone else it is as unknown as any other key's job)."""

    async def list(
        self, owner: str, state: str | None, before: tuple[float, str] | None, limit: int
    ) -> list[JobRecord]:
        """The owner's jobs, newest first, after the (created_at, id) ``before``."""

    async def claim(self, job_id: str, runner: str, lease_until: float) -> JobRecord | None:
        """The job's lease for ``runner`` (and one more attempt counted), if the job is
        queued or running and its lease is free, expired or already this runner's."""

    async def update(self, job_id: str, runner: str, changes: dict[str, Any]) -> JobRecord | None:
        """Apply ``changes`` if ``runner`` holds the lease and the job is not over;
        the new record, or None when the job is no longer this runner's."""

    async def finish(self, job_id: str, runner: str, changes: dict[str, Any]) -> JobRecord | None:
        """As ``update``, for the change that ends the job (its state terminal, the
        lease released, ``expires_at`` and ``reserved_bytes`` set)."""

    async def cancel(self, job_id: str, changes: dict[str, Any]) -> JobRecord | None:
        """Apply ``changes`` (state cancelled) whatever runs it; None if the job is gone
        or already cancelled."""

    async def set_fields(self, job_id: str, changes: dict[str, Any]) -> JobRecord | None:
        """Apply changes that need no lease (webhook delivery status); None if gone."""

    async def stale(self, now: float, limit: int) -> list[str]:
        """Queued or running jobs whose lease ran out."""

    async def due(self, now: float, limit: int) -> list[str]:
        """Jobs whose record expired."""

    async def remove(self, job_id: str, now: float) -> bool:
        """Delete an expired record, release its space, remember its expiry."""

    async def find_done(self, content_key: str) -> JobRecord | None:
        """A finished job of any owner with this content key whose output may be copied
        (``shareable``), the newest where several are."""

    async def usage(self) -> int:
        """Bytes reserved by all records."""

    async def hold_place(self, group: str, holder: str, bound: int, until: float) -> bool:
        """One of ``bound`` places of ``group`` (an API key's live streams) for ``holder``
        until ``until`` (epoch seconds); False when all are held. A place its holder stops
        renewing (its process died) lapses at its time."""

    async def renew_place(self, group: str, holder: str, until: float) -> None:
        """Keep ``holder``'s place until ``until``, if it still holds it: a place given
        back (or lapsed) is not held again, so that a renewal that crosses the release of
        its place in flight cannot bring it back for a lease with nobody renewing it."""

    async def release_place(self, group: str, holder: str) -> None: ...

    async def changes(self, after: int, limit: int) -> tuple[list[JobRecord], int]:
        """Records written after the change number ``after``, and the newest number.
        (The local store's change feed; a shared store pushes changes instead.)"""

    async def close(self) -> None: ...


# --- SQLite ----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    content_key TEXT NOT NULL,
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    lease_until REAL,
    runner TEXT,
    reserved_bytes INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_by_owner_state ON jobs (owner, state, created_at DESC, id DESC);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_content ON jobs (owner, content_key);
CREATE INDEX IF NOT EXISTS jobs_done_by_content ON jobs (content_key) WHERE state = 'done';
CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (lease_until)
    WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('usage', 0), ('seq', 0);
CREATE TABLE IF NOT EXISTS expired (id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS expired_by_time ON expired (at);
-- The owner of an expired id, in a table of its own: the release before writes and reads
-- `expired` as it was, beside this one during a rolling update or after a rollback.
CREATE TABLE IF NOT EXISTS expired_owners (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS expired_owners_by_time ON expired_owners (at);
CREATE TABLE IF NOT EXISTS places (
    grp TEXT NOT NULL, holder TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (grp, holder)
);
"""
_COLUMNS = (
    "id",
    "owner",
    "state",
    "content_key",
    "idempotency_key",
    "created_at",
    "expires_at",
    "lease_until",
    "runner",
    "reserved_bytes",
    "seq",
    "body",
)
BUSY_TIMEOUT_S = 30.0
# How long a removed job's id is remembered (answers "expired" rather than "unknown").
EXPIRED_MEMORY_S = 7 * 24 * 3600


def _row(record: JobRecord, seq: int) -> tuple:
    record.version, record.updated_at = seq, time.time()
    return (
        record.id,
        record.owner,
        record.state,
        record.content_key,
        record.idempotency_key,
        record.created_at,
        record.expires_at or 0.0,
        record.lease_until,
        record.runner,
        record.reserved_bytes,
        seq,
        record.to_json(),
    )


class SqliteRecords:
    """Job records in one SQLite database file (WAL mode): every ingress replica of a
    node opens it; transactions make each operation atomic across their processes.

    Calls run on the store's own threads (``threads``), never on the event loop's
    default pool, so a burst of picture work cannot delay a job's lease renewals."""

    def __init__(self, path: str | Path, threads: int = 4) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="job-records")
        self._db().executescript(_SCHEMA)

    # --- plumbing ------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the store's threads; SQLite's own failures (a lock held
        past the busy timeout, a full or read-only disk) are the store's error, as the
        shared store's are, which callers wait out or answer 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except sqlite3.Error as error:
            raise StoreError(f"the job record database failed: {error}") from error

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        return db.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value"
        ).fetchone()[0]

    @staticmethod
    def _add_usage(db: sqlite3.Connection, delta: int) -> None:
        if delta:
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'usage'", (delta,))

    def _write(self, db: sqlite3.Connection, record: JobRecord) -> JobRecord:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        db.execute(
            f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            _row(record, self._next_seq(db)),
        )
        return record

    @staticmethod
    def _read(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
        # The lease lives in its column (renewals write nothing else).
        row = db.execute("SELECT body, lease_until FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        record = JobRecord.from_json(row[0])
        record.lease_until = row[1]
        return record

    # --- the operations ------------------------------------------------------------------

    async def create(
        self,
        record: JobRecord,
        find_same_content: bool,
        max_bytes: int,
        max_active: int | None = None,
    ) -> tuple[JobRecord, bool]:
        return await self._run(self._create, record, find_same_content, max_bytes, max_active)

    def _create(
        self, record: JobRecord, find_same_content: bool, max_bytes: int, max_active: int | None
    ) -> tuple[JobRecord, bool]:
        with self._transaction() as db:
            existing = self._existing(db, record, find_same_content)
            if existing is not None:
                return existing, False
            if max_active is not None:
                states = sorted(ACTIVE_STATES)
                (active,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner = ? "
                    f"AND state IN ({', '.join('?' for _ in states)})",
                    (record.owner, *states),
                ).fetchone()
                if active >= max_active:
                    raise too_many_jobs(max_active)
            used = db.execute("SELECT value FROM counters WHERE name = 'usage'").fetchone()[0]
            if used + record.reserved_bytes > max_bytes:
                raise StoreFull(
                    f"the job store is full ({used} of {max_bytes} bytes held); retry later, "
                    "or fetch and delete finished jobs"
                )
            self._add_usage(db, record.reserved_bytes)
            return self._write(db, record.model_copy()), True

    async def find(self, record: JobRecord, find_same_content: bool) -> JobRecord | None:
        return await self._run(lambda: self._existing(self._db(), record, find_same_content))

    def _existing(
        self, db: sqlite3.Connection, record: JobRecord, find_same_content: bool
    ) -> JobRecord | None:
        if record.idempotency_key is not None:
            row = db.execute(
                "SELECT body FROM jobs WHERE owner = ? AND idempotency_key = ?",
                (record.owner, record.idempotency_key),
            ).fetchone()
            if row is not None:
                return JobRecord.from_json(row[0])
        if not find_same_content:
            return None
        row = db.execute(
            "SELECT body FROM jobs WHERE owner = ? AND content_key = ? "
            "AND state IN ('queued', 'running', 'done') ORDER BY created_at DESC LIMIT 1",
            (record.owner, record.content_key),
        ).fetchone()
        return None if row is None else JobRecord.from_json(row[0])

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda: self._read(self._db(), job_id))

    async def expired_at(self, job_id: str, owner: str) -> float | None:
        def read() -> float | None:
            # An id whose owner is not known (expired by the release before) answers
            # anyone, as it did.
            row = (
                self._db()
                .execute(
                    "SELECT expired.at FROM expired LEFT JOIN expired_owners USING (id) "
                    "WHERE id = ? AND coalesce(expired_owners.owner, ?) = ?",
                    (job_id, owner, owner),
                )
                .fetchone()
            )
            return None if row is None else row[0]

        return await self._run(read)

    async def list(
        self, owner: str, state: str | None, before: tuple[float, str] | None, limit: int
    ) -> list[JobRecord]:
        where, args = ["owner = ?"], [owner]
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        query = (
            f"SELECT body FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )

        def read() -> list[JobRecord]:
            rows = self._db().execute(query, (*args, limit)).fetchall()
            return [JobRecord.from_json(row[0]) for row in rows]

        return await self._run(read)

    async def claim(self, job_id: str, runner: str, lease_until: float) -> JobRecord | None:
        def claim() -> JobRecord | None:
            now = time.time()
            with self._transaction() as db:
                record = self._read(db, job_id)
                if record is None or record.state not in ACTIVE_STATES:
                    return None
                free = record.runner in (None, runner) or (record.lease_until or 0) < now
                if not free:
                    return None
                record.runner, record.lease_until = runner, lease_until
                record.attempts += 1
                return self._write(db, record)

        return await self._run(claim)

    async def renew(self, job_ids: list[str], runner: str, lease_until: float) -> list[str]:
        def renew() -> list[str]:
            if not job_ids:
                return []
            marks = ", ".join("?" for _ in job_ids)
            with self._transaction() as db:
                db.execute(
                    f"UPDATE jobs SET lease_until = ? WHERE id IN ({marks}) AND runner = ? "
                    "AND state IN ('queued', 'running')",
                    (lease_until, *job_ids, runner),
                )
                held = db.execute(
                    f"SELECT id FROM jobs WHERE id IN ({marks}) AND runner = ? "
                    "AND state IN ('queued', 'running')",
                    (*job_ids, runner),
                )
                kept = {row[0] for row in held}
            return [job_id for job_id in job_ids if job_id not in kept]

        return await self._run(renew)

    async def update(self, job_id: str, runner: str, changes: dict[str, Any]) -> JobRecord | None:
        return await self._run(self._runner_write, job_id, runner, changes, False)

    async def finish(self, job_id: str, runner: str, changes: dict[str, Any]) -> JobRecord | None:
        return await self._run(self._runner_write, job_id, runner, changes, True)

    def _runner_write(
        self, job_id: str, runner: str, changes: dict[str, Any], ending: bool
    ) -> JobRecord | None:
        with self._transaction() as db:
            record = self._read(db, job_id)
            if record is None or record.terminal or record.runner != runner:
                return None
            held = record.reserved_bytes
            record = record.model_copy(update=changes)
            if ending:
                record.runner, record.lease_until = None, None
            self._add_usage(db, record.reserved_bytes - held)
            return self._write(db, record)

    async def cancel(self, job_id: str, changes: dict[str, Any]) -> JobRecord | None:
        def cancel() -> JobRecord | None:
            with self._transaction() as db:
                record = self._read(db, job_id)
                if record is None or record.state == "cancelled":
                    return None
                held = record.reserved_bytes
                record = record.model_copy(update=changes)
                record.runner, record.lease_until = None, None
                self._add_usage(db, record.reserved_bytes - held)
                return self._write(db, record)

        return await self._run(cancel)

    async def set_fields(self, job_id: str, changes: dict[str, Any]) -> JobRecord | None:
        def write() -> JobRecord | None:
            with self._transaction() as db:
                record = self._read(db, job_id)
                if record is None:
                    return None
                return self._write(db, record.model_copy(update=changes))

        return await self._run(write)

    async def stale(self, now: float, limit: int) -> list[str]:
        def read() -> list[str]:
            rows = self._db().execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') AND lease_until < ? "
                "ORDER BY lease_until LIMIT ?",
                (now, limit),
            )
            return [row[0] for row in rows]

        return await self._run(read)

    async def due(self, now: float, limit: int) -> list[str]:
        def read() -> list[str]:
            rows = self._db().execute(
                "SELECT id FROM jobs WHERE expires_at < ? ORDER BY expires_at LIMIT ?",
                (now, limit),
            )
            return [row[0] for row in rows]

        return await self._run(read)

    async def remove(self, job_id: str, now: float) -> bool:
        def remove() -> bool:
            with self._transaction() as db:
                row = db.execute(
                    "DELETE FROM jobs WHERE id = ? AND expires_at < ? "
                    "RETURNING reserved_bytes, owner",
                    (job_id, now),
                ).fetchone()
                if row is None:
                    return False
                reserved, owner = row
                self._add_usage(db, -reserved)
                db.execute("INSERT OR REPLACE INTO expired VALUES (?, ?)", (job_id, now))
                db.execute(
                    "INSERT OR REPLACE INTO expired_owners VALUES (?, ?, ?)", (job_id, owner, now)
                )
                forgotten = now - EXPIRED_MEMORY_S
                db.execute("DELETE FROM expired WHERE at < ?", (forgotten,))
                db.execute("DELETE FROM expired_owners WHERE at < ?", (forgotten,))
                return True

        return await self._run(remove)

    async def find_done(self, content_key: str) -> JobRecord | None:
        def read() -> JobRecord | None:
            row = (
                self._db()
                .execute(
                    "SELECT body FROM jobs WHERE content_key = ? AND state = 'done' "
                    "AND coalesce(json_extract(body, '$.shareable'), 1) "
                    "ORDER BY created_at DESC LIMIT 1",
                    (content_key,),
                )
                .fetchone()
            )
            return None if row is None else JobRecord.from_json(row[0])

        return await self._run(read)

    async def usage(self) -> int:
        def read() -> int:
            return (
                self._db().execute("SELECT value FROM counters WHERE name = 'usage'").fetchone()[0]
            )

        return await self._run(read)

    async def hold_place(self, group: str, holder: str, bound: int, until: float) -> bool:
        def hold() -> bool:
            with self._transaction() as db:
                db.execute("DELETE FROM places WHERE grp = ? AND until < ?", (group, time.time()))
                (held,) = db.execute(
                    "SELECT COUNT(*) FROM places WHERE grp = ? AND holder != ?", (group, holder)
                ).fetchone()
                if held >= bound:
                    return False
                db.execute("INSERT OR REPLACE INTO places VALUES (?, ?, ?)", (group, holder, until))
                return True

        return await self._run(hold)

    async def renew_place(self, group: str, holder: str, until: float) -> None:
        def renew() -> None:
            with self._transaction() as db:
                db.execute(
                    "UPDATE places SET until = ? WHERE grp = ? AND holder = ?",
                    (until, group, holder),
                )

        await self._run(renew)

    async def release_place(self, group: str, holder: str) -> None:
        def release() -> None:
            with self._transaction() as db:
                db.execute("DELETE FROM places WHERE grp = ? AND holder = ?", (group, holder))

        await self._run(release)

    async def changes(self, after: int, limit: int) -> tuple[list[JobRecord], int]:
        def read() -> tuple[list[JobRecord], int]:
            db = self._db()
            rows = db.execute(
                "SELECT body, seq FROM jobs WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            newest = rows[-1][1] if rows else after
            return [JobRecord.from_json(row[0]) for row in rows], newest

        return await self._run(read)

    async def newest_change(self) -> int:
        def read() -> int:
            return self._db().execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()[0]

        return await self._run(read)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
