"""The scoring fleet: many workers scoring one Postgres atlas through procrastinate.

Who does what: `atlas sync --enqueue` (or `atlas schedule --enqueue`) discovers and filters as
usual, then puts one scoring job per model and text set on the queue. `atlas worker` processes
(any number, on any machine that reaches the database) claim jobs and run the same scoring
path as `atlas sync`. After jobs finish, one coalesced refresh job brings the saved indexes and
maps up to date. Modules: `enqueue` (putting jobs on the queue), `tasks` (the jobs), `app`
(the procrastinate app and connector), `worker` (the worker process, signals, stalled jobs),
`status` (`atlas queue status`); the SQL is in `atlas.store.queue`.
"""

from __future__ import annotations

from atlas.errors import UsageError
from atlas.store import Store
from atlas.store import queue as queue_sql

QUEUE = "atlas"
SCORE_TASK = "atlas.score"
REFRESH_TASK = "atlas.refresh"


def require_queue(store: Store) -> None:
    """Raise a one-line UsageError unless the store is on Postgres (where the queue lives)."""
    if store.dialect != "postgresql":
        raise UsageError(
            "a scoring queue needs a Postgres store; this atlas is on SQLite",
            hint="set ATLAS_DATABASE_URL (or --db) to postgresql+psycopg://USER@HOST/DB, "
            "or run `atlas sync` without --enqueue to score here",
        )


def ensure_queue_schema(store: Store) -> str:
    """Create or migrate procrastinate's tables in the store's database; idempotent."""
    require_queue(store)
    return queue_sql.apply_schema(store).action
