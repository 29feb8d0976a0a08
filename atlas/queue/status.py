"""What the fleet is doing: jobs by state, live workers, and a one-line summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from atlas.queue import queue_size, require_queue
from atlas.scoring.placement import human_count
from atlas.settings import Settings
from atlas.store import Store
from atlas.store import queue as queries

# The states `atlas queue status` reports, in procrastinate's words where they differ.
STATE_NAMES = {"todo": "waiting", "doing": "running"}
SHOWN = ("waiting", "running", "stalled", "succeeded", "failed", "cancelled", "aborted")


@dataclass
class QueueStatus:
    """Jobs per state, the jobs themselves (newest first), and the live workers."""

    counts: dict[str, int] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    stalled_after: float = 300.0

    def line(self) -> str:
        """One line for `atlas status`."""
        parts = [f"{self.counts.get(s, 0)} {s}" for s in SHOWN if self.counts.get(s)]
        live = sum(1 for w in self.workers if not w["silent"])
        return f"{', '.join(parts) or 'no jobs'}; {live} live worker(s)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_status(store: Store, settings: Settings | None = None, limit: int = 200) -> QueueStatus:
    """Read the queue of the store's Postgres database (empty when it has no queue yet)."""
    require_queue(store)
    settings = settings or Settings.from_env()
    stalled_after = settings.stalled_after
    result = QueueStatus(stalled_after=stalled_after)
    if not queries.queue_tables_exist(store):
        return result
    raw = queries.job_counts(store, stalled_after)
    result.counts = {STATE_NAMES.get(k, k): v for k, v in raw.items()}
    for w in queries.worker_rows(store):
        result.workers.append(
            {"id": w.id, "device": w.info.get("device"), "host": w.info.get("host"),
             "pid": w.info.get("pid"), "model": w.model, "last_heartbeat": w.last_heartbeat,
             "seconds_since_heartbeat": round(w.seconds_since_heartbeat, 1),
             "silent": w.seconds_since_heartbeat > stalled_after,
             "max_parameters": w.info.get("max_parameters")}
        )  # fmt: skip
    largest = max(
        (w["max_parameters"] or 0 for w in result.workers if not w["silent"]), default=None
    )
    for j in queries.job_rows(store, stalled_after, limit=limit):
        state = "stalled" if j.stalled else STATE_NAMES.get(j.status, j.status)
        error = None
        if j.model_status in ("failed", "queued") and (j.reason or j.detail):
            error = j.reason if j.model_status == "failed" else j.detail
            if j.model_status == "failed" and j.detail:
                error = f"{j.reason}: {j.detail}"
        size = queue_size(j.queue)
        if state == "waiting" and size and largest is not None and size > largest:
            error = (f"no live worker holds {human_count(size)} parameters "
                     f"(the largest holds {human_count(largest)})")  # fmt: skip
        result.jobs.append(
            {"id": j.id, "task": j.task, "queue": j.queue, "state": state, "model": j.model,
             "textset": j.textset, "attempts": j.attempts, "scheduled_at": j.scheduled_at,
             "worker": j.worker_id, "model_status": j.model_status, "last_error": error}
        )  # fmt: skip
    return result


def summary_line(store: Store, settings: Settings | None = None) -> str | None:
    """The one-line queue summary, or None for a store without a queue (SQLite, or none yet)."""
    if store.dialect != "postgresql" or not queries.queue_tables_exist(store):
        return None
    return queue_status(store, settings, limit=0).line()
