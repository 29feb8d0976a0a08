"""Putting scoring jobs on the queue, and asking for the coalesced refresh of derived data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas.queue import QUEUE, REFRESH_TASK, SCORE_TASK, size_queue
from atlas.store import Store
from atlas.store.queue import NewJob, enqueue
from atlas.store.tables import HubModel, TextSet

# A refresh waits this long after the job that asked for it, so finishing jobs coalesce.
REFRESH_DELAY = 2.0


@dataclass
class Enqueued:
    """What `enqueue_models` did: models given a new job, and those already waiting/running."""

    enqueued: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)


def score_lock(repo_id: str, textset: str) -> str:
    """The queueing lock of a model's scoring job on a text set: one at a time."""
    return f"score:{repo_id}:{textset}"


def enqueue_models(
    store: Store, models: Sequence[HubModel], textset: TextSet, options: Any = None
) -> Enqueued:
    """One scoring job per model (in the given order of priority) on `textset`; idempotent.

    Each job goes on its model's size queue (`size_queue`), from the parameter count that
    discovery recorded.
    """
    variants = list(options.variants) if options is not None and options.variants else None
    dtype = options.dtype if options is not None else None
    jobs = [
        NewJob(
            task=SCORE_TASK,
            args={"repo_id": m.repo_id, "revision": m.revision, "textset": textset.name,
                  "variants": variants, "dtype": dtype},
            queueing_lock=score_lock(m.repo_id, textset.name),
            queue=size_queue(m.num_parameters),
            priority=len(models) - i,
        )
        for i, m in enumerate(models)
    ]
    done = Enqueued()
    for model, job_id in zip(models, enqueue(store, jobs), strict=True):
        (done.enqueued if job_id is not None else done.already).append(model.repo_id)
    return done


def defer_refresh(store: Store, textset: str, delay: float = REFRESH_DELAY) -> int | None:
    """Ask for one refresh of `textset`'s derived data; coalesces with a waiting one."""
    job = NewJob(
        task=REFRESH_TASK, args={"textset": textset}, queueing_lock=f"refresh:{textset}",
        queue=QUEUE, priority=-1, delay_seconds=delay, block_while_running=False,
    )  # fmt: skip
    return enqueue(store, [job])[0]
