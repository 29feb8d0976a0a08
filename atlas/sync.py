"""`atlas sync`: discover, queue, download, score, store, refresh; safe under cron and kill -9.

One run holds the store's lock, records itself as a `SyncRun` row, polls the Hub (see
`atlas.hub.discovery`), then works through the queue model by model with the scoring service
(`atlas.scoring.service`: status `scoring`, download of safetensors and tokenizer files, score,
status `scored` or `failed` with a reason), then deletes the weights. This module only
orchestrates: it writes no model status of its own except for models it never hands to the
scorer. A killed run leaves `queued`/`scoring` rows that the next run picks up; vector pieces
are written atomically and keyed, so nothing is duplicated.
A kill counts against a model only when it died in the forward pass repeatedly (see
MAX_FORWARD_DEATHS in the scoring service).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

from atlas.errors import UsageError
from atlas.hub import client, discovery
from atlas.hub.discovery import Filters
from atlas.pipeline import ScoreOptions, process_model, refresh_derived, resolve_textset
from atlas.queue import ensure_queue_schema, require_queue
from atlas.queue.enqueue import enqueue_models
from atlas.scoring import rescore
from atlas.settings import Settings
from atlas.store import Store, queries
from atlas.store.locking import store_lock
from atlas.store.tables import HubModel, TextSet

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SyncOptions:
    """What one sync run does; the defaults are the paper's settings."""

    textset: str = "sample"
    filters: Filters = field(default_factory=Filters)
    limit: int | None = None
    device: str | None = None
    dtype: str | None = None
    variants: tuple[str, ...] | None = None
    dry_run: bool = False
    keep_weights: bool = False
    rescore_updated: bool = False
    retry_failed: bool = False
    full: bool = False
    rescore_outdated: bool = False
    enqueue: bool = False  # put scoring jobs on the Postgres queue instead of scoring here

    @property
    def scoring(self) -> ScoreOptions:
        """How each model of the run is scored."""
        return ScoreOptions(self.variants, self.device, self.dtype, self.keep_weights)

    def with_overrides(self, **overrides: Any) -> SyncOptions:
        """A copy with fields of these options, or of their filters, replaced."""
        own = {f.name for f in fields(self)}
        filter_names = {f.name for f in fields(Filters)}
        unknown = sorted(set(overrides) - own - filter_names)
        if unknown:
            raise UsageError(f"unknown sync option(s): {', '.join(unknown)}")
        on_filters = {k: v for k, v in overrides.items() if k not in own}
        mine = {k: v for k, v in overrides.items() if k in own}
        if on_filters:
            mine["filters"] = replace(mine.get("filters", self.filters), **on_filters)
        return replace(self, **mine)


@dataclass
class SyncSummary:
    """What a sync run found and did; `to_dict()` is what `--json` prints."""

    run_id: int | None = None
    textset: str = ""
    incremental: bool = False
    listed: int = 0
    discovered: int = 0
    new: int = 0
    updated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    scored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    enqueued: list[str] = field(default_factory=list)
    already_queued: int = 0
    remaining: int = 0
    stopped: bool = False
    dry_run: bool = False
    would_score: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    rescore: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def nothing_new(self) -> bool:
        """True when the Hub had nothing new or changed and the queue was empty."""
        rescored = bool(self.rescore and self.rescore.get("rescored"))
        return not (self.new or self.updated or self.queued or self.scored or self.failed
                    or self.enqueued or rescored)  # fmt: skip

    def counts(self) -> dict[str, Any]:
        """The numbers, as stored in the SyncRun row."""
        return {
            "textset": self.textset,
            "incremental": self.incremental,
            "listed": self.listed,
            "discovered": self.discovered,
            "new": self.new,
            "updated": self.updated,
            "skipped": dict(self.skipped),
            "queued": self.queued,
            "scored": len(self.scored),
            "failed": len(self.failed),
            "enqueued": len(self.enqueued),
            "remaining": self.remaining,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            **self.counts(),
            "scored_models": list(self.scored),
            "failed_models": dict(self.failed),
            "enqueued_models": list(self.enqueued),
            "already_queued": self.already_queued,
            "stopped": self.stopped,
            "dry_run": self.dry_run,
            "would_score": list(self.would_score),
            "refreshed": list(self.refreshed),
            "rescore_outdated": self.rescore,
            "nothing_new": self.nothing_new,
            "seconds": round(self.seconds, 3),
        }

    def message(self) -> str:
        """One line for people."""
        if self.nothing_new and not self.dry_run:
            return "nothing new on the Hub; the atlas is up to date"
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        head = "dry run: " if self.dry_run else ""
        line = (
            f"{head}discovered {self.discovered} ({self.new} new, {self.updated} updated); "
            f"skipped {sum(self.skipped.values())} ({skipped}); "
        )
        if self.dry_run:
            return line + f"would score {len(self.would_score)}"
        if self.enqueued or self.already_queued:
            line += f"enqueued {len(self.enqueued)} scoring job(s)"
            if self.already_queued:
                line += f", {self.already_queued} already waiting or running"
            return line
        line += f"scored {len(self.scored)}, failed {len(self.failed)}"
        if self.remaining:
            line += f", {self.remaining} left in the queue"
        return line + (" (stopped)" if self.stopped else "")


