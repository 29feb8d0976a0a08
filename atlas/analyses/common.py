"""What every analysis shares: statistics (correlations, bootstrap), JSON-ready values, and
clipped, aligned matrices loaded from the store."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.errors import NotFound
from atlas.space import matrices, vectors
from atlas.store import queries

if TYPE_CHECKING:
    from atlas.store import Store
    from atlas.store.tables import HubModel

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



# --- loading clipped matrices for the analyses ------------------------------------------------
def pick_textset(store: Store, name: str | None = None) -> str:
    """`name` when given (it must exist), else the store's default text set."""
    if name:
        return store.textset(name).name
    return queries.default_textset(store, "base", "conditional").name


def load_clipped(
    store: Store,
    textset: str,
    keys: Sequence[tuple[str, str]],
    models: Sequence[str] | None = None,
    *,
    dtype: Any = np.float64,
) -> tuple[list[HubModel], list[np.ndarray]]:
    """Aligned clipped matrices, one per (variant, kind), for the models that have every key.

    Each matrix is clipped at the 2% quantile of all stored models' values for its key (the
    atlas's threshold), then restricted to `models` (repo ids, in that order) when given.
    With `dtype=np.float32` the matrices are clipped in place (half the memory of float64).
    """
    loaded = [matrices.load(store, textset, variant, kind, dtype=dtype, with_tokens=False)
              for variant, kind in keys]  # fmt: skip
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
        threshold = matrices.threshold_of(mat)
        if mat.values.dtype == np.float32:
            np.maximum(mat.values, np.float32(threshold), out=mat.values)
            picked = [ids[m] for m in wanted]
            same = picked == list(range(len(mat.values)))
            out.append(mat.values if same else mat.values[picked])
            continue
        clipped = vectors.clip(mat.values, threshold)
        out.append(clipped[[ids[m] for m in wanted]])
    return [first[m] for m in wanted], out
