"""`atlas export`: write a map snapshot as JSON, CSV, npz, PNG and an interactive page."""

from __future__ import annotations

from pathlib import Path

import typer

from atlas.cli.common import ctx_obj
from atlas.export.snapshot import FILES


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        ctx: typer.Context,
        directory: Path = typer.Argument(..., help="Folder to write into (created if needed)."),
        snapshot: int = typer.Option(
            None, "--snapshot", "-s", help="Snapshot id (default: the newest)."
        ),
        neighbours: int = typer.Option(
            10, "--neighbours", help="Nearest neighbours per model on the page."
        ),
    ) -> None:
        """Export a map snapshot: snapshot.json, models.csv, loglik.npz, map.png, map.html."""

        obj = ctx_obj(ctx)
        out = obj.atlas().export(directory, snapshot, neighbours=neighbours)
        obj.info(f"wrote {', '.join(FILES)}")
        typer.echo(str(out))