# --- the queue ------------------------------------------------------------------------------


# Failure reasons that may not recur (the Hub, the machine, a kill): `--retry-failed` re-queues
# them. Others (template-mismatch, non-finite, ...) are properties of the revision.
RETRYABLE_REASONS = (
    "download-error", "out-of-memory", "interrupted", "error", "load-error", "incomplete",
)  # fmt: skip


def pending(
    store: Store,
    textset: TextSet,
    *,
    rescore_updated: bool = False,
    retry_failed: bool = False,
    rescore_outdated: bool = False,
) -> list[HubModel]:
    """Hub models to score on `textset`: queued, interrupted, and scored ones lacking vectors.

    With `retry_failed`, also models that failed for a reason in RETRYABLE_REASONS; with
    `rescore_outdated`, also those that the older scorer refused with template-mismatch.
    """
    rows, have = queries.hub_models_to_score(
        store, textset, statuses=("queued", "scoring", "scored"),
        retry_reasons=RETRYABLE_REASONS if retry_failed else (),
        retry_detail=("template-mismatch", rescore.SCORER1_MISMATCH) if rescore_outdated else None,
    )  # fmt: skip
    chosen = []
    for m in rows:
        revisions = have.get(m.id or -1, set())
        if m.status == "scored" and revisions and (m.revision in revisions or not rescore_updated):
            continue
        chosen.append(m)
    # Interrupted work first, then the most downloaded.
    chosen.sort(key=lambda m: (m.status != "scoring", -(m.downloads or 0), m.repo_id))
    return chosen


# --- signals ------------------------------------------------------------------------------


@contextmanager
def stop_on_signals(stop: threading.Event, say: Progress | None = None) -> Iterator[None]:
    """SIGTERM (and a first Ctrl-C) set `stop`: the run ends after the current model.

    A second Ctrl-C interrupts at once. Outside the main thread this does nothing.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        if say is not None:
            say(f"{signal.Signals(signum).name}: stopping after the current model")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- sync runs ------------------------------------------------------------------------------


# --- the run --------------------------------------------------------------------------------


def sync(
    store: Store,
    options: SyncOptions | None = None,
    *,
    settings: Settings | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    api: Any = None,
) -> SyncSummary:
    """One sync run; raises LockHeld when another holds the store's lock."""
    from atlas.scoring.loading import check_options

    options = options or SyncOptions()
    check_options(options.device, options.dtype)  # a usage error before any lock or network
    settings = settings or Settings.from_env()
    say = progress or (lambda _msg: None)
    if options.enqueue and options.rescore_outdated:
        raise UsageError(
            "--rescore-outdated runs in the sync process: give it without --enqueue",
            hint="workers score what is queued; `atlas sync --rescore-outdated` updates the rest",
        )
    if options.enqueue and not options.dry_run:
        ensure_queue_schema(store)  # refuses SQLite before anything is written
    elif options.enqueue:
        require_queue(store)
    if options.dry_run:
        return _run(store, options, settings, stop, say, api, run_id=None)
    with store_lock(store, "sync", settings):
        run_id = queries.start_sync_run(store, options.textset)
        summary = SyncSummary(run_id=run_id, textset=options.textset)
        try:
            summary = _run(store, options, settings, stop, say, api, run_id=run_id)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            error = [client.short(exc, 500)]
            queries.finish_sync_run(store, run_id, status, summary.counts(), error)
            raise
        errors = [f"{repo}: {reason}" for repo, reason in summary.failed.items()]
        status = "stopped" if summary.stopped else "ok"
        queries.finish_sync_run(store, run_id, status, summary.counts(), errors)
        return summary


