"""Performance prediction (Oyama et al. 2025b, Section 5): ridge regression on the vectors.

Double-centred log-likelihood vectors are the features, a benchmark score per model the target.
`RidgeCV` chooses the regularisation inside each training fold; out-of-fold predictions come
from group k-fold by model type and from random k-fold over several seeds, clipped to the
observed score range. The baseline uses each model's mean log-likelihood as its only feature.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.analyses import plots
from atlas.analyses.common import correlations, load_clipped, plain
from atlas.errors import UsageError
from atlas.space import vectors

if TYPE_CHECKING:
    from atlas.store import Store

ALPHAS = tuple(float(a) for a in np.logspace(1, 9, 9))
N_SPLITS = 5
SEEDS = (0, 1, 2, 3, 4)
MIN_LABELLED = 4

Folds = list[tuple[np.ndarray, np.ndarray]]


# --- pure math -------------------------------------------------------------------------------
def group_folds(groups: Sequence[str], n_splits: int = N_SPLITS) -> Folds:
    """GroupKFold splits (no group on both sides); fewer splits when there are fewer groups."""
    from sklearn.model_selection import GroupKFold

    k = min(n_splits, len(set(groups)))
    if k < 2:
        return []
    idx = np.arange(len(groups))
    return [(tr, te) for tr, te in GroupKFold(n_splits=k).split(idx, groups=list(groups))]


def random_folds(n: int, seed: int, n_splits: int = N_SPLITS) -> Folds:
    """Shuffled KFold splits for one seed; fewer splits when there are fewer samples."""
    from sklearn.model_selection import KFold

    k = min(n_splits, n)
    if k < 2:
        return []
    return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n)))


def fit_predict(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    *,
    alphas: Sequence[float] = ALPHAS,
    clip_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Fit RidgeCV (efficient leave-one-out over `alphas`); predictions and the chosen alpha."""
    from sklearn.linear_model import RidgeCV

    if len(y_train) < 3:  # leave-one-out needs at least two samples after leaving one out
        return np.full(len(X_test), float(np.mean(y_train))), math.nan
    model = RidgeCV(alphas=list(alphas)).fit(X_train, y_train)
    pred = model.predict(X_test)
    if clip_range is not None:
        pred = np.clip(pred, *clip_range)
    return pred, float(model.alpha_)


def gram_fit_predict(
    K: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    alphas: Sequence[float] = ALPHAS,
    clip_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, float]:
    """`fit_predict` from the Gram matrix K = X Xᵀ of all samples: the same ridge, no X copies.

    Ridge with an unpenalised intercept on training-centred features, the alpha chosen by exact
    leave-one-out squared error as RidgeCV does; O(n³) per fold however many features there are.
    """
    y_train = y[train]
    if len(y_train) < 3:
        return np.full(len(test), float(np.mean(y_train))), math.nan
    A, B = K[np.ix_(train, train)], K[np.ix_(test, train)]
    col_mean, grand = A.mean(axis=0), A.mean()
    Kc = A - col_mean[None, :] - col_mean[:, None] + grand  # centred X_t X_tᵀ
    cross = B - B.mean(axis=1)[:, None] - col_mean[None, :] + grand  # centred X_s X_tᵀ
    lam, U = np.linalg.eigh(Kc)
    lam = np.clip(lam, 0.0, None)
    mean_y = float(y_train.mean())
    Uy = U.T @ (y_train - mean_y)
    best: tuple[float, float] | None = None
    for alpha in alphas:
        shrink = lam / (lam + alpha)
        resid = (y_train - mean_y) - U @ (shrink * Uy)
        leverage = 1.0 / len(y_train) + (U**2) @ shrink
        loo = float(np.mean((resid / (1.0 - leverage)) ** 2))
        if best is None or loo < best[0]:
            best = (loo, float(alpha))
    alpha = best[1]  # type: ignore[index]
    pred = mean_y + cross @ (U @ (Uy / (lam + alpha)))
    if clip_range is not None:
        pred = np.clip(pred, *clip_range)
    return pred, alpha


