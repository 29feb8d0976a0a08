"""`atlas models` and `atlas status`: read what the store holds."""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from atlas.cli.common import cell, ctx_obj, human_count, out_console, print_json, safe
from atlas.store.tables import MODEL_STATUSES

TABLE_ROWS = 500  # longer lists print as streamed plain columns


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="List the models the atlas knows.", no_args_is_help=True)
    app.add_typer(group, name="models")

    @group.command("list")
    def list_(
        ctx: typer.Context,
        status: str = typer.Option(
            None, "--status", "-s", help=f"Only this status: {', '.join(MODEL_STATUSES)}."
        ),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
        limit: int = typer.Option(
            None, "--limit", "-n", min=1, help="At most this many models (a page)."
        ),
        offset: int = typer.Option(0, "--offset", min=0, help="Skip this many models first."),
    ) -> None:
        """List models with their status and, when skipped or failed, the reason.

        Long lists print as plain columns while they are read; --limit/--offset page them.
        """
        atlas = ctx_obj(ctx).atlas()
        models = atlas.models(status, limit=limit, offset=offset)
        templates = atlas.template_provenance()
        none = {"template_mode": None, "template_sha256": None, "template_clock": None}
        rows = [
            {"model": m.repo_id, "status": m.status, "reason": m.reason, "revision": m.revision,
             "model_type": m.model_type, "parameters": m.num_parameters,
             "downloads": m.downloads, "base_models": m.base_models, "detail": m.detail,
             **templates.get(m.id, none)}  # type: ignore[arg-type]
            for m in models
        ]
        if json:
            print_json(rows)
            return
        if len(rows) > TABLE_ROWS:  # a rich table lays out every row first: stream columns
            width = max(len(r["model"]) for r in rows)
            write = sys.stdout.write
            write(f"{'model':<{width}}  {'status':<10}  {'reason':<16}  {'type':<12}  "
                  f"{'params':>7}  {'downloads':>9}\n")  # fmt: skip
            for r in rows:
                write(f"{r['model']:<{width}}  {r['status']:<10}  {r['reason'] or '':<16}  "
                      f"{r['model_type'] or '':<12}  {human_count(r['parameters']):>7}  "
                      f"{human_count(r['downloads']):>9}\n")  # fmt: skip
            return
        table = Table("model", "status", "reason", "type", "params", "downloads")
        for r in rows:
            table.add_row(cell(r["model"]), r["status"], cell(r["reason"]), cell(r["model_type"]),
                          human_count(r["parameters"]), human_count(r["downloads"]))
        out_console.print(table)

    @app.command("status")
    def status(
        ctx: typer.Context, json: bool = typer.Option(False, "--json", help="Print JSON.")
    ) -> None:
        """Counts per model status, the text sets, and the last sync."""
        info = ctx_obj(ctx).atlas().status()
        if json:
            print_json(info)
            return
        out_console.print(f"database: {safe(info['database'])}")
        out_console.print(f"home:     {safe(info['home'])}")
        counts = ", ".join(f"{k} {v}" for k, v in info["models"].items())
        out_console.print(f"models:   {counts}")
        sets = ", ".join(f"{safe(t['name'])} ({t['kind']}, {t['size']})" for t in info["textsets"])
        out_console.print(f"textsets: {sets or '-'}")
        if info.get("queue"):
            out_console.print(f"queue:    {info['queue']}")
        last = info["last_sync"]
        if last is None:
            out_console.print("last sync: never")
        else:
            c = last["counts"]
            parts = [f"{k} {c[k]}" for k in ("scored", "failed", "queued") if c.get(k) is not None]
            skipped = c.get("skipped") or {}
            if isinstance(skipped, dict) and skipped:
                parts.append("skipped " + ", ".join(f"{r} {n}" for r, n in skipped.items()))
            where = f" on {safe(c['textset'])}" if c.get("textset") else ""
            out_console.print(
                f"last sync: {last['started_at']:%Y-%m-%d %H:%M}{where}, {last['status']}"
                + (f": {'; '.join(parts)}" if parts else "")
            )
