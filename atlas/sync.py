"""`atlas sync`: discover, queue, download, score, store, refresh; safe under cron and kill -9.

One run holds the store's lock, records itself as a `SyncRun` row, polls the Hub (see
`atlas.discovery`), then works through the queue model by model: status `scoring`, download
(safetensors and tokenizer files only, into ATLAS_HOME/weights/<repo>/<sha>), score, status
`scored` or `failed` with a reason, weights deleted. Hub calls that huggingface_hub does not
retry itself are retried here with backoff. A killed run leaves `queued`/`scoring` rows that the
next run picks up; vector pieces are written atomically and keyed, so nothing is duplicated.
"""

from __future__ import annotations

import errno
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError, ModelFailure
from atlas.hub import discovery
from atlas.hub.discovery import Filters
from atlas.settings import Settings
from atlas.store import Store
from atlas.store.locking import store_lock
from atlas.store.tables import HubModel, SyncRun, TextSet, Vector, utcnow

# Waits between attempts of a Hub call that failed transiently (len + 1 attempts in all).
RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0, 8.0)
# A model found `scoring` this many times (its runs were killed, e.g. out of memory) fails.
MAX_ATTEMPTS = 3

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
    remaining: int = 0
    stopped: bool = False
    dry_run: bool = False
    would_score: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def nothing_new(self) -> bool:
        """True when the Hub had nothing new or changed and the queue was empty."""
        return not (self.new or self.updated or self.queued or self.scored or self.failed)

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
            "remaining": self.remaining,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            **self.counts(),
            "scored_models": list(self.scored),
            "failed_models": dict(self.failed),
            "stopped": self.stopped,
            "dry_run": self.dry_run,
            "would_score": list(self.would_score),
            "refreshed": list(self.refreshed),
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
        line += f"scored {len(self.scored)}, failed {len(self.failed)}"
        if self.remaining:
            line += f", {self.remaining} left in the queue"
        return line + (" (stopped)" if self.stopped else "")


# --- retries --------------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Whether a Hub failure is worth retrying (5xx, 408/429, timeouts, cut connections)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, LocalEntryNotFoundError):
        return True  # hf_hub_download's answer to a HEAD that timed out or was cut off
    if isinstance(
        exc, (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
    ):
        return False
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is None or status >= 500 or status in (408, 429)
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS)
    return type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3")


def with_retries(what: str, call: Callable[[], Any], progress: Progress | None = None) -> Any:
    """Run `call`, retrying transient Hub failures after each of RETRY_DELAYS."""
    delays = list(RETRY_DELAYS)
    while True:
        try:
            return call()
        except Exception as exc:
            if not delays or not is_transient(exc):
                raise
            delay = delays.pop(0)
            if progress is not None:
                progress(f"  {what}: {_short(exc)}; retrying in {delay:g} s")
            time.sleep(delay)


