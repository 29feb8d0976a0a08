"""All SQL the queue runs on the store's Postgres database: procrastinate's schema, enqueueing,
and the read-only views behind `atlas queue status`.

procrastinate owns its tables (`procrastinate_jobs`, `procrastinate_workers`, ...); atlas never
changes their rows except through procrastinate's own SQL functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from atlas.store.db import Store

SCHEMA_STATE_KEY = "queue-schema"
# Serialises schema changes and enqueueing across processes (pg_advisory_xact_lock keys).
_SCHEMA_LOCK = "queue-schema"
_ENQUEUE_LOCK = "queue-enqueue"
JOB_STATES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")


def _key(name: str) -> int:
    digest = hashlib.sha256(f"atlas:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _raw(conn: Any) -> Any:
    """The psycopg connection under a SQLAlchemy connection (for multi-statement scripts)."""
    return conn.connection.driver_connection


def queue_tables_exist(store: Store) -> bool:
    """Whether procrastinate's schema is in the database."""
    with store.engine.connect() as conn:
        found = conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar()
    return found is not None


# --- schema -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaResult:
    """What `apply_schema` did: `created`, `migrated` (with the files) or `current`."""

    action: str
    version: str
    migrations: tuple[str, ...] = ()


def apply_schema(store: Store) -> SchemaResult:
    """Create procrastinate's schema, or apply its migrations not yet applied; idempotent.

    The applied migration files are recorded in the `state` table under SCHEMA_STATE_KEY, so a
    newer procrastinate's migrations run exactly once. One transaction, under an advisory lock.
    """
    from importlib.metadata import version

    from procrastinate.schema import SchemaManager

    installed = version("procrastinate")
    migrations = _migration_files(SchemaManager.get_migrations_path())
    with store.engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key(_SCHEMA_LOCK)})
        exists = conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar()
        row = conn.execute(
            text("SELECT value FROM state WHERE key = :k"), {"k": SCHEMA_STATE_KEY}
        ).scalar()
        recorded = _as_dict(row)
        if exists is None:
            _raw(conn).execute(SchemaManager.get_schema())
            action, applied = "created", [name for name, _ in migrations]
            ran: tuple[str, ...] = ()
        else:
            done = set(recorded.get("migrations") or [name for name, _ in migrations])
            todo = [(name, path) for name, path in migrations if name not in done]
            for _name, path in todo:
                _raw(conn).execute(path.read_text(encoding="utf-8"))
            ran = tuple(name for name, _ in todo)
            action = "migrated" if ran else "current"
            applied = sorted(done | set(ran))
        if action != "current" or recorded.get("version") != installed:
            value = json.dumps({"version": installed, "migrations": applied})
            conn.execute(
                text(
                    "INSERT INTO state (key, value, updated_at)"
                    " VALUES (:k, CAST(:v AS JSON), now()) ON CONFLICT (key)"
                    " DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
                ),
                {"k": SCHEMA_STATE_KEY, "v": value},
            )
    return SchemaResult(action, installed, ran)


def _migration_files(folder: str) -> list[tuple[str, Any]]:
    from pathlib import Path

    return [(p.name, p) for p in sorted(Path(folder).glob("*.sql"))]


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return json.loads(value)
    return dict(value)


# --- enqueueing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """One job to put on the queue; `queueing_lock` refuses a second while one is active."""

    task: str
    args: dict[str, Any]
    queueing_lock: str
    queue: str = "atlas"
    priority: int = 0
    delay_seconds: float = 0.0
    block_while_running: bool = True  # False: only a waiting job with the same lock blocks


def enqueue(store: Store, jobs: Sequence[NewJob]) -> list[int | None]:
    """Defer `jobs` in one transaction; a job whose queueing lock is waiting or running is skipped.

    procrastinate's own unique index covers only waiting jobs; the check here, under an
    advisory lock that every enqueuer takes, also covers running ones. Returns the new job ids
    (None for a skipped job), in order.
    """
    if not jobs:
        return []
    with store.engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key(_ENQUEUE_LOCK)})
        locks = [j.queueing_lock for j in jobs]
        found = conn.execute(
            text(
                "SELECT queueing_lock, status::text FROM procrastinate_jobs"
                " WHERE status IN ('todo', 'doing') AND queueing_lock = ANY(:locks)"
            ),
            {"locks": locks},
        ).all()
        waiting = {lock for lock, status in found if status == "todo"}
        running = {lock for lock, status in found if status == "doing"}
        ids: list[int | None] = []
        for job in jobs:
            lock = job.queueing_lock
            if lock in waiting or (job.block_while_running and lock in running):
                ids.append(None)
                continue
            waiting.add(lock)
            new_id = conn.execute(
                text(
                    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, :priority,"
                    " NULL, :qlock, CAST(:args AS jsonb),"
                    " now() + make_interval(secs => :delay))::procrastinate_job_to_defer_v1]))"
                ),
                {
                    "queue": job.queue, "task": job.task, "priority": job.priority,
                    "qlock": job.queueing_lock, "args": json.dumps(job.args),
                    "delay": float(job.delay_seconds),
                },
            ).scalar()  # fmt: skip
            ids.append(int(new_id))
    return ids