def _run(
    store: Store,
    options: SyncOptions,
    settings: Settings,
    stop: threading.Event | None,
    say: Progress,
    api: Any,
    *,
    run_id: int | None,
) -> SyncSummary:
    started = time.monotonic()
    textset = resolve_textset(store, options.textset)
    api = api or client.make_api()
    summary = SyncSummary(run_id=run_id, textset=textset.name, dry_run=options.dry_run)
    say(f"polling {api.endpoint} for new text-generation models")
    polled = discovery.poll(
        store, api, options.filters, full=options.full, dry_run=options.dry_run, stop=stop,
        progress=say,
    )  # fmt: skip
    summary.incremental = not polled.full
    summary.listed, summary.new, summary.updated = (
        polled.seen,
        len(polled.new),
        len(polled.updated),
    )
    summary.discovered = summary.new + summary.updated
    summary.skipped = dict(sorted(polled.skipped.items()))
    since = "since the last poll" if not polled.full else "in a full poll"
    say(
        f"{polled.seen} model(s) listed {since}: {len(polled.new)} new, "
        f"{len(polled.updated)} updated, {len(polled.queued)} passed the filters"
    )
    queue = pending(
        store, textset, rescore_updated=options.rescore_updated, retry_failed=options.retry_failed,
        rescore_outdated=options.rescore_outdated,
    )  # fmt: skip
    if options.dry_run:
        names = [m.repo_id for m in queue] + [r for r in polled.queued if store.model(r) is None]
        summary.would_score = list(dict.fromkeys(names))[: options.limit or None]
        summary.queued = len(summary.would_score)
        summary.seconds = time.monotonic() - started
        return summary
    if options.limit is not None:
        summary.remaining = max(len(queue) - options.limit, 0)
        queue = queue[: options.limit]
    summary.queued = len(queue)
    if options.enqueue:
        done = enqueue_models(store, queue, textset, options)
        summary.enqueued, summary.already_queued = done.enqueued, len(done.already)
        summary.queued = len(done.enqueued)
        say(f"enqueued {len(done.enqueued)} scoring job(s); {len(done.already)} already queued")
        summary.seconds = time.monotonic() - started
        return summary
    for i, model in enumerate(queue, start=1):
        if stop is not None and stop.is_set():
            summary.stopped = True
            summary.remaining += len(queue) - i + 1
            say("stop requested: leaving the rest of the queue for the next sync")
            break
        say(f"[{i}/{len(queue)}] {model.repo_id}@{(model.revision or '?')[:12]}")
        status, reason = process_model(store, model, textset, options.scoring, settings, say)
        if status == "scored":
            summary.scored.append(model.repo_id)
        elif status == "skipped":
            summary.skipped[reason or "unknown"] = summary.skipped.get(reason or "unknown", 0) + 1
        else:
            summary.failed[model.repo_id] = reason or "error"
    rescored = False
    if options.rescore_outdated and not summary.stopped:
        with client.quiet_bars():
            done = rescore.rescore_outdated(
                store, settings=settings, device=options.device or "auto",
                dtype=options.dtype or "auto", keep_weights=options.keep_weights, stop=stop,
                progress=say,
            )  # fmt: skip
        say(done.message())
        summary.rescore = done.to_dict()
        summary.stopped = summary.stopped or done.stopped
        rescored = bool(done.rescored)
    if summary.scored or rescored:
        summary.refreshed = refresh_derived(store, settings, textset, say)
    summary.seconds = time.monotonic() - started
    return summary


def summary_rows(summary: SyncSummary) -> Sequence[tuple[str, str]]:
    """The summary as (label, value) rows for a table."""
    skipped = ", ".join(f"{r} {n}" for r, n in sorted(summary.skipped.items())) or "-"
    failed = ", ".join(f"{m} ({r})" for m, r in summary.failed.items()) or "-"
    return (
        ("discovered", f"{summary.discovered} ({summary.new} new, {summary.updated} updated)"),
        ("skipped", f"{sum(summary.skipped.values())}: {skipped}"),
        ("scored", str(len(summary.scored))),
        ("failed", f"{len(summary.failed)}: {failed}"),
        ("left in queue", str(summary.remaining)),
    )
