"""The SQLite database: schema, connections, and commits grouped across sessions.

One writer thread owns the connection that changes the queue. Callers on the
event loop hand it a function and await the commit that covers it; the thread
runs whatever has piled up while the previous commit was syncing as one
transaction, so many sessions share one fsync (group commit). Reads run on a
small pool of threads with their own connections, which WAL lets proceed
beside the writer. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from . import models  # noqa: F401  (registers the tables)

log = logging.getLogger("mailkeep.store")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 512
"""Operations that one group commit takes at most."""

_ADDED_COLUMNS = (
    ("domain", "recipients", "TEXT NOT NULL DEFAULT ''"),
)
"""Columns added after a table was first created; create_all does not add them to old files."""

_EXTRA_SCHEMA = (
    "CREATE INDEX IF NOT EXISTS ix_recipient_due ON recipient (state, next_attempt)",
    "CREATE TABLE IF NOT EXISTS mk_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def connect(path: Path | str) -> sqlite3.Connection:
    """Open a connection with the pragmas every Mailkeep connection needs.

    WAL with ``synchronous=FULL`` makes each commit durable before it returns,
    which is what a 250 after DATA promises.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def _set_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    dbapi_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    dbapi_conn.execute("PRAGMA journal_mode = WAL")
    dbapi_conn.execute("PRAGMA synchronous = FULL")


def make_engine(path: Path | str) -> Engine:
    """Create the SQLAlchemy engine used for account and domain administration."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _set_pragmas)
    return engine


def create_schema(path: Path | str) -> None:
    """Create the database file and any missing tables and indexes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(path)
    try:
        SQLModel.metadata.create_all(engine)
    finally:
        engine.dispose()
    conn = connect(path)
    try:
        for table, column, kind in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        for statement in _EXTRA_SCHEMA:
            conn.execute(statement)
    finally:
        conn.close()


class _Writer(threading.Thread):
    """The thread that owns the writing connection and groups commits."""

    def __init__(self, path: Path | str):
        super().__init__(name="mailkeep-writer", daemon=True)
        self.path = path
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.commits = 0
        self.operations = 0

    def run(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                first = self.jobs.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                self._commit(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for func, args, _future, _loop in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = func(conn, *args)
                except Exception as exc:  # one caller's failure must not undo the others
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("group commit of %d operations failed: %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(False, exc)] * len(batch)
        self.commits += 1
        self.operations += len(batch)
        # One wake-up per event loop settles every future of the commit, instead of one
        # self-pipe write per operation.
        settled: dict[Any, list] = {}
        for (_func, _args, future, loop), (ok, value) in zip(batch, results):
            if future is None:
                if not ok:
                    log.error("background store operation failed: %s", value)
                continue
            settled.setdefault(loop, []).append((future, ok, value))
        for loop, items in settled.items():
            try:
                loop.call_soon_threadsafe(_settle_all, items)
            except RuntimeError:  # the caller's loop has closed; nobody waits for these
                log.warning("%d store results had no event loop left to receive them", len(items))


def _settle_all(items: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in items:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Database:
    """The store as the server uses it: grouped writes, pooled reads.

    Args:
        path: the SQLite file; created with its schema when missing.
        readers: threads, each with its own connection, that serve reads.
    """

    def __init__(self, path: Path | str, readers: int = 2):
        self.path = Path(path)
        create_schema(self.path)
        self._writer = _Writer(self.path)
        self._writer.start()
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="mailkeep-reader")
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def write(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``func(conn, *args)`` in the next group commit.

        Returns:
            A future that resolves to the function's result once the
            transaction that ran it is on disk, or to its exception.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._writer.jobs.put((func, args, future, loop))
        return future

    def write_nowait(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(conn, *args)`` in the next group commit without waiting; failures are logged."""
        self._writer.jobs.put((func, args, None, None))

    def _reader_connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._reader_connections.append(conn)
        return conn

    def _run_read(self, func: Callable[..., T], args: tuple) -> T:
        return func(self._reader_connection(), *args)

    async def read(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(conn, *args)`` on a reader thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, func, args)

    @property
    def stats(self) -> tuple[int, int]:
        """Commits made and operations they carried, for benchmarks."""
        return self._writer.commits, self._writer.operations

    def close(self) -> None:
        """Finish queued writes, then close every connection."""
        self._writer.jobs.put(None)
        self._writer.join(timeout=30)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_connections:
                conn.close()
            self._reader_connections.clear()
