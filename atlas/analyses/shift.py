"""Prompt shift: how CoT and repeated prompts move each model, and whether the moves add up.

For a model with vectors `l_base`, `l_cot`, `l_repeat`, `l_both` (= repeat+cot) the shift vectors
are `d_v = l_v − l_base`. Additivity predicts `l_both ≈ l_base + d_cot + d_repeat`; the relative
error `||prediction − actual|| / ||actual − l_base||` measures how well (0 is perfect). Transfer
predicts a model's shifted vector from its base plus the mean shift of the other models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.analyses import plots
from atlas.analyses.common import load_clipped, pearson, plain
from atlas.errors import NotFound
from atlas.space import vectors

if TYPE_CHECKING:
    from atlas.store import Store

SHIFTED = ("cot", "repeat", "repeat+cot")


# --- pure math -------------------------------------------------------------------------------
def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def shift_vectors(
    base: np.ndarray, cot: np.ndarray, repeat: np.ndarray, both: np.ndarray
) -> dict[str, np.ndarray]:
    """`d_cot`, `d_repeat`, `d_both`: each variant minus base, row by row."""
    b = _f64(base)
    return {"cot": _f64(cot) - b, "repeat": _f64(repeat) - b, "repeat+cot": _f64(both) - b}


def _row_norms(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", a, a))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def additive_errors(
    base: np.ndarray, cot: np.ndarray, repeat: np.ndarray, both: np.ndarray
) -> np.ndarray:
    """Per model `||l_base + d_cot + d_repeat − l_both|| / ||l_both − l_base||`."""
    d = shift_vectors(base, cot, repeat, both)
    prediction = _f64(base) + d["cot"] + d["repeat"]
    return _ratio(_row_norms(prediction - _f64(both)), _row_norms(d["repeat+cot"]))


def centred_additive_errors(
    base: np.ndarray, cot: np.ndarray, repeat: np.ndarray, both: np.ndarray
) -> np.ndarray:
    """`additive_errors` after double-centring each variant's models x texts matrix."""
    return additive_errors(*(vectors.double_center(m) for m in (base, cot, repeat, both)))


