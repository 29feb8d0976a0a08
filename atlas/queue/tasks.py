"""Queue jobs: score one model on one text set, and the coalesced refresh of derived data.

Failure semantics. A model that fails for a reason of its own (template, non-finite, too
large, ...) ends its job failed with the model `failed` and that reason; it is not retried. A
passing failure (PASSING reasons, a lost connection) is retried with exponential backoff,
RETRIES times, then recorded as failed. A job whose worker died is retried by a live worker
(`atlas.queue.worker`); vector pieces are keyed, so a job that ran twice leaves one copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from atlas.pipeline import ScoreOptions, process_model, refresh_derived, resolve_textset
from atlas.queue import SCORE_TASK
from atlas.queue.enqueue import defer_refresh
from atlas.settings import Settings
from atlas.store import Store
from atlas.store.queue import active_jobs, model_lock
from atlas.store.tables import utcnow

# Failure reasons that may pass (the network, the Hub, memory); their jobs are retried.
PASSING = ("download-error", "out-of-memory", "error")
RETRIES = 3
REFRESH_STATE = "queue-refresh:"


class NotRetried(Exception):
    """The job's outcome is final: the model's failure is recorded and the job ends failed."""


class PassingFailure(Exception):
    """A failure that may not recur: the job is retried later, perhaps on another worker."""


def retry_strategy(settings: Settings) -> Any:
    """procrastinate's RetryStrategy, except that NotRetried is never retried."""
    from procrastinate import RetryStrategy
    from procrastinate.retry import RetryDecision

    wait = settings.retry_wait

    class _Strategy(RetryStrategy):
        def get_retry_decision(self, *, exception: BaseException, job: Any) -> Any:
            if isinstance(exception, NotRetried):
                return None
            if self.max_attempts is not None and job.attempts >= self.max_attempts:
                return None
            return RetryDecision(retry_in={"seconds": wait ** (job.attempts + 1)})

    return _Strategy(max_attempts=RETRIES)


@dataclass
class WorkerEnv:
    """What a worker process gives its jobs: the store, its device, what it is running."""

    store: Store
    settings: Settings
    device: str | None = None
    keep_weights: bool = False
    say: Callable[[str], None] = print
    running: dict[int, str] = field(default_factory=dict)  # job id -> model


def _env(context: Any) -> WorkerEnv:
    return context.additional_context["atlas"]


# --- the jobs ---------------------------------------------------------------------------------


def score_job(
    context: Any,
    *,
    repo_id: str,
    revision: str | None,
    textset: str,
    variants: list[str] | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Score one Hub model on one text set with the existing sync path; see module docstring."""
    env = _env(context)
    env.running[context.job.id] = repo_id  # first: a second SIGTERM puts the job back at once
    try:
        return _score(env, context.job, repo_id, revision, textset, variants, dtype)
    finally:
        env.running.pop(context.job.id, None)


def _score(
    env: WorkerEnv,
    job: Any,
    repo_id: str,
    revision: str | None,
    textset: str,
    variants: list[str] | None,
    dtype: str | None,
) -> dict[str, Any]:
    store, settings = env.store, env.settings
    model = store.model(repo_id)
    if model is None:
        raise NotRetried(f"{repo_id} is not in the store")
    if revision and model.revision != revision:
        env.say(f"{repo_id}: the Hub revision changed since it was queued; scoring the newest")
    ts = resolve_textset(store, textset)
    options = ScoreOptions(
        variants=tuple(variants) if variants else None, device=env.device, dtype=dtype,
        keep_weights=env.keep_weights,
    )
    attempt = job.attempts + 1
    env.say(f"job {job.id}: {repo_id}@{(model.revision or '?')[:12]} on {textset} "
            f"(attempt {attempt})")  # fmt: skip
    started = time.monotonic()
    try:
        with model_lock(store, repo_id):
            model = store.model(repo_id) or model  # as left by whoever held the lock before
            status, reason = process_model(
                store, model, ts, options, settings, env.say, max_attempts=settings.max_interrupts
            )
    except Exception as exc:  # the database or the machine: retried, then recorded
        if job.attempts >= RETRIES:
            _record_error(store, repo_id, exc)
        raise
    if status == "scored":
        defer_refresh(store, textset)
        return {"status": "scored", "seconds": round(time.monotonic() - started, 3)}
    if reason in PASSING and job.attempts < RETRIES:
        row = store.model(repo_id)
        detail = row.detail if row is not None else None
        note = f"attempt {attempt} failed ({reason}: {detail}); retrying"
        store.upsert_model(repo_id, status="queued", reason=None, detail=note)
        raise PassingFailure(f"{repo_id}: {reason}")
    raise NotRetried(f"{repo_id}: {reason}")


def _record_error(store: Store, repo_id: str, exc: BaseException) -> None:
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    with suppress(Exception):  # the database is gone too: the row stays as it was
        store.upsert_model(repo_id, status="failed", reason="error", detail=detail)


def refresh_job(context: Any, *, textset: str) -> dict[str, Any]:
    """Refresh `textset`'s saved indexes and maps once no scoring job for it is active."""
    env = _env(context)
    store, settings = env.store, env.settings
    active = active_jobs(store, SCORE_TASK, textset=textset)
    if active:
        defer_refresh(store, textset)
        return {"status": "deferred", "active": active}
    ts = resolve_textset(store, textset)
    refreshed = refresh_derived(store, settings, ts, env.say)
    state = store.get_state(REFRESH_STATE + textset)
    store.set_state(
        REFRESH_STATE + textset,
        {"runs": int(state.get("runs", 0)) + 1, "last": utcnow().isoformat(),
         "refreshed": refreshed},
    )  # fmt: skip
    env.say(f"refreshed derived data of {textset}: {', '.join(refreshed) or 'nothing saved yet'}")
    return {"status": "refreshed", "refreshed": refreshed}


def refresh_runs(store: Store, textset: str) -> int:
    """How many times the queue has refreshed `textset`'s derived data."""
    return int(store.get_state(REFRESH_STATE + textset).get("runs", 0))
