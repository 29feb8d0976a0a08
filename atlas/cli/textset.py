"""`atlas textset`: import, list and show text sets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from atlas.cli.common import cell, ctx_obj, out_console, print_json, safe


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Import, list and show text sets.", no_args_is_help=True)
    app.add_typer(group, name="textset")

    @group.command("import")
    def import_(
        ctx: typer.Context,
        file: Path = typer.Argument(..., help="JSONL, CSV or Parquet file."),
        name: str = typer.Option(None, "--name", "-n", help="Text set name (default: file stem)."),
    ) -> None:
        """Import prompt-response pairs (or plain texts) as a named, hashed text set."""
        obj = ctx_obj(ctx)
        result = obj.atlas().import_textset(file, name)
        t = result.textset
        verb = "imported" if result.created else "already stored (identical content)"
        obj.info(f"{verb}: {t.name} ({t.kind}, {t.size} items, sha256 {t.sha256[:12]})")
        if result.duplicates:
            obj.info(
                f"warning: {result.duplicates} item(s) repeat an earlier item of the set; "
                "they count as separate texts"
            )

    @group.command("build")
    def build(
        ctx: typer.Context,
        dataset: str = typer.Option(
            ..., "--dataset", "-d", help="Hub dataset id, e.g. allenai/tulu-3-sft-mixture."
        ),
        n: int = typer.Option(..., "--n", min=1, help="Number of prompt-response pairs."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same text set)."),
        name: str = typer.Option(
            None, "--name", help="Text set name (default: <dataset>-<N>-seed<S>)."
        ),
        split: str = typer.Option(None, "--split", help="Only files of this split (e.g. train)."),
        revision: str = typer.Option(
            None, "--revision", help="Dataset revision (default: the newest commit)."
        ),
    ) -> None:
        """Sample N single-turn pairs from a Hub dataset's Parquet/JSONL files as a text set."""
        obj = ctx_obj(ctx)
        result = obj.atlas().build_textset(
            dataset, n=n, seed=seed, name=name, split=split, revision=revision,
            progress=obj.info,
        )  # fmt: skip
        t = result.textset
        verb = "built" if result.created else "already stored (identical content)"
        obj.info(f"{verb}: {t.name} ({t.size} pairs from {t.source}, sha256 {t.sha256[:12]})")

    @group.command("resample")
    def resample(
        ctx: typer.Context,
        source: str = typer.Argument(..., help="A stored (scored) text set."),
        n: int = typer.Option(..., "--n", min=1, help="Number of draws K (with replacement)."),
        name: str = typer.Option(..., "--name", help="Name of the new text set."),
        method: str = typer.Option(
            "variance", "--method", help="uniform, or variance (∝ variance across models)."
        ),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same text set)."),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Draw K texts of a scored text set with weights 1/sqrt(K pi); slice its vectors."""
        obj = ctx_obj(ctx)
        result = obj.atlas().resample_textset(source, n=n, name=name, method=method, seed=seed)
        t = result.textset
        if json:
            print_json({"name": t.name, "size": t.size, "draws": result.draws,
                        "sha256": t.sha256, "source": t.source, "created": result.created,
                        "sliced_vectors": result.sliced})  # fmt: skip
            return
        verb = "resampled" if result.created else "already stored (identical content)"
        obj.info(f"{verb}: {t.name} ({t.size} distinct items of {result.draws} draws, "
                 f"sha256 {t.sha256[:12]}); {result.sliced} vector pieces sliced from {source}")

    @group.command("list")
    def list_(
        ctx: typer.Context, json: bool = typer.Option(False, "--json", help="Print JSON.")
    ) -> None:
        """List the stored text sets."""
        sets = ctx_obj(ctx).atlas().textsets()
        rows = [
            {"name": t.name, "kind": t.kind, "size": t.size, "sha256": t.sha256,
             "source": t.source, "created_at": t.created_at}
            for t in sets
        ]
        if json:
            print_json(rows)
            return
        table = Table("name", "kind", "size", "sha256", "source")
        for r in rows:
            table.add_row(cell(r["name"]), r["kind"], str(r["size"]), r["sha256"][:12],
                          cell(r["source"]))
        out_console.print(table)

    @group.command("show")
    def show(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="Text set name."),
        limit: int = typer.Option(5, "--limit", "-l", help="Items to show."),
        json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Show a text set's metadata and its first items."""
        t, items = ctx_obj(ctx).atlas().textset(name)
        head = [
            {k: v for k, v in vars(it).items() if v is not None} | {"index": i}
            for i, it in enumerate(items[: max(limit, 0)])
        ]
        if json:
            print_json({"name": t.name, "kind": t.kind, "size": t.size, "sha256": t.sha256,
                        "source": t.source, "items": head})
            return
        out_console.print(f"{safe(t.name)}: {t.kind}, {t.size} items, sha256 {t.sha256}")
        out_console.print(f"source: {safe(t.source or '-')}")
        for row in head:
            if "text" in row:
                out_console.print(f"[{row['index']}] {_short(row['text'])}", markup=False)
            else:
                out_console.print(f"[{row['index']}] user: {_short(row['prompt'])}", markup=False)
                out_console.print(f"    assistant: {_short(row['response'])}", markup=False)


def _short(text: str, width: int = 100) -> str:
    flat = safe(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"
