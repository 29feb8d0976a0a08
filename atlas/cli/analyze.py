"""`atlas analyze`: the papers' analyses (PMI, prompt shift, KL validation, prediction, lineage)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from atlas.cli.common import cell, ctx_obj, out_console, print_json

TEXTSET_HELP = "Text set (default: sample when it holds vectors, else the most scored one)."
MODELS_HELP = "Comma-separated repo ids to include (default: every model with the vectors)."
PLOT_HELP = "Write the figure to this PNG file."
JSON_HELP = "Print JSON."
VARIANT_HELP = "Prompt variant of the vectors: base, cot, repeat or repeat+cot."

# Options every analysis takes, declared once.
_TEXTSET = typer.Option(None, "--textset", "-t", help=TEXTSET_HELP)
_VARIANT = typer.Option("base", "--variant", help=VARIANT_HELP)
_MODELS = typer.Option(None, "--models", "-m", help=MODELS_HELP)
_PLOT = typer.Option(None, "--plot", help=PLOT_HELP)
_JSON = typer.Option(False, "--json", help=JSON_HELP)


def _models(value: str | None) -> list[str] | None:
    names = [m.strip() for m in (value or "").split(",") if m.strip()]
    return names or None


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _t(value: Any) -> Text:
    """A table cell with no markup interpretation (model names are data, not markup)."""
    return cell(value)


def _finish(
    obj: Any, result: Any, plot: Path | None, json: bool, render: Any, module: str
) -> None:
    """Print JSON or the tables, then write the figure (`atlas.analyses.<module>.plot`) if asked."""
    if json:
        print_json(result.as_dict())
    else:
        render(result)
    if plot is not None:
        import importlib

        written = importlib.import_module(f"atlas.analyses.{module}").plot(result, plot)
        obj.info(f"figure written to {written}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The papers' analyses: PMI, prompt shift, KL validation, prediction, lineage.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="analyze")

    @group.command("pmi")
    def pmi_(
        ctx: typer.Context,
        textset: str = _TEXTSET,
        variant: str = _VARIANT,
        models: str = _MODELS,
        plot: Path = _PLOT,
        json: bool = _JSON,
    ) -> None:
        """Mean PMI (the MI estimate) vs half the variance of the centred PMI, per model."""
        obj = ctx_obj(ctx)
        result = obj.atlas().analyze_pmi(textset, variant=variant, models=_models(models))
        _finish(obj, result, plot, json, _render_pmi, "pmi")

    @group.command("shift")
    def shift_(
        ctx: typer.Context,
        textset: str = _TEXTSET,
        models: str = _MODELS,
        plot: Path = _PLOT,
        json: bool = _JSON,
    ) -> None:
        """Prompt shift: additivity of CoT and repeat shifts, and their transfer across models."""
        obj = ctx_obj(ctx)
        result = obj.atlas().analyze_shift(textset, models=_models(models))
        _finish(obj, result, plot, json, _render_shift, "shift")

    @group.command("validate-kl")
    def validate_kl(
        ctx: typer.Context,
        models: str = typer.Option(
            ..., "--models", "-m",
            help="Comma-separated models: NAME=FOLDER, a folder, or a Hub repo id (3 or more).",
        ),
        textset: str = _TEXTSET,
        prompts: int = typer.Option(
            None, "--prompts", help="Use only the first K prompts of the text set."
        ),
        samples: int = typer.Option(1, "--samples", help="Responses sampled per prompt."),
        max_new_tokens: int = typer.Option(
            128, "--max-new-tokens", help="Longest sampled response, in tokens."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for sampling and the bootstrap."),
        bootstrap: int = typer.Option(
            1000, "--bootstrap", help="Bootstrap resamples of the prompts for the intervals."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        dtype: str = typer.Option(
            "auto", "--dtype", help="auto, bfloat16, float16 or float32."
        ),
        trust_remote_code: bool = typer.Option(
            False, "--trust-remote-code", help="Run the models' own code (this run only)."
        ),
        plot: Path = _PLOT,
        json: bool = _JSON,
    ) -> None:
        """Monte Carlo KL from sampled responses vs the vector estimate (the paper's Sec. 6)."""
        obj = ctx_obj(ctx)
        result = obj.atlas().validate_kl(
            _models(models) or [], textset, prompts=prompts, samples=samples,
            max_new_tokens=max_new_tokens, seed=seed, n_boot=bootstrap, device=device,
            dtype=dtype, trust_remote_code=trust_remote_code, log=obj.info,
        )  # fmt: skip
        _finish(obj, result, plot, json, _render_validate, "kl_validation")

    @group.command("predict")
    def predict_(
        ctx: typer.Context,
        scores: Path = typer.Option(
            ..., "--scores", help="CSV with a `model` column and one column per benchmark."
        ),
        target: str = typer.Option(..., "--target", help="The CSV column to predict."),
        textset: str = _TEXTSET,
        variant: str = _VARIANT,
        models: str = _MODELS,
        folds: int = typer.Option(5, "--folds", help="Outer cross-validation folds."),
        seeds: int = typer.Option(5, "--seeds", help="Seeds of the random k-fold evaluation."),
        plot: Path = _PLOT,
        json: bool = _JSON,
    ) -> None:
        """Ridge regression from double-centred vectors to a benchmark score, cross-validated."""
        obj = ctx_obj(ctx)
        result = obj.atlas().predict(
            scores, target, textset, variant=variant, models=_models(models),
            seeds=tuple(range(max(seeds, 1))), n_splits=folds,
        )  # fmt: skip
        if result.unknown:
            obj.info(f"{len(result.unknown)} model(s) in the CSV are not scored here; ignored")
        _finish(obj, result, plot, json, _render_predict, "predict")

    @group.command("lineage")
    def lineage_(
        ctx: typer.Context,
        textset: str = _TEXTSET,
        variant: str = _VARIANT,
        models: str = _MODELS,
        plot: Path = _PLOT,
        json: bool = _JSON,
    ) -> None:
        """Is a fine-tuned model's KL-nearest neighbour its recorded base or a sibling?"""
        obj = ctx_obj(ctx)
        result = obj.atlas().lineage(textset, variant=variant, models=_models(models))
        if not result.rows:
            obj.info("no fine-tuned model has its recorded base in the atlas")
        _finish(obj, result, plot, json, _render_lineage, "lineage")


# --- renderers ---------------------------------------------------------------------------------
def _render_pmi(result: Any) -> None:
    data = result.as_dict()
    out_console.print(
        f"PMI on {data['textset']} ({data['variant']}), {data['n_models']} models: MI estimate vs "
        f"variance approximation, Pearson {_num(data['pearson'])}, "
        f"Spearman {_num(data['spearman'])}", markup=False,
    )
    table = Table("model", "MI (mean PMI)", "Var(ξ_PMI)/2", "mean cond. LL")
    for r in data["models"]:
        table.add_row(_t(r["model"]), _num(r["mi"]), _num(r["variance_approx"]),
                      _num(r["mean_conditional"]))
    out_console.print(table)
    names = sorted({t for r in data["table"] for t in r["textsets"]})
    if len(names) > 1:
        grid = Table("model", *[f"{n}: PMI / LL" for n in names], title="mean PMI / mean LL")
        for r in data["table"]:
            cells = [
                f"{_num(c['mean_pmi'], 2)} / {_num(c['mean_conditional'], 2)}"
                if (c := r["textsets"].get(n)) else "-"
                for n in names
            ]
            grid.add_row(_t(r["model"]), *cells)
        out_console.print(grid)


def _render_shift(result: Any) -> None:
    data = result.as_dict()
    s = data["summary"]
    table = Table("measure", "median", "mean",
                  title=f"Prompt shift on {data['textset']}, {data['n_models']} models")
    table.add_row("additive error", _num(s["additive"]["median"]), _num(s["additive"]["mean"]))
    table.add_row("additive error, double-centred", _num(s["additive_centred"]["median"]),
                  _num(s["additive_centred"]["mean"]))
    for v, e in s["transfer"].items():
        table.add_row(f"transfer error, {v}", _num(e["median"]), _num(e["mean"]))
    out_console.print(table)
    out_console.print(
        f"Pearson of Δmean(repeat+cot) vs Δmean(cot) + Δmean(repeat): "
        f"{_num(s['mean_change_pearson'])}", markup=False,
    )
    rows = Table("model", "additive", "centred", "Δ cot", "Δ repeat", "Δ repeat+cot",
                 "transfer repeat+cot")
    for r in data["models"]:
        d = r["delta_mean"]
        rows.add_row(_t(r["model"]), _num(r["additive_error"]), _num(r["additive_error_centred"]),
                     _num(d["cot"], 2), _num(d["repeat"], 2), _num(d["repeat+cot"], 2),
                     _num(r["transfer_error"]["repeat+cot"]))
    out_console.print(rows)


def _render_validate(result: Any) -> None:
    data = result.as_dict()
    pci, sci = data["pearson_ci95"], data["spearman_ci95"]
    out_console.print(
        f"KL validation on {data['textset']}: {len(data['models'])} models, {data['prompts']} "
        f"prompts x {data['samples']} sample(s), at most {data['max_new_tokens']} new tokens",
        markup=False,
    )
    out_console.print(
        f"Pearson {_num(data['pearson'])} [{_num(pci[0], 2)}, {_num(pci[1], 2)}], "
        f"Spearman {_num(data['spearman'])} [{_num(sci[0], 2)}, {_num(sci[1], 2)}] "
        "(95% bootstrap over prompts)", markup=False,
    )
    table = Table("model a", "model b", "KL(a‖b) MC", "KL(b‖a) MC", "symmetrised", "vector")
    for r in data["pairs"]:
        table.add_row(_t(r["a"]), _t(r["b"]), _num(r["mc_ab"]), _num(r["mc_ba"]),
                      _num(r["mc_sym"]), _num(r["vector"]))
    out_console.print(table)


def _render_predict(result: Any) -> None:
    data = result.as_dict()
    out_console.print(
        f"Predicting {data['target']} from {data['textset']}: {data['n_labelled']} scored models "
        f"in {data['n_groups']} model types; ridge alpha {_num(data['alpha'], 0)} on all",
        markup=False,
    )
    table = Table("features", "evaluation", "Pearson", "Spearman")
    for label, key in (("double-centred vectors", "ridge"),
                       ("mean log-likelihood", "baseline_mean_loglik")):
        for scheme, e in data[key].items():
            name = "group k-fold (model type)" if scheme == "group" else "random k-fold, mean"
            table.add_row(label, name, _num(e["pearson"]), _num(e["spearman"]))
    out_console.print(table)
    if data["predicted"]:
        pred = Table("model", f"predicted {data['target']}", title="models without a score")
        for r in data["predicted"]:
            pred.add_row(_t(r["model"]), _num(r["prediction"], 2))
        out_console.print(pred)


def _render_lineage(result: Any) -> None:
    data = result.as_dict()
    prec = ", ".join(f"P{k} {_num(v)}" for k, v in data["precision"].items())
    hit = ", ".join(f"hit{k} {_num(v)}" for k, v in data["hit"].items())
    out_console.print(
        f"Lineage on {data['textset']}: {data['n_evaluated']} fine-tuned models of "
        f"{data['n_models']}: {prec}; {hit}; chance at 1 {_num(data['chance_at_1'])}",
        markup=False,
    )
    table = Table("model", "base", "nearest", "relation", "base rank", "KL to base",
                  "KL nearest other")
    for r in data["models"]:
        table.add_row(_t(r["model"]), _t(", ".join(r["bases"])), _t(r["neighbours"][0]),
                      r["relations"][0], str(r["base_rank"]), _num(r["kl_base"]),
                      _num(r["kl_nearest_other"]))
    out_console.print(table)
