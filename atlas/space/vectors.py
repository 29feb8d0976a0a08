"""Vector math on log-likelihood matrices: clipping, centering, KL estimates, PMI (pure numpy).

Every function takes and returns numpy arrays, does no I/O, and computes in float64. A matrix
`L` is models x N (one row per model, one column per text).
"""

from __future__ import annotations

import numpy as np

CLIP_QUANTILE = 0.02


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def clip_threshold(L: np.ndarray, q: float = CLIP_QUANTILE) -> float:
    """The q-quantile of the whole matrix (as `np.quantile`): the floor clipping raises to.

    Works on a float32 matrix without a float64 copy; the result equals the float64 quantile.
    """
    values = np.asarray(L)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    if values.size == 0:
        raise ValueError("cannot compute a clipping threshold of an empty matrix")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be in [0, 1]")
    flat = values.reshape(-1)
    position = q * (flat.size - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, [lo, hi]) if flat.size > 1 else flat
    a, b, t = float(part[lo]), float(part[hi]), position - lo
    # numpy's lerp: from the nearer end, for identical rounding.
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


def clip(L: np.ndarray, threshold: float) -> np.ndarray:
    """Raise every value below `threshold` to it (one row or a whole matrix)."""
    return np.maximum(_f64(L), float(threshold))


def center(L: np.ndarray) -> np.ndarray:
    """Row-centred vectors `xi_i = l_i - mean(l_i)`: each model minus its own mean over texts."""
    values = _f64(L)
    return values - values.mean(axis=-1, keepdims=True)


def double_center(L: np.ndarray) -> np.ndarray:
    """Double-centred coordinates `Q = L - rowmean - colmean + grandmean`, for maps."""
    values = _f64(L)
    if values.ndim != 2:
        raise ValueError("double centering needs a models x texts matrix")
    row = values.mean(axis=1, keepdims=True)
    col = values.mean(axis=0, keepdims=True)
    return values - row - col + values.mean()


def prepare(L: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Clip (with `threshold`, or the matrix's own 2% quantile) and row-centre; return both."""
    if threshold is None:
        threshold = clip_threshold(L)
    return center(clip(L, threshold)), float(threshold)


def sq_distances(xi: np.ndarray, Xi: np.ndarray) -> np.ndarray:
    """Squared L2 distances `||xi - Xi_j||^2` from one vector to each row of `Xi`."""
    diff = _f64(Xi) - _f64(xi)[None, :]
    return np.einsum("ij,ij->i", diff, diff)


def kl_to(xi: np.ndarray, Xi: np.ndarray) -> np.ndarray:
    """Estimated `KL(p || p_j)` in nats per text, from centred `xi` to each centred row `Xi_j`."""
    n = _f64(Xi).shape[-1]
    return sq_distances(xi, Xi) / (2.0 * n)


def kl_matrix(Xi: np.ndarray) -> np.ndarray:
    """All pairwise estimates `KL(p_i || p_j) = ||xi_i - xi_j||^2 / (2N)` in nats per text."""
    values = _f64(Xi)
    norms = np.einsum("ij,ij->i", values, values)
    # An explicit copy of the transpose: numpy's bundled OpenBLAS has crashed (SIGSEGV) on
    # `values @ values.T` for ~19,000 x 500 float64 matrices.
    sq = norms[:, None] + norms[None, :] - 2.0 * (values @ values.T.copy())
    np.maximum(sq, 0.0, out=sq)
    np.fill_diagonal(sq, 0.0)
    return sq / (2.0 * values.shape[1])


def mean_tokens(token_counts: np.ndarray) -> float:
    """Mean scored tokens per response (over the texts, or a models x texts matrix)."""
    counts = _f64(token_counts)
    if counts.size == 0:
        raise ValueError("no token counts")
    return float(counts.mean())


def kl_per_token(kl: np.ndarray | float, tokens: np.ndarray | float) -> np.ndarray:
    """KL per response token: KL per text over the mean scored tokens per response.

    `tokens` is that mean (see `mean_tokens`): a scalar, or an array broadcastable to `kl`.
    """
    mean = _f64(tokens)
    if np.any(mean <= 0):
        raise ValueError("mean token count must be positive")
    return _f64(kl) / mean


def pmi(cond: np.ndarray, uncond: np.ndarray) -> np.ndarray:
    """Pointwise mutual information vectors: conditional minus unconditional log-likelihood."""
    c, u = _f64(cond), _f64(uncond)
    if c.shape != u.shape:
        raise ValueError(f"shape mismatch: conditional {c.shape} vs unconditional {u.shape}")
    return c - u


def weigh(L: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """Each row's deviations from its weighted mean scaled per text; the mean kept.

    A row `l` becomes `m + u * (l - m)` with `m = sum(u l) / sum(u)`, so centring it leaves
    exactly `u * (l - m)`: squared distances become weighted squared distances. `u` is the
    item weight times sqrt(K' / N) (`atlas.space.matrices.weights_of`), so
    `||xi_i - xi_j||^2 / (2 K')` estimates the source set's KL per text. No weights: the matrix
    is returned unchanged.
    """
    if scale is None:
        return L
    u = np.asarray(scale, dtype=np.float64)
    values = np.asarray(L, dtype=np.float64)
    mean = values @ u / u.sum()
    if values.ndim == 2:
        mean = mean[:, None]
    return mean + u * (values - mean)
