"""`atlas map`: compute, list and show 2-D model maps (snapshots)."""

from __future__ import annotations

import typer
from rich.table import Table

from atlas.cli.common import cell, ctx_obj, out_console, print_json


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Compute, list and show 2-D model maps.", no_args_is_help=True)
    app.add_typer(group, name="map")

    @group.command("refresh")
    def refresh(
        ctx: typer.Context,
        method: str = typer.Option("tsne", "--method", "-m", help="tsne or pca."),
        textset: str = typer.Option(
            None, "--textset", "-t", help="Text set (default: the one with most models)."
        ),
        variant: str = typer.Option("base", "--variant", help="Prompt variant of the vectors."),
        kind: str = typer.Option(
            "conditional", "--kind", "-k", help="conditional, unconditional or pmi."
        ),
        full: bool = typer.Option(
            False, "--full", help="Refit from scratch instead of placing new models."
        ),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Store a new map snapshot: place new models into the last map, or refit it."""
        obj = ctx_obj(ctx)
        done = obj.atlas().refresh_map(
            method, textset=textset, variant=variant, kind=kind, full=full, progress=obj.info
        )
        snap = done.snapshot
        if done.note:
            obj.info(f"note: {done.note}")
        row = {
            "snapshot": snap.id, "mode": done.mode, "method": snap.method, "kind": snap.kind,
            "variant": snap.variant, "n_models": snap.n_models, "parent_id": snap.parent_id,
            "clip_threshold": snap.clip_threshold, "added": done.added, "note": done.note,
        }  # fmt: skip
        if json:
            print_json(row)
            return
        what = {"full": "full fit", "incremental": f"placed {len(done.added)} new"}
        out_console.print(
            f"snapshot #{snap.id}: {snap.method} of {snap.kind} vectors, {snap.n_models} models "
            f"({what.get(done.mode, 'unchanged: no new models')})",
            markup=False,
        )

    @group.command("list")
    def list_(
        ctx: typer.Context,
        textset: str = typer.Option(None, "--textset", "-t", help="Only this text set."),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List map snapshots, newest first."""
        a = ctx_obj(ctx).atlas()
        names = {t.id: t.name for t in a.textsets()}
        rows = [
            {"id": s.id, "created_at": s.created_at, "method": s.method, "kind": s.kind,
             "variant": s.variant, "textset": names.get(s.textset_id), "n_models": s.n_models,
             "mode": s.params.get("mode"), "parent_id": s.parent_id,
             "clip_threshold": s.clip_threshold, "params": s.params}
            for s in a.map_snapshots(textset)
        ]  # fmt: skip
        if json:
            print_json(rows)
            return
        table = Table("id", "created", "method", "kind", "variant", "textset", "models", "mode",
                      "parent")  # fmt: skip
        for r in rows:
            table.add_row(str(r["id"]), f"{r['created_at']:%Y-%m-%d %H:%M}", r["method"],
                          r["kind"], r["variant"], cell(r["textset"] or ""),
                          str(r["n_models"]), r["mode"] or "",
                          str(r["parent_id"] or ""))  # fmt: skip
        out_console.print(table)

    @group.command("show")
    def show(
        ctx: typer.Context,
        snapshot: int = typer.Argument(None, help="Snapshot id (default: the newest)."),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Print a snapshot's models and coordinates."""
        points = ctx_obj(ctx).atlas().map_points(snapshot)
        if json:
            print_json(points)
            return
        table = Table("model", "type", "x", "y")
        for p in points:
            table.add_row(cell(p["model"]), cell(p["model_type"] or ""), f"{p['x']:.4f}",
                          f"{p['y']:.4f}")  # fmt: skip
        out_console.print(table)
