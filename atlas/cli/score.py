"""`atlas score`: compute and store a model's log-likelihood vectors on a text set."""

from __future__ import annotations

import typer

from atlas.cli.common import ctx_obj, print_json, progress_bar


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        ctx: typer.Context,
        model: str = typer.Argument(..., help="Hub repo id (owner/name) or a local HF folder."),
        textset: str = typer.Option("sample", "--textset", "-t", help="Text set name."),
        variants: str = typer.Option(
            None,
            "--variants",
            help="Comma list of prompt variants: base,cot,repeat,repeat+cot (default: all four; "
            "plain sets have only base).",
        ),
        device: str = typer.Option(
            "auto", "--device",
            help="auto, cpu, cuda, or GPUs to split a model over (cuda:0,cuda:1).",
        ),
        dtype: str = typer.Option(
            "auto", "--dtype", help="auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, "
            "float32.",
        ),
        max_tokens: int = typer.Option(
            None, "--max-tokens", help="Longest item in tokens (default: the model's context)."
        ),
        name: str = typer.Option(
            None, "--name", help="Store name for a local folder (default: the folder name)."
        ),
        revision: str = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
        trust_remote_code: bool = typer.Option(
            False, "--trust-remote-code", help="Run the repo's own Python code (this run only)."
        ),
        batch_tokens: int = typer.Option(
            None, "--batch-tokens", help="Tokens per batch (default: 2048 on CPU, from memory "
            "on GPU); halves itself on out-of-memory.",
        ),
        force: bool = typer.Option(False, "--force", help="Recompute pieces already stored."),
        json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Score MODEL on a text set: conditional vectors per variant and the unconditional one."""
        obj = ctx_obj(ctx)
        with progress_bar(f"scoring {model}", quiet=obj.quiet) as bar:
            summary = obj.atlas().score(
                model, textset, variants=variants, device=device, dtype=dtype,
                max_tokens=max_tokens, name=name, revision=revision,
                trust_remote_code=trust_remote_code, batch_tokens=batch_tokens, force=force,
                progress=bar, log=obj.info,
            )  # fmt: skip
        if json:
            print_json(summary.as_dict())
        obj.info(summary.line())
