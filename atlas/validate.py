"""KL validation (Section 6): Monte Carlo KL from sampled responses vs the vector estimate.

Each model answers every prompt (temperature 1.0, top-p 0.95, top-k 50, seeded); every model
scores every response as a conditional log-likelihood; `KL(p_i || p_j)` is estimated as the mean
over prompts of `log p_i(y | x) − log p_j(y | x)` for `y ~ p_i(· | x)`. Symmetrised, it is
compared with `||ξ_i − ξ_j||² / (2N)` from the stored centred conditional vectors. Also home of
the small statistics helpers (correlations, bootstrap) that every analysis shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.errors import NotFound

if TYPE_CHECKING:
    from atlas.store import Store
    from atlas.tables import HubModel


# --- statistics shared by the analyses --------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation; NaN when fewer than two finite pairs or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom <= 1e-300:
        return math.nan
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN as for `pearson`."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return math.nan
    return pearson(_ranks(a[keep]), _ranks(b[keep]))


def correlations(x: Any, y: Any) -> tuple[float, float]:
    """(Pearson, Spearman) of two equally long sequences."""
    return pearson(x, y), spearman(x, y)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `statistic(indices)` over `n_boot` resamples of range(n)."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- Monte Carlo KL ---------------------------------------------------------------------------
def mc_kl_terms(logp: np.ndarray) -> np.ndarray:
    """Per-prompt KL terms `T[i, j, s] = log p_i(y | x_s) − log p_j(y | x_s)`, y from model i.

    `logp[i, j, s]` (or `[i, j, s, k]` for k samples per prompt) is model j's conditional
    log-likelihood of model i's response to prompt s; samples are averaged per prompt.
    """
    values = np.asarray(logp, dtype=np.float64)
    if values.ndim == 4:
        values = values.mean(axis=3)
    if values.ndim != 3 or values.shape[0] != values.shape[1]:
        raise ValueError("logp must be models x models x prompts [x samples]")
    own = values[np.arange(values.shape[0]), np.arange(values.shape[0])]  # i x s
    return own[:, None, :] - values


def mc_kl(logp: np.ndarray, prompts: np.ndarray | None = None) -> np.ndarray:
    """Monte Carlo `KL(p_i || p_j)` for every ordered pair (nats per response)."""
    terms = mc_kl_terms(logp)
    if prompts is not None:
        terms = terms[:, :, prompts]
    return terms.mean(axis=2)


def symmetrise(kl: np.ndarray) -> np.ndarray:
    """`(KL(p_i||p_j) + KL(p_j||p_i)) / 2`, the quantity the vector estimate approximates."""
    values = np.asarray(kl, dtype=np.float64)
    return (values + values.T) / 2.0


def upper_pairs(matrix: np.ndarray) -> np.ndarray:
    """The strictly upper-triangular entries (one per unordered pair), row by row."""
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    return np.asarray(matrix)[rows, cols]


def vector_kl(cond: np.ndarray) -> np.ndarray:
    """The vector estimate `||ξ_i − ξ_j||² / (2N)` from clipped conditional vectors."""
    from atlas import vectors

    return vectors.kl_matrix(vectors.center(cond))


@dataclass
class Comparison:
    """Monte Carlo vs vector KL over the unordered pairs, with bootstrap intervals."""

    mc: np.ndarray
    vector: np.ndarray
    pearson: float
    spearman: float
    pearson_ci: tuple[float, float]
    spearman_ci: tuple[float, float]


def compare(
    logp: np.ndarray, vector: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> Comparison:
    """Correlate symmetrised MC KL with the vector estimate; bootstrap over prompts."""
    terms = mc_kl_terms(logp)
    n_prompts = terms.shape[2]
    vec_pairs = upper_pairs(vector)

    def pairs(idx: np.ndarray | None) -> np.ndarray:
        mean = terms.mean(axis=2) if idx is None else terms[:, :, idx].mean(axis=2)
        return upper_pairs(symmetrise(mean))

    mc_pairs = pairs(None)
    pearson_ci = bootstrap_ci(
        lambda idx: pearson(pairs(idx), vec_pairs), n_prompts, n_boot=n_boot, seed=seed
    )
    spearman_ci = bootstrap_ci(
        lambda idx: spearman(pairs(idx), vec_pairs), n_prompts, n_boot=n_boot, seed=seed
    )
    return Comparison(
        mc=symmetrise(terms.mean(axis=2)),
        vector=np.asarray(vector, dtype=np.float64),
        pearson=pearson(mc_pairs, vec_pairs),
        spearman=spearman(mc_pairs, vec_pairs),
        pearson_ci=pearson_ci,
        spearman_ci=spearman_ci,
    )


# --- loading clipped matrices for the analyses ------------------------------------------------
def load_clipped(
    store: Store,
    textset: str,
    keys: Sequence[tuple[str, str]],
    models: Sequence[str] | None = None,
) -> tuple[list[HubModel], list[np.ndarray]]:
    """Aligned clipped matrices, one per (variant, kind), for the models that have every key.

    Each matrix is clipped at the 2% quantile of all stored models' values for its key (the
    atlas's threshold), then restricted to `models` (repo ids, in that order) when given.
    """
    from atlas import matrices, vectors

    loaded = [matrices.load(store, textset, variant, kind) for variant, kind in keys]
    by_id = [{m.id: i for i, m in enumerate(mat.models)} for mat in loaded]
    if models:
        wanted = []
        for name in models:
            row = store.model(name)
            if row is None:
                raise NotFound(f"no model {name!r} in the store", hint="see `atlas models list`")
            missing = [f"{v}/{k}" for (v, k), ids in zip(keys, by_id, strict=True)
                       if row.id not in ids]
            if missing:
                raise NotFound(
                    f"{name} has no {', '.join(missing)} vectors on text set {textset!r}",
                    hint="score it first with `atlas score`",
                )
            wanted.append(row.id)
    else:
        wanted = [m.id for m in loaded[0].models if all(m.id in ids for ids in by_id)]
    first = {m.id: m for m in loaded[0].models}
    out = []
    for mat, ids in zip(loaded, by_id, strict=True):
        if not wanted:
            out.append(np.zeros((0, mat.values.shape[1])))
            continue
        clipped = vectors.clip(mat.values, vectors.clip_threshold(mat.values))
        out.append(clipped[[ids[m] for m in wanted]])
    return [first[m] for m in wanted], out
