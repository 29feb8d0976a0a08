"""PMI and mutual information: per-model MI estimates, their variance approximation, Table 2.

The PMI vector of a model is its conditional minus its unconditional log-likelihood vector
(each clipped on its own). Its mean over the text set estimates the mutual information between
prompt and response; half the empirical variance of the centred PMI vector approximates the same
quantity, by analogy with `KL ≈ ||ξ_i − ξ_j||² / (2N)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.analyses import plots
from atlas.analyses.common import correlations, load_clipped, plain
from atlas.errors import NotFound
from atlas.space import matrices as space_matrices
from atlas.space import vectors
from atlas.space.index import ALL_PAIRS_UP_TO

if TYPE_CHECKING:
    from atlas.store import Store


# --- pure math -------------------------------------------------------------------------------
def mi_estimates(pmi: np.ndarray) -> np.ndarray:
    """Per model, the mean PMI over texts: the estimate of prompt-response mutual information."""
    return np.asarray(pmi, dtype=np.float64).mean(axis=1)


BLOCK = 2048  # models per block


def variance_approximation(pmi: np.ndarray) -> np.ndarray:
    """Per model, half the empirical variance of the centred PMI vector: `||ξ||² / (2N)`."""
    xi = vectors.center(pmi)
    return (xi**2).mean(axis=1) / 2.0


@dataclass
class PMIResult:
    """Per-model MI estimates and their variance approximation on one text set and variant."""

    textset: str
    variant: str
    models: list[str]
    mi: np.ndarray
    variance_approx: np.ndarray
    mean_conditional: np.ndarray
    pearson: float
    spearman: float
    table: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: summary, per-model rows and the Table-2-shaped table."""
        return plain({
            "analysis": "pmi",
            "textset": self.textset,
            "variant": self.variant,
            "n_models": len(self.models),
            "pearson": self.pearson,
            "spearman": self.spearman,
            "models": [
                {"model": m, "mi": mi, "variance_approx": va, "mean_conditional": mc}
                for m, mi, va, mc in zip(
                    self.models, self.mi, self.variance_approx, self.mean_conditional, strict=True
                )
            ],
            "table": self.table,
        })


def analyze_matrices(
    cond: np.ndarray,
    uncond: np.ndarray,
    models: list[str],
    *,
    textset: str = "",
    variant: str = "base",
) -> PMIResult:
    """MI estimate, variance approximation and their correlations from clipped matrices.

    Rows are independent: they are processed in blocks, so float32 inputs of any size need
    only a block's float64 copy.
    """
    n = len(cond)
    mi, approx, mean_cond = np.zeros(n), np.zeros(n), np.zeros(n)
    for start in range(0, n, BLOCK):
        c, u = cond[start : start + BLOCK], uncond[start : start + BLOCK]
        pmi = vectors.pmi(c, u)
        mi[start : start + BLOCK] = mi_estimates(pmi)
        approx[start : start + BLOCK] = variance_approximation(pmi)
        mean_cond[start : start + BLOCK] = np.asarray(c, dtype=np.float64).mean(axis=1)
    pearson, spearman = correlations(mi, approx)
    return PMIResult(
        textset=textset,
        variant=variant,
        models=list(models),
        mi=mi,
        variance_approx=approx,
        mean_conditional=mean_cond,
        pearson=pearson,
        spearman=spearman,
    )


def _subset(result: PMIResult, keep: set[str]) -> PMIResult:
    """The same result restricted to some models (for the Table 2 rows)."""
    idx = [i for i, m in enumerate(result.models) if m in keep]
    return PMIResult(
        textset=result.textset,
        variant=result.variant,
        models=[result.models[i] for i in idx],
        mi=result.mi[idx],
        variance_approx=result.variance_approx[idx],
        mean_conditional=result.mean_conditional[idx],
        pearson=result.pearson,
        spearman=result.spearman,
    )


def table_rows(per_textset: dict[str, PMIResult]) -> list[dict[str, Any]]:
    """Table 2's shape: one row per model, mean PMI and mean conditional LL per text set."""
    rows: dict[str, dict[str, Any]] = {}
    for name, result in per_textset.items():
        for model, mi, mc in zip(result.models, result.mi, result.mean_conditional, strict=True):
            row = rows.setdefault(model, {"model": model, "textsets": {}})
            row["textsets"][name] = {"mean_pmi": float(mi), "mean_conditional": float(mc)}
    return [rows[m] for m in sorted(rows)]


# --- the store ---------------------------------------------------------------------------------
def analyze(
    store: Store,
    textset: str,
    *,
    variant: str = "base",
    models: list[str] | None = None,
    table_textsets: list[str] | None = None,
) -> PMIResult:
    """PMI analysis of the stored vectors of `textset`, with Table 2 over `table_textsets`.

    `table_textsets` None means every stored prompt-response text set.
    """

    def matrices(name: str, wanted: list[str] | None) -> PMIResult | None:
        keys = [(variant, "conditional"), ("base", "unconditional")]
        count = len(wanted) if wanted else len(space_matrices.stamps(store, name, variant, "pmi"))
        large = count > ALL_PAIRS_UP_TO
        rows, (cond, uncond) = load_clipped(store, name, keys, wanted,
                                            dtype=np.float32 if large else np.float64)
        if not rows:
            return None
        names = [m.repo_id for m in rows]
        return analyze_matrices(cond, uncond, names, textset=name, variant=variant)

    result = matrices(textset, models)
    if result is None:
        raise NotFound(
            f"no model has conditional and unconditional vectors on text set {textset!r}",
            hint="score models first with `atlas score`",
        )
    per_set = {textset: result}
    if table_textsets is None:
        table_textsets = [t.name for t in store.textsets() if t.kind == "pairs"]
    for other in table_textsets:
        if other not in per_set:
            extra = matrices(other, None)
            if extra is not None:
                keep = set(result.models if models else extra.models)
                per_set[other] = _subset(extra, keep)
    result.table = table_rows(per_set)
    return result


def plot(result: PMIResult, path: Path | str) -> Path:
    """Scatter of the MI estimate (mean PMI) against half the variance of the centred PMI."""

    return plots.scatter(
        path,
        result.variance_approx,
        result.mi,
        xlabel="variance approximation: Var(centred PMI) / 2  [nats]",
        ylabel="MI estimate: mean PMI  [nats per pair]",
        title=f"PMI on {result.textset} ({result.variant}), {len(result.models)} models",
        labels=result.models,
        note=f"Pearson {result.pearson:.3f}\nSpearman {result.spearman:.3f}",
    )
