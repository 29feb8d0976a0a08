"""`atlas sync` and `atlas schedule`: keep the atlas up to date with the Hub."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import typer

from atlas.cli.common import cell, ctx_obj, out_console, print_json
from atlas.errors import UsageError
from atlas.hub.discovery import DEFAULT_MAX_PARAMS, DEFAULT_MIN_DOWNLOADS, Filters
from atlas.schedule import run_schedule
from atlas.store.tables import VARIANTS
from atlas.sync import SyncOptions, stop_on_signals, summary_rows

if TYPE_CHECKING:
    from atlas.sync import SyncSummary


# Options that sync and schedule share.
_TEXTSET = typer.Option(
    "sample", "--textset", "-t", help="Text set to score new models on."
)
_MIN_DOWNLOADS = typer.Option(
    DEFAULT_MIN_DOWNLOADS,
    "--min-downloads",
    help="Skip models with fewer downloads in the last 30 days.",
)
_MAX_PARAMS = typer.Option(
    f"{DEFAULT_MAX_PARAMS // 10**9}B",
    "--max-params",
    help="Skip models with more parameters (e.g. 70B, 500M).",
)
_DEVICE = typer.Option(None, "--device", help="Torch device (default: best found).")
_KEEP_WEIGHTS = typer.Option(
    False, "--keep-weights", help="Keep downloaded weights under ATLAS_HOME/weights."
)
_ENQUEUE = typer.Option(
    False,
    "--enqueue",
    help="Put scoring jobs on the Postgres queue for `atlas worker`s instead of scoring here.",
)


def _parse_count(text: str | None) -> int | None:
    """`70B`, `1.5M`, `7000000000` -> an integer parameter count."""
    if text is None:
        return None
    units = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
    raw = text.strip().upper()
    scale = units.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise UsageError(f"--max-params: {text!r} is not a count like 70B or 7000000000") from None
    if not math.isfinite(value) or value <= 0 or value > 10**15:
        raise UsageError(f"--max-params: {text!r} must be a positive count up to 1000T")
    return int(value)


def _variants(text: str | None) -> tuple[str, ...] | None:

    if not text:
        return None
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in chosen if v not in VARIANTS]
    if bad:
        raise UsageError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    return chosen


def register(app: typer.Typer) -> None:
    @app.command("sync")
    def sync(
        ctx: typer.Context,
        textset: str = _TEXTSET,
        min_downloads: int = _MIN_DOWNLOADS,
        max_params: str = _MAX_PARAMS,
        limit: int = typer.Option(
            None, "--limit", "-n", min=0, help="Score at most N models this run; the rest wait."
        ),
        device: str = _DEVICE,
        dtype: str = typer.Option(None, "--dtype", help="Weights dtype (default: the scorer's)."),
        variants: str = typer.Option(
            None, "--variants", help="Prompt variants, comma-separated (default: the text set's)."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="List and decide, but write and score nothing."
        ),
        keep_weights: bool = _KEEP_WEIGHTS,
        rescore_updated: bool = typer.Option(
            False, "--rescore-updated", help="Score models again whose Hub revision changed."
        ),
        retry_failed: bool = typer.Option(
            False,
            "--retry-failed",
            help="Queue again models that failed for a passing reason (download-error, "
            "out-of-memory, interrupted, error, load-error).",
        ),
        full: bool = typer.Option(
            False, "--full", help="Walk the whole listing, ignoring the watermark."
        ),
        rescore_outdated: bool = typer.Option(
            False,
            "--rescore-outdated",
            help="Rescore vectors of an older scorer whose numbers the current one changes "
            "(finished-turn or dated templates); stamp the others.",
        ),
        hub_prefilter: bool = typer.Option(
            False,
            "--hub-prefilter",
            help="Let the Hub drop models over --max-params (they are then not recorded).",
        ),
        enqueue: bool = _ENQUEUE,
        json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Poll the Hub, score new models, refresh the index and maps; safe to run from cron."""

        obj = ctx_obj(ctx)
        options = SyncOptions(
            textset=textset,
            filters=Filters(
                min_downloads=min_downloads,
                max_params=_parse_count(max_params) or DEFAULT_MAX_PARAMS,
                hub_prefilter=hub_prefilter,
            ),
            limit=limit,
            device=device,
            dtype=dtype,
            variants=_variants(variants),
            dry_run=dry_run,
            keep_weights=keep_weights,
            rescore_updated=rescore_updated,
            retry_failed=retry_failed,
            full=full,
            rescore_outdated=rescore_outdated,
            enqueue=enqueue,
        )
        stop = threading.Event()
        with stop_on_signals(stop, obj.info):
            summary = obj.atlas().sync(options, stop=stop, progress=obj.info)
        obj.info(summary.message())
        if json:
            print_json(summary.to_dict())
            return
        _render(summary)

    @app.command("schedule")
    def schedule(
        ctx: typer.Context,
        cron: str = typer.Option(
            "0 */6 * * *",
            "--cron",
            help="When to sync: 5 crontab fields, or 6 with seconds first (UTC).",
        ),
        textset: str = _TEXTSET,
        min_downloads: int = _MIN_DOWNLOADS,
        max_params: str = _MAX_PARAMS,
        limit: int = typer.Option(
            None, "--limit", "-n", min=0, help="Score at most N models per run."
        ),
        device: str = _DEVICE,
        keep_weights: bool = _KEEP_WEIGHTS,
        enqueue: bool = _ENQUEUE,
    ) -> None:
        """Run sync on a cron schedule in the foreground; SIGTERM stops after the current model."""

        obj = ctx_obj(ctx)
        filters = Filters(
            min_downloads=min_downloads,
            max_params=_parse_count(max_params) or DEFAULT_MAX_PARAMS,
        )
        options = SyncOptions(
            textset=textset, filters=filters, limit=limit, device=device,
            keep_weights=keep_weights, enqueue=enqueue,
        )  # fmt: skip
        atlas = obj.atlas()
        if enqueue:
            from atlas.queue import require_queue

            require_queue(atlas.store)

        def job(stop):  # type: ignore[no-untyped-def]
            summary = atlas.sync(options, stop=stop, progress=obj.info)
            obj.info(summary.message())

        result = run_schedule(job, cron, say=obj.info)
        obj.info(f"scheduler stopped after {result.runs} run(s)")


def _render(summary: SyncSummary) -> None:
    from rich.table import Table


    table = Table("", "", show_header=False, box=None)
    for label, value in summary_rows(summary):
        table.add_row(label, cell(value))
    if summary.dry_run:
        table.add_row("would score", cell(", ".join(summary.would_score) or "-"))
    if summary.enqueued or summary.already_queued:
        names = ", ".join(summary.enqueued) or "-"
        table.add_row("enqueued", cell(f"{len(summary.enqueued)}: {names}"))
        table.add_row("already queued", str(summary.already_queued))
    out_console.print(table)
