"""`Writer`: every write transaction of a process, as a sync function of a Connection.

On a SQLite file all of a process's writes go through **one connection in one thread of its
own**. SQLite has one write lock per database; with a pool of aiosqlite connections the writers
fought over it (the losers sleeping in SQLite's busy handler, 1, 2, 5, 10 ... ms) while the
winner held it across a thread hand-off per statement. The profile of `POST /api/tasks` showed
both. Here, units queued while a transaction runs are committed together in the next one (group
commit), each inside its own SAVEPOINT, so one unit that fails rolls back alone and the others
still commit. It takes one hand-off to the thread and one wake-up of the event loop per batch,
instead of several per statement. Each transaction begins IMMEDIATE: a unit reads and then
writes under the same lock, and so never overwrites a commit it did not see (another process on
the same file, e.g. a second gateway copy, waits under the busy timeout).

Everywhere else (PostgreSQL, an in-memory SQLite) a unit runs in its own transaction on an
async engine (`run_sync`). Row locks (`FOR UPDATE`) in a unit keep it correct on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentbus.common.db import sync_sqlite_engine

log = logging.getLogger(__name__)
T = TypeVar("T")
Unit = Callable[[Connection], T]

CHECKPOINT_EVERY_S = 0.5
MAX_BATCH = 256  # units per transaction at most (bounds the work lost to one failed commit)


class Writer:
    def __init__(self, engine: AsyncEngine, name: str = "db-writer") -> None:
        self.engine = engine
        self.name = name
        self._sync: Engine | None = sync_sqlite_engine(engine.url)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = threading.Event()
        self._stopped = threading.Event()
        self._pg: AsyncEngine | None = None

    async def __call__(self, unit: Unit[T]) -> T:
        """Run `unit(conn)` in a transaction of its own (committed, or rolled back if it raises)."""
        if self._sync is None:
            return await self._on_async_engine(unit)
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((unit, future, loop))
        return await future

    async def _on_async_engine(self, unit: Unit[T]) -> T:
        """PostgreSQL: a pool of its own without a ping per checkout (a third of a write's CPU and
        one more round trip), and without overflow (see `make_engine`). A connection found broken
        before the commit was sent (the server restarted) is retried once: nothing of that
        transaction was kept, and SQLAlchemy has meanwhile marked every connection of the pool from
        before the failure as stale."""
        engine = self._pool_engine()
        for attempt in (1, 2):
            committing = False
            try:
                async with engine.connect() as conn:
                    async with conn.begin():
                        result = await conn.run_sync(unit)
                        committing = True
                    return result
            except DBAPIError as exc:
                if attempt == 2 or committing or not exc.connection_invalidated:
                    raise
                log.info(
                    "write connection lost before its commit (%s); retrying once", type(exc.orig).__name__
                )
        raise AssertionError("unreachable")

    def _pool_engine(self) -> AsyncEngine:
        if self.engine.dialect.name != "postgresql":
            return self.engine  # an in-memory SQLite: one connection, shared with the engine
        if self._pg is None:
            self._pg = create_async_engine(
                self.engine.url, pool_size=8, max_overflow=0, pool_pre_ping=False, pool_recycle=1800
            )
        return self._pg

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                    self._thread.start()
                    self._checkpointer = threading.Thread(
                        target=self._checkpoints, name=f"{self.name}-checkpoint", daemon=True
                    )
                    self._checkpointer.start()

    async def close(self) -> None:
        """Finish what is queued, then stop the thread and close the connection."""
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._checkpointer is not None:
            self._stopped.set()
            self._checkpoint_due.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._sync is not None:
            self._sync.dispose()
        if self._pg is not None:
            await self._pg.dispose()

    # --- the writer thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sync is not None
        conn: Connection | None = None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                if conn is None or conn.invalidated or conn.closed:
                    conn = self._sync.connect()
                    # Checkpoints are the checkpointer thread's: run by a commit here, one every
                    # ~130 event batches stalled that commit (and the events behind it) 4-6 ms.
                    # (On the DB-API connection: through SQLAlchemy it would begin a transaction.)
                    conn.connection.dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")  # type: ignore[union-attr]
                outcomes = self._transaction(conn, batch)
                self._checkpoint_due.set()
            except Exception as exc:  # BEGIN or COMMIT failed: nothing in the batch was stored
                log.warning("write transaction of %d units failed: %s", len(batch), type(exc).__name__)
                outcomes = [(False, exc)] * len(batch)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                    conn = None
            self._hand_back(batch, outcomes)
        if conn is not None:
            conn.close()

    def _checkpoints(self) -> None:
        """Copy the WAL back into the database file, off the writer's path: a PASSIVE checkpoint
        never takes the write lock, so commits go on meanwhile. At most every CHECKPOINT_EVERY_S,
        and only after commits; the last one runs at close."""
        assert self._sync is not None
        conn = self._sync.raw_connection()  # DB-API, autocommit: a PRAGMA here begins nothing
        try:
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception as exc:  # busy or locked: the next round does it
                    log.debug("WAL checkpoint skipped: %r", exc)
                if self._stopped.is_set():
                    return
                self._stopped.wait(CHECKPOINT_EVERY_S)
        finally:
            conn.close()

    @staticmethod
    def _transaction(conn: Connection, batch: list[Any]) -> list[tuple[bool, Any]]:
        if len(batch) == 1:
            # Alone in its transaction: its failure rolls the transaction back (no savepoint needed).
            try:
                with conn.begin():
                    return [(True, batch[0][0](conn))]
            except Exception as exc:
                return [(False, exc)]
        outcomes: list[tuple[bool, Any]] = []
        with conn.begin():
            for unit, _future, _loop in batch:
                savepoint = conn.begin_nested()
                try:
                    result = unit(conn)
                except Exception as exc:
                    savepoint.rollback()
                    outcomes.append((False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((True, result))
        return outcomes

    @staticmethod
    def _hand_back(batch: list[Any], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_unit, future, loop), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass


def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():  # the caller was cancelled; the unit ran (or failed) all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
