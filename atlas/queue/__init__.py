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
from atlas.scoring import placement
from atlas.store import Store
from atlas.store import queue as queue_sql

QUEUE = "atlas"
SCORE_TASK = "atlas.score"
REFRESH_TASK = "atlas.refresh"
_BY_NAME = {f"{QUEUE}-{placement.human_count(step)}": step for step in placement.LADDER}


def size_queue(num_parameters: int | None) -> str:
    """The queue of a model's scoring job: `atlas-<size class>`, or `atlas` if its size is unknown.

    Every worker takes `atlas`; a size queue only workers that can hold its class (see
    `atlas.scoring.placement`), so a large model waits for a worker that can load it.
    """
    if not num_parameters:
        return QUEUE
    return f"{QUEUE}-{placement.human_count(placement.size_class(num_parameters))}"


def queues_for(max_parameters: int) -> list[str]:
    """The queues a worker that holds up to `max_parameters` listens to."""
    steps = placement.classes_up_to(max_parameters)
    return [QUEUE, *(f"{QUEUE}-{placement.human_count(step)}" for step in steps)]


def queue_size(name: str) -> int | None:
    """The size class (parameters) of a size queue; None for `atlas` and other queues."""
    return _BY_NAME.get(name)


def is_atlas_queue(name: str) -> bool:
    """Whether a procrastinate queue is one of atlas's."""
    return name == QUEUE or name in _BY_NAME


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
