"""The `atlas` command: wires the command groups together and maps errors to messages."""

from __future__ import annotations

import importlib
import sys

import typer

from atlas.cli import common

app = typer.Typer(
    name="atlas",
    help="A living map of open language models, by their log-likelihood vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    db: str = typer.Option(
        None, "--db", metavar="URL", help="Database URL; overrides ATLAS_DATABASE_URL."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
) -> None:
    """A living map of open language models, by their log-likelihood vectors."""
    ctx.obj = common.Context(db_url=db, quiet=quiet)
    if quiet:
        common.silence_libraries()


# One module per command group; each exposes `register(app)`.
_COMMAND_MODULES = (
    "atlas.cli.db",
    "atlas.cli.textset",
    "atlas.cli.models",
    "atlas.cli.sync",
    "atlas.cli.score",
    "atlas.cli.maps",
    "atlas.cli.export",
    "atlas.cli.analyze",
    "atlas.cli.nearest",
    "atlas.cli.worker",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console entry point: run the app, turning known errors into one-line messages."""
    sys.exit(common.run(app))