def mean_changes(base: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    """Per model, the change of mean log-likelihood from base to a shifted variant."""
    return _f64(shifted).mean(axis=1) - _f64(base).mean(axis=1)


def mean_change_correlation(
    base: np.ndarray, cot: np.ndarray, repeat: np.ndarray, both: np.ndarray
) -> float:
    """Pearson of Δmean(repeat+cot) against Δmean(cot) + Δmean(repeat) across models."""
    return pearson(
        mean_changes(base, both), mean_changes(base, cot) + mean_changes(base, repeat)
    )


def transfer_errors(base: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    """Per model, the relative error of `l_base + mean shift of the other models`."""
    b, s = _f64(base), _f64(shifted)
    m = b.shape[0]
    if m < 2:
        return np.full(m, np.nan)
    d = s - b
    others = (d.sum(axis=0, keepdims=True) - d) / (m - 1)
    return _ratio(_row_norms(b + others - s), _row_norms(d))


def projection(
    base: np.ndarray, shifted: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """2-D coordinates: project onto the span of the mean shift vectors, then PCA within it.

    Returns the base points, the shifted points per variant, and the explained variance ratio
    of the two components.
    """
    b = _f64(base)
    means = np.stack([(_f64(s) - b).mean(axis=0) for s in shifted.values()])
    u, sing, _ = np.linalg.svd(means.T, full_matrices=False)
    keep = sing > max(sing.max(initial=0.0), 1e-300) * 1e-9
    basis = u[:, keep]  # N x k, orthonormal
    origin = b.mean(axis=0)
    coords = {"base": (b - origin) @ basis}
    coords |= {v: (_f64(s) - origin) @ basis for v, s in shifted.items()}
    stacked = np.concatenate(list(coords.values()))
    centre = stacked.mean(axis=0)
    _, sv, vt = np.linalg.svd(stacked - centre, full_matrices=False)
    comps = vt[:2]
    total = float((sv**2).sum())
    ratio = (sv[:2] ** 2) / total if total > 0 else np.zeros(len(sv[:2]))
    out = {k: (v - centre) @ comps.T for k, v in coords.items()}
    for k, v in out.items():
        if v.shape[1] < 2:
            out[k] = np.hstack([v, np.zeros((v.shape[0], 2 - v.shape[1]))])
    ratio = np.pad(ratio, (0, 2 - len(ratio)))
    return out.pop("base"), out, ratio


def _summary(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"median": float("nan"), "mean": float("nan")}
    return {"median": float(np.median(finite)), "mean": float(finite.mean())}


@dataclass
class ShiftResult:
    """Additivity, centred additivity, mean-change correlation and transfer errors."""

    textset: str
    models: list[str]
    additive: np.ndarray
    additive_centred: np.ndarray
    delta_mean: dict[str, np.ndarray]
    correlation: float
    transfer: dict[str, np.ndarray]
    coords: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray] | None = field(
        default=None, repr=False
    )

    def summary(self) -> dict[str, Any]:
        """Medians and means over models of every error, and the correlation."""
        return {
            "additive": _summary(self.additive),
            "additive_centred": _summary(self.additive_centred),
            "mean_change_pearson": self.correlation,
            "transfer": {v: _summary(e) for v, e in self.transfer.items()},
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-model rows."""
        rows = []
        for i, model in enumerate(self.models):
            rows.append({
                "model": model,
                "additive_error": self.additive[i],
                "additive_error_centred": self.additive_centred[i],
                "delta_mean": {v: d[i] for v, d in self.delta_mean.items()},
                "transfer_error": {v: e[i] for v, e in self.transfer.items()},
            })
        return plain({
            "analysis": "shift",
            "textset": self.textset,
            "n_models": len(self.models),
            "summary": self.summary(),
            "models": rows,
        })


def analyze_matrices(
    base: np.ndarray,
    cot: np.ndarray,
    repeat: np.ndarray,
    both: np.ndarray,
    models: list[str],
    *,
    textset: str = "",
) -> ShiftResult:
    """Every prompt-shift measure from the four aligned models x texts matrices."""
    variants = {"cot": cot, "repeat": repeat, "repeat+cot": both}
    return ShiftResult(
        textset=textset,
        models=list(models),
        additive=additive_errors(base, cot, repeat, both),
        additive_centred=centred_additive_errors(base, cot, repeat, both)
        if len(models) > 1
        else np.full(len(models), np.nan),
        delta_mean={v: mean_changes(base, m) for v, m in variants.items()},
        correlation=mean_change_correlation(base, cot, repeat, both),
        transfer={v: transfer_errors(base, m) for v, m in variants.items()},
        coords=projection(base, variants),
    )


# --- the store ---------------------------------------------------------------------------------
def analyze(store: Store, textset: str, *, models: list[str] | None = None) -> ShiftResult:
    """Prompt-shift analysis of the models that have all four variants on `textset`."""

    keys = [(v, "conditional") for v in ("base", *SHIFTED)]
    rows, (base, cot, repeat, both) = load_clipped(store, textset, keys, models)
    if not rows:
        raise NotFound(
            f"no model has all four prompt variants on text set {textset!r}",
            hint="score with `atlas score --variants base,cot,repeat,repeat+cot`",
        )
    names = [m.repo_id for m in rows]
    return analyze_matrices(base, cot, repeat, both, names, textset=textset)


def plot(result: ShiftResult, path: Path | str) -> Path:
    """Base points with lines to their shifted versions, in the span of the mean shifts."""

    base, shifted, ratio = result.coords or projection(np.zeros((0, 0)), {})
    s = result.summary()
    note = (
        f"additive error median {s['additive']['median']:.3f} "
        f"(centred {s['additive_centred']['median']:.3f})\n"
        f"Δmean correlation {s['mean_change_pearson']:.3f}\n"
        f"PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%} of the in-span variance"
    )
    return plots.shift_arrows(
        path, base, shifted, labels=result.models,
        title=f"Prompt shift on {result.textset}, {len(result.models)} models", note=note,
    )