def active_jobs(store: Store, task: str, *, textset: str | None = None) -> int:
    """How many jobs of `task` (optionally for one text set) are waiting or running."""
    query = (
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = :task"
        " AND status IN ('todo', 'doing')"
    )
    params: dict[str, Any] = {"task": task}
    if textset is not None:
        query += " AND args->>'textset' = :textset"
        params["textset"] = textset
    with store.engine.connect() as conn:
        return int(conn.execute(text(query), params).scalar() or 0)


def outstanding(store: Store, queues: Iterable[str] | None = None) -> int:
    """Jobs waiting (now or later, for a retry) or running on `queues` (default: any queue)."""
    query = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    params: dict[str, Any] = {}
    if queues is not None:
        query += " AND queue_name = ANY(:queues)"
        params["queues"] = list(queues)
    with store.engine.connect() as conn:
        return int(conn.execute(text(query), params).scalar() or 0)


@contextmanager
def model_lock(store: Store, repo_id: str) -> Iterator[None]:
    """Hold a session advisory lock on `repo_id` for the block, waiting for it if needed.

    A job taken for a stalled worker that is in fact still alive waits here instead of scoring
    the same model twice at once; a killed worker's lock dies with its connection.
    """
    key = _key(f"model:{repo_id}")
    with store.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            with suppress(Exception):  # a lost connection has released it already
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


# --- worker descriptions (device, host, pid), kept beside procrastinate's worker rows -------


def worker_key(worker_id: int) -> str:
    return f"queue-worker:{worker_id}"


def describe_worker(store: Store, worker_id: int, info: dict[str, Any]) -> None:
    """Record what a procrastinate worker is (device, host, pid) for `atlas queue status`."""
    store.set_state(worker_key(worker_id), info)


def forget_workers(store: Store) -> int:
    """Drop descriptions of workers procrastinate no longer knows; returns how many."""
    with store.engine.begin() as conn:
        result = conn.execute(
            text(
                "DELETE FROM state WHERE key LIKE 'queue-worker:%' AND NOT EXISTS ("
                " SELECT 1 FROM procrastinate_workers w"
                " WHERE 'queue-worker:' || w.id::text = state.key)"
            )
        )
        return int(result.rowcount or 0)


# --- status -----------------------------------------------------------------------------------


@dataclass
class JobRow:
    """One job as `atlas queue status` shows it."""

    id: int
    task: str
    queue: str
    status: str
    model: str | None
    textset: str | None
    attempts: int
    scheduled_at: datetime | None
    worker_id: int | None
    stalled: bool
    model_status: str | None
    reason: str | None
    detail: str | None


@dataclass
class WorkerRow:
    """One live (registered) worker and what it is doing."""

    id: int
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    info: dict[str, Any]
    model: str | None


def job_rows(store: Store, stalled_after: float, limit: int = 1000) -> list[JobRow]:
    """Jobs, newest first, with the model's recorded status and reason (the last error)."""
    query = text(
        "SELECT j.id, j.task_name, j.queue_name, j.status::text AS status,"
        " j.args->>'repo_id' AS model,"
        " j.args->>'textset' AS textset, j.attempts, j.scheduled_at, j.worker_id,"
        " (j.status = 'doing' AND (j.worker_id IS NULL OR w.last_heartbeat <"
        "   now() - make_interval(secs => :stalled))) AS stalled,"
        " m.status AS model_status, m.reason, m.detail"
        " FROM procrastinate_jobs j"
        " LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
        " LEFT JOIN models m ON m.repo_id = j.args->>'repo_id'"
        " ORDER BY j.id DESC LIMIT :limit"
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query, {"stalled": float(stalled_after), "limit": limit}).mappings()
        return [
            JobRow(
                id=r["id"], task=r["task_name"], queue=r["queue_name"], status=r["status"],
                model=r["model"],
                textset=r["textset"], attempts=r["attempts"], scheduled_at=r["scheduled_at"],
                worker_id=r["worker_id"], stalled=bool(r["stalled"]),
                model_status=r["model_status"], reason=r["reason"], detail=r["detail"],
            )
            for r in rows
        ]


def job_counts(store: Store, stalled_after: float) -> dict[str, int]:
    """Jobs per state, with running jobs of silent workers counted as `stalled`."""
    query = text(
        "SELECT CASE WHEN j.status = 'doing' AND (j.worker_id IS NULL OR w.last_heartbeat <"
        "   now() - make_interval(secs => :stalled)) THEN 'stalled' ELSE j.status::text END,"
        " count(*)"
        " FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
        " GROUP BY 1"
    )
    with store.engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(query, {"stalled": float(stalled_after)})}


def worker_rows(store: Store) -> list[WorkerRow]:
    """Registered workers with their last heartbeat, description and current model."""
    query = text(
        "SELECT w.id, w.last_heartbeat,"
        " EXTRACT(EPOCH FROM now() - w.last_heartbeat) AS age, s.value AS info,"
        " (SELECT j.args->>'repo_id' FROM procrastinate_jobs j"
        "   WHERE j.worker_id = w.id AND j.status = 'doing' ORDER BY j.id LIMIT 1) AS model"
        " FROM procrastinate_workers w"
        " LEFT JOIN state s ON s.key = 'queue-worker:' || w.id::text"
        " ORDER BY w.id"
    )
    with store.engine.connect() as conn:
        return [
            WorkerRow(
                id=r["id"], last_heartbeat=r["last_heartbeat"],
                seconds_since_heartbeat=float(r["age"]), info=_as_dict(r["info"]),
                model=r["model"],
            )
            for r in conn.execute(query).mappings()
        ]