def oof_predictions(
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    *,
    alphas: Sequence[float] = ALPHAS,
    clip_range: tuple[float, float] | None = None,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold predictions: each sample predicted by the model fitted without its fold."""
    K = _gram(X) if gram is None else gram  # one Gram matrix serves every fold
    out = np.full(len(y), np.nan)
    for train, test in folds:
        out[test], _ = gram_fit_predict(K, y, train, test, alphas=alphas, clip_range=clip_range)
    return out


def _gram(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X @ X.T


@dataclass
class Evaluation:
    """Pearson and Spearman of out-of-fold predictions for one scheme and feature set."""

    scheme: str
    pearson: float
    spearman: float
    per_seed: list[dict[str, float]] = field(default_factory=list)
    predictions: np.ndarray | None = field(default=None, repr=False)


def evaluate(
    X: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    *,
    seeds: Sequence[int] = SEEDS,
    n_splits: int = N_SPLITS,
    alphas: Sequence[float] = ALPHAS,
    clip_range: tuple[float, float] | None = None,
) -> dict[str, Evaluation]:
    """Group k-fold and random k-fold (mean over seeds) evaluations of ridge on (X, y)."""
    out: dict[str, Evaluation] = {}
    common = {"alphas": alphas, "clip_range": clip_range, "gram": _gram(X)}
    folds = group_folds(groups, n_splits)
    if folds:
        pred = oof_predictions(X, y, folds, **common)  # type: ignore[arg-type]
        out["group"] = Evaluation("group", *correlations(pred, y), predictions=pred)
    runs = []
    first: np.ndarray | None = None
    for seed in seeds:
        folds = random_folds(len(y), seed, n_splits)
        if not folds:
            continue
        pred = oof_predictions(X, y, folds, **common)  # type: ignore[arg-type]
        first = pred if first is None else first
        p, s = correlations(pred, y)
        runs.append({"seed": seed, "pearson": p, "spearman": s})
    if runs:
        out["random"] = Evaluation(
            "random",
            _nanmean([r["pearson"] for r in runs]),
            _nanmean([r["spearman"] for r in runs]),
            per_seed=runs,
            predictions=first,
        )
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


# --- scores files ------------------------------------------------------------------------------
def read_scores(path: Path | str, target: str) -> dict[str, float]:
    """`model` -> score from a CSV with a `model` column and the `target` column."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read scores file {path}: {exc.strerror or exc}") from exc
    scores: dict[str, float] = {}
    with handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "model" not in columns or target not in columns:
            raise UsageError(
                f"{path} needs a 'model' column and a {target!r} column; it has "
                f"{', '.join(columns) or 'none'}"
            )
        for line, row in enumerate(reader, start=2):
            model, raw = (row.get("model") or "").strip(), (row.get(target) or "").strip()
            if not model or not raw:
                continue
            try:
                value = float(raw)
            except ValueError as exc:
                raise UsageError(f"{path}:{line}: {target} is not a number: {raw!r}") from exc
            if math.isfinite(value):
                scores[model] = value
    return scores


