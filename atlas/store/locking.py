"""One writer at a time per store: a file lock for SQLite, an advisory lock for Postgres.

The lock belongs to the store itself, not to ATLAS_HOME: for SQLite it is a file beside the
database file (`atlas.db.lock`), for Postgres a session advisory lock inside the database. Every
command that writes vectors or deletes downloaded weights (`sync`, `score`, `nearest --add`,
`nearest` scoring a model on the fly, the scheduled jobs) holds it for its whole run; a second
one exits at once with LockHeld (exit code 6). Locks die with their process (kill -9 included).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from atlas.errors import LockHeld, StoreUnavailable
from atlas.settings import Settings, redact_url
from atlas.store import Store

_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_try_advisory_lock`, derived from the lock's name."""
    digest = hashlib.sha256(f"atlas:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _sqlite_file(store: Store) -> str | None:
    from sqlalchemy.engine import make_url

    database = make_url(store.url).database
    return None if database in (None, "", ":memory:") else database


# The one writer lock's name: sync, score and nearest --add all take the same lock.
WRITER = "sync"
WRITERS = "sync, score or nearest --add"


def lock_path(store: Store, name: str = WRITER, settings: Settings | None = None) -> Path:
    """The lock file for a SQLite store: beside the database file, whatever ATLAS_HOME is."""
    database = Path(_sqlite_file(store) or ":memory:").expanduser().resolve()
    suffix = ".lock" if name == WRITER else f".{name}.lock"
    return database.with_name(database.name + suffix)


def _held_message(name: str, store: Store) -> LockHeld:
    what = f"atlas writer ({WRITERS})" if name == WRITER else f"atlas {name}"
    return LockHeld(
        f"another {what} is running on {redact_url(store.url)}",
        hint="wait for it to finish; `atlas sync` is safe to call again (cron included)",
    )


@contextmanager
def store_lock(
    store: Store, name: str = WRITER, settings: Settings | None = None
) -> Iterator[None]:
    """Hold the store's `name` lock for the block, or raise LockHeld at once if it is taken."""
    if store.dialect == "postgresql":
        with _pg_lock(store, name):
            yield
    elif store.dialect == "sqlite" and _sqlite_file(store) is not None:
        with _file_lock(store, name, settings):
            yield
    else:
        with _process_lock(store, name):
            yield


@contextmanager
def _file_lock(store: Store, name: str, settings: Settings | None) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path = lock_path(store, name, settings)
    # thread_local=False and a fresh object each time: a second acquire in this process, from any
    # thread, contends like another process would (flock is per open file description).
    lock = FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise _held_message(name, store) from None
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the lock file {path} beside the database: {exc.strerror or exc}",
            hint="the database's folder must be writable for commands that write",
        ) from exc
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _pg_lock(store: Store, name: str) -> Iterator[None]:
    """A session advisory lock on a dedicated connection, released when that connection closes."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.pool import NullPool
    from sqlmodel import create_engine

    engine = create_engine(store.url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    key = advisory_key(name)
    try:
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"cannot open database {redact_url(store.url)}") from exc
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                raise _held_message(name, store)
            try:
                yield
            finally:
                # If the connection is gone, the lock went with it.
                with suppress(OperationalError, DBAPIError):
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            conn.close()
    finally:
        engine.dispose()


@contextmanager
def _process_lock(store: Store, name: str) -> Iterator[None]:
    """In-memory databases live in one process: a plain lock is enough."""
    with _LOCAL_GUARD:
        lock = _LOCAL_LOCKS.setdefault(f"{store.url}|{name}", threading.Lock())
    if not lock.acquire(blocking=False):
        raise _held_message(name, store)
    try:
        yield
    finally:
        lock.release()
