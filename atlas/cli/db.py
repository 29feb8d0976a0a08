"""`atlas db`: schema migrations."""

from __future__ import annotations

import typer

from atlas.api import Atlas
from atlas.cli.common import ctx_obj, out_console
from atlas.settings import redact_url


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
    app.add_typer(group, name="db")

    @group.command("upgrade")
    def upgrade(ctx: typer.Context) -> None:
        """Migrate the database to the newest schema, and on Postgres the queue's tables."""
        obj = ctx_obj(ctx)
        ran = Atlas.upgrade_db(obj.db_url)
        atlas = obj.atlas()
        obj.info(f"{'migrated' if ran else 'already at'} revision {atlas.schema_revision()}")
        if atlas.store.dialect == "postgresql":
            obj.info(f"queue schema (procrastinate): {atlas.upgrade_queue()}")

    @group.command("current")
    def current(ctx: typer.Context) -> None:
        """Print the database URL (password hidden) and its schema revision."""
        atlas = ctx_obj(ctx).atlas()
        out_console.print(f"{redact_url(atlas.store.url)} {atlas.schema_revision()}", markup=False)