# --- the store ---------------------------------------------------------------------------------
@dataclass
class PredictResult:
    """Evaluations of the vector model and the baseline, and predictions for unscored models."""

    textset: str
    target: str
    labelled: list[str]
    scores: np.ndarray
    groups: list[str]
    ridge: dict[str, Evaluation]
    baseline: dict[str, Evaluation]
    predicted: dict[str, float]
    alpha: float
    unknown: list[str]
    clip_range: tuple[float, float]

    def rows(self) -> Iterator[dict[str, Any]]:
        """Per labelled model: score and out-of-fold predictions."""
        group = self.ridge.get("group")
        rnd = self.ridge.get("random")
        for i, model in enumerate(self.labelled):
            yield {
                "model": model,
                "model_type": self.groups[i],
                "score": self.scores[i],
                "oof_group": None if group is None else group.predictions[i],  # type: ignore[index]
                "oof_random": None if rnd is None else rnd.predictions[i],  # type: ignore[index]
            }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready evaluations, per-model rows and predictions."""

        def ev(evals: dict[str, Evaluation]) -> dict[str, Any]:
            return {
                k: {"pearson": e.pearson, "spearman": e.spearman, "per_seed": e.per_seed}
                for k, e in evals.items()
            }

        return plain({
            "analysis": "predict",
            "textset": self.textset,
            "target": self.target,
            "n_labelled": len(self.labelled),
            "n_groups": len(set(self.groups)),
            "alpha": self.alpha,
            "clip_range": list(self.clip_range),
            "ridge": ev(self.ridge),
            "baseline_mean_loglik": ev(self.baseline),
            "models": list(self.rows()),
            "predicted": [{"model": m, "prediction": p} for m, p in self.predicted.items()],
            "unknown_models": self.unknown,
        })


def predict_matrices(
    L: np.ndarray,
    names: Sequence[str],
    groups: Sequence[str],
    scores: dict[str, float],
    *,
    textset: str = "",
    target: str = "score",
    seeds: Sequence[int] = SEEDS,
    n_splits: int = N_SPLITS,
    alphas: Sequence[float] = ALPHAS,
) -> PredictResult:
    """Evaluate and apply ridge prediction given a clipped models x texts matrix."""

    Q = vectors.double_center(L)
    mean_ll = np.asarray(L, dtype=np.float64).mean(axis=1, keepdims=True)
    index = {n: i for i, n in enumerate(names)}
    labelled = [n for n in names if n in scores]
    if len(labelled) < MIN_LABELLED:
        raise UsageError(
            f"only {len(labelled)} of the scored models have a {target!r} score; "
            f"need at least {MIN_LABELLED}",
            hint="the CSV's `model` column must hold repo ids as in `atlas models list`",
        )
    rows = np.array([index[n] for n in labelled])
    y = np.array([scores[n] for n in labelled], dtype=np.float64)
    lab_groups = [groups[i] for i in rows]
    clip_range = (float(y.min()), float(y.max()))
    common = {"seeds": seeds, "n_splits": n_splits, "alphas": alphas, "clip_range": clip_range}
    ridge = evaluate(Q[rows], y, lab_groups, **common)  # type: ignore[arg-type]
    baseline = evaluate(mean_ll[rows], y, lab_groups, **common)  # type: ignore[arg-type]
    rest = [i for i, n in enumerate(names) if n not in scores]
    pred, alpha = fit_predict(Q[rows], y, Q[rest] if rest else Q[rows[:1]],
                              alphas=alphas, clip_range=clip_range)
    return PredictResult(
        textset=textset,
        target=target,
        labelled=labelled,
        scores=y,
        groups=lab_groups,
        ridge=ridge,
        baseline=baseline,
        predicted={names[i]: float(p) for i, p in zip(rest, pred, strict=False)} if rest else {},
        alpha=alpha,
        unknown=sorted(set(scores) - set(names)),
        clip_range=clip_range,
    )


def predict(
    store: Store,
    textset: str,
    scores_file: Path | str,
    target: str,
    *,
    variant: str = "base",
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = SEEDS,
    n_splits: int = N_SPLITS,
) -> PredictResult:
    """Ridge prediction of `target` from the stored conditional vectors on `textset`."""
    scores = read_scores(scores_file, target)
    if not scores:
        raise UsageError(f"{scores_file} holds no {target!r} scores")
    kind = "unconditional" if store.textset(textset).kind == "plain" else "conditional"
    rows, (L,) = load_clipped(store, textset, [(variant, kind)], models)
    names = [m.repo_id for m in rows]
    groups = [m.model_type or m.repo_id for m in rows]
    return predict_matrices(L, names, groups, scores, textset=textset, target=target,
                            seeds=seeds, n_splits=n_splits)


def plot(result: PredictResult, path: Path | str) -> Path:
    """Out-of-fold predictions against the true scores (group k-fold, else random k-fold)."""

    scheme = "group" if "group" in result.ridge else "random"
    ev = result.ridge.get(scheme)
    pred = ev.predictions if ev is not None and ev.predictions is not None else result.scores
    base = result.baseline.get(scheme)
    note = (
        f"{scheme} k-fold: Pearson {ev.pearson:.3f}, Spearman {ev.spearman:.3f}"
        if ev is not None else "no evaluation"
    )
    if base is not None:
        note += f"\nmean log-likelihood baseline: Pearson {base.pearson:.3f}"
    return plots.scatter(
        path, result.scores, pred,
        xlabel=f"{result.target} (true)", ylabel=f"{result.target} (out-of-fold prediction)",
        title=f"Ridge on double-centred vectors, {len(result.labelled)} models",
        labels=result.labelled, diagonal=True, fit=False, note=note,
    )
