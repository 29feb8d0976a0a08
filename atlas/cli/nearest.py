"""`atlas nearest`: the models nearest to one model by estimated KL divergence."""

from __future__ import annotations

import typer
from rich.table import Table

from atlas.cli.common import cell, ctx_obj, human_count, out_console, print_json


def register(app: typer.Typer) -> None:
    @app.command("nearest")
    def nearest(
        ctx: typer.Context,
        model: str = typer.Argument(
            ..., metavar="MODEL",
            help="A model in the store, or a local folder or Hub id to score on the fly.",
        ),
        k: int = typer.Option(10, "-k", help="How many neighbours."),
        textset: str = typer.Option(
            None, "--textset", "-t", help="Text set (default: sample, else the largest)."
        ),
        variant: str = typer.Option("base", "--variant", help="Prompt variant of the vectors."),
        kind: str = typer.Option(
            "conditional", "--kind", help="conditional, unconditional or pmi."
        ),
        add: bool = typer.Option(
            False, "--add", help="Store a model scored on the fly (and index it)."
        ),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List the k models nearest to MODEL by estimated KL (nats per text)."""
        obj = ctx_obj(ctx)
        found = obj.atlas().nearest(
            model, k, textset=textset, variant=variant, kind=kind, add=add, log=obj.info
        )
        if json:
            print_json([n.as_dict() for n in found])
            return
        table = Table("rank", "model", "KL (nats)", "KL/token", "type", "params", "downloads")
        for n in found:
            per_token = "" if n.kl_per_token is None else f"{n.kl_per_token:.4f}"
            table.add_row(str(n.rank), cell(n.model), f"{n.kl:.4f}", per_token,
                          cell(n.model_type), human_count(n.num_parameters),
                          human_count(n.downloads))  # fmt: skip
        out_console.print(table)