def _short(exc: BaseException, width: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= width else text[: width - 1] + "…"


# --- downloads and scoring (the scorer issue's engine) ------------------------------------


def weights_path(settings: Settings, repo_id: str) -> Path:
    """Where the scorer downloads a Hub model: ATLAS_HOME/weights/models--<org>--<name>."""
    from huggingface_hub.file_download import repo_folder_name

    return settings.weights_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def remove_weights(settings: Settings, repo_id: str) -> None:
    """Delete a model's downloaded files (every revision of it)."""
    shutil.rmtree(weights_path(settings, repo_id), ignore_errors=True)


@contextmanager
def quiet_hub_bars(quiet: bool) -> Iterator[None]:
    """Hide huggingface_hub's download bars inside the block (atlas prints its own progress)."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


def score_hub_model(
    store: Store,
    model: HubModel,
    textset: TextSet,
    options: SyncOptions,
    settings: Settings,
    say: Progress,
) -> Any:
    """Download (safetensors and tokenizer files) and score one Hub model at its revision.

    The scorer records `scoring`/`scored`/`failed` itself and resumes from stored pieces; a
    download that fails transiently (5xx, timeouts, cut connections) is retried here as a whole,
    after each of RETRY_DELAYS, on top of the scorer's own retries.
    """
    from atlas.scoring import service as scoring

    def attempt() -> Any:
        return scoring.score_model(
            store, model.repo_id, textset.name, revision=model.revision,
            variants=options.variants, device=options.device or "auto",
            dtype=options.dtype or "auto", progress=False, log=say,
            weights_dir=settings.weights_dir,
        )  # fmt: skip

    delays = list(RETRY_DELAYS)
    while True:
        try:
            # Each try counts once in `attempts`, whatever the retries before it in this run.
            store.upsert_model(model.repo_id, attempts=model.attempts)
            return attempt()
        except ModelFailure as failure:
            cause = failure.__cause__
            retry = failure.reason == "download-error" and cause is not None and is_transient(cause)
            if not (retry and delays):
                raise
            what = _short(failure, 160)
        except AtlasError:
            raise
        except Exception as exc:
            if not (delays and is_transient(exc)):
                raise
            what = _short(exc, 160)
        delay = delays.pop(0)
        say(f"  {what}; retrying in {delay:g} s")
        time.sleep(delay)


# --- the queue ------------------------------------------------------------------------------


# Failure reasons that may not recur (the Hub, the machine, a kill): `--retry-failed` re-queues
# them. Others (template-mismatch, non-finite, ...) are properties of the revision.
RETRYABLE_REASONS = ("download-error", "out-of-memory", "interrupted", "error", "load-error")


def pending(
    store: Store, textset: TextSet, *, rescore_updated: bool = False, retry_failed: bool = False
) -> list[HubModel]:
    """Hub models to score on `textset`: queued, interrupted, and scored ones lacking vectors.

    With `retry_failed`, also models that failed for a reason in RETRYABLE_REASONS.
    """
    from sqlmodel import col, or_, select

    wanted = col(HubModel.status).in_(("queued", "scoring", "scored"))
    if retry_failed:
        retryable = (HubModel.status == "failed") & col(HubModel.reason).in_(RETRYABLE_REASONS)
        wanted = or_(wanted, retryable)
    with store.session() as s:
        rows = list(s.exec(select(HubModel).where(HubModel.source == "hub").where(wanted)))
        have: dict[int, set[str]] = {}
        for model_id, revision in s.exec(
            select(Vector.model_id, Vector.revision).where(Vector.textset_id == textset.id)
        ):
            have.setdefault(model_id, set()).add(revision)
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


def _start_run(store: Store, textset: str) -> int:
    with store.session() as s:
        for stale in s.exec(_running_runs()):
            stale.status = "interrupted"
            stale.finished_at = stale.finished_at or utcnow()
            s.add(stale)
        run = SyncRun(status="running", counts={"textset": textset})
        s.add(run)
        s.flush()
        return int(run.id)  # type: ignore[arg-type]


def _running_runs() -> Any:
    from sqlmodel import select

    return select(SyncRun).where(SyncRun.status == "running")


def _finish_run(
    store: Store, run_id: int, status: str, counts: dict[str, Any], errors: list[str]
) -> None:
    with store.session() as s:
        run = s.get(SyncRun, run_id)
        if run is None:
            return
        run.status, run.counts, run.errors = status, counts, errors[:200]
        run.finished_at = utcnow()
        s.add(run)


# --- the run --------------------------------------------------------------------------------


def resolve_textset(store: Store, name: str) -> TextSet:
    """The text set to score on; the packaged sample is imported on first use."""
    from atlas import textsets

    if name == textsets.SAMPLE_NAME:
        return textsets.ensure_sample(store)
    return store.textset(name)


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
    options = options or SyncOptions()
    settings = settings or Settings.from_env()
    say = progress or (lambda _msg: None)
    if options.dry_run:
        return _run(store, options, settings, stop, say, api, run_id=None)
    with store_lock(store, "sync", settings):
        run_id = _start_run(store, options.textset)
        summary = SyncSummary(run_id=run_id, textset=options.textset)
        try:
            summary = _run(store, options, settings, stop, say, api, run_id=run_id)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            _finish_run(store, run_id, status, summary.counts(), [_short(exc, 500)])
            raise
        errors = [f"{repo}: {reason}" for repo, reason in summary.failed.items()]
        status = "stopped" if summary.stopped else "ok"
        _finish_run(store, run_id, status, summary.counts(), errors)
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
    api = api or discovery.make_api()
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
        store, textset, rescore_updated=options.rescore_updated, retry_failed=options.retry_failed
    )
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
    for i, model in enumerate(queue, start=1):
        if stop is not None and stop.is_set():
            summary.stopped = True
            summary.remaining += len(queue) - i + 1
            say("stop requested: leaving the rest of the queue for the next sync")
            break
        say(f"[{i}/{len(queue)}] {model.repo_id}@{(model.revision or '?')[:12]}")
        # Per model: loading a model through transformers turns the Hub's bars back on.
        with quiet_hub_bars(True):
            status, reason = _process(store, model, textset, options, settings, say)
        if status == "scored":
            summary.scored.append(model.repo_id)
        else:
            summary.failed[model.repo_id] = reason or "error"
    if summary.scored:
        summary.refreshed = refresh_derived(store, settings, textset, say)
    summary.seconds = time.monotonic() - started
    return summary


def _process(
    store: Store,
    model: HubModel,
    textset: TextSet,
    options: SyncOptions,
    settings: Settings,
    say: Progress,
) -> tuple[str, str | None]:
    """Download, score and record one model; returns its final (status, reason)."""
    repo = model.repo_id
    if model.status == "scoring" and model.attempts >= MAX_ATTEMPTS:
        detail = f"scoring was cut off {model.attempts} times (killed, or out of memory?)"
        store.set_status(repo, "failed", "interrupted", detail)
        say(f"  failed: interrupted ({detail})")
        return "failed", "interrupted"
    if not model.revision:
        store.set_status(repo, "failed", "download-error", "the Hub gave no revision for it")
        return "failed", "download-error"
    started = time.monotonic()
    try:
        score_hub_model(store, model, textset, options, settings, say)
    except ModelFailure as failure:
        _record(store, repo, "failed", failure.reason, failure.detail)
        say(f"  failed: {failure.reason} ({_short(failure, 160)})")
        return "failed", failure.reason
    except AtlasError:
        raise
    except Exception as exc:  # the run goes on; the model records what went wrong
        _record(store, repo, "failed", "error", f"{type(exc).__name__}: {_short(exc, 1000)}")
        say(f"  failed: error ({type(exc).__name__}: {_short(exc, 160)})")
        return "failed", "error"
    finally:
        if not options.keep_weights:
            remove_weights(settings, repo)
    _record(store, repo, "scored", None, None, attempts=0)
    say(f"  scored in {time.monotonic() - started:.1f} s")
    return "scored", None


def _record(
    store: Store, repo: str, status: str, reason: str | None, detail: str | None, **extra: Any
) -> None:
    store.upsert_model(repo, status=status, reason=reason,
                       detail=None if detail is None else detail[:2000], **extra)  # fmt: skip


# --- derived data ---------------------------------------------------------------------------


def refresh_derived(store: Store, settings: Settings, textset: TextSet, say: Progress) -> list[str]:
    """Refresh the text set's saved nearest-neighbour indexes and the stored map series."""
    refreshed: list[str] = []
    try:
        from atlas.space import index

        if index.saved_keys(settings, textset):
            for key, done in index.refresh_indexes(store, settings, textset).items():
                refreshed.append(f"index {key} ({done.action})")
    except ImportError:  # the index issue's module is not installed
        pass
    except Exception as exc:  # derived data can be rebuilt; never lose a sync over it
        say(f"refreshing the index failed: {_short(exc)}")
    try:
        from atlas.space import maps

        if maps.snapshots(store):
            for done in maps.refresh_all(store, settings, progress=say):
                refreshed.append(f"map {done.snapshot.id} ({done.mode})")
    except ImportError:
        pass
    except Exception as exc:
        say(f"refreshing the maps failed: {_short(exc)}")
    for line in refreshed:
        say(f"refreshed {line}")
    return refreshed


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
