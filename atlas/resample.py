"""Fewer texts for the same map: resampled text sets with importance weights (Oyama et al. 2025a).

K texts are drawn *with replacement* from a scored text set, uniformly or with probability
proportional to their variance across the stored models (`pi_s ∝ sum_i Q_is^2`, Q the clipped,
double-centred matrix). A text drawn m times is stored once with weight `sqrt(m / (K pi_s))`, so
that `sum_s w_s^2 d_s^2` is the paper's unbiased estimate of a squared distance over the whole
set. Downstream, `atlas.space.matrices.prepare` clips each model's values at the source set's 2%
threshold (recorded per variant and kind when the set is drawn; the paper clips the full
matrix, then samples) and `atlas.space.vectors.weigh` scales its centred values by the weights
(times sqrt(K'/N), so KL stays in nats per text of the source); `atlas.space.matrices.load`
applies both and nothing downstream clips again, so every index, map and analysis of a weighted
set uses the weighted squared distance. The vectors of models already scored on the source set
are sliced into the new set, not scored again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atlas.errors import TextSetError, UsageError
from atlas.space import matrices, vectors
from atlas.store import Store, queries
from atlas.store.tables import VARIANTS, TextItem, TextSet

METHODS = ("uniform", "variance")


# --- pure math ------------------------------------------------------------------------------
def probabilities(L: np.ndarray | None, n: int, method: str) -> np.ndarray:
    """Sampling probabilities over n texts: uniform, or ∝ column sums of squared Q (clipped L)."""
    if method == "uniform":
        return np.full(n, 1.0 / n)
    if method != "variance":
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if L is None or len(L) < 2:
        raise UsageError("variance sampling needs the vectors of at least 2 scored models")
    Q = vectors.double_center(vectors.clip(L, vectors.clip_threshold(L)))
    var = np.einsum("ij,ij->j", Q, Q)
    total = var.sum()
    if not np.isfinite(total) or total <= 0:
        raise UsageError("the stored models do not vary over the texts; use --method uniform")
    return var / total


def draw(pi: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct source indices, ascending; their weights sqrt(m / (k pi))) of k draws."""
    if k < 1:
        raise UsageError("--n must be at least 1")
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(pi), size=k, replace=True, p=pi)
    index, counts = np.unique(drawn, return_counts=True)
    return index, np.sqrt(counts / (k * pi[index]))


def digest(kind: str, items: Sequence[TextItem], weights: np.ndarray) -> str:
    """sha256 of a weighted text set: the items in order and their weights."""
    rows = [[it.prompt, it.response] if kind == "pairs" else it.text for it in items]
    payload = json.dumps(
        {"format": "atlas-textset/1", "kind": kind, "items": rows,
         "weights": [float(w) for w in weights]},
        ensure_ascii=False, separators=(",", ":"),
    )  # fmt: skip
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --- the store ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resampled:
    """A resampled text set: `created` is False when it was already stored; sliced vectors."""

    textset: TextSet
    created: bool
    draws: int
    sliced: int


def _source_matrix(store: Store, source: TextSet) -> np.ndarray | None:
    key = ("base", "unconditional") if source.kind == "plain" else ("base", "conditional")
    m = matrices.load(store, source, *key, weighted=False)
    return m.values if len(m.models) else None


def source_thresholds(store: Store, source: TextSet) -> dict[str, float]:
    """The source's 2% clip threshold of every (variant, kind) it has vectors of, by
    "variant/kind": the new set's vectors are clipped there before they are weighted."""
    keys = [(v, k) for k in ("conditional", "pmi") for v in VARIANTS]
    out: dict[str, float] = {}
    for variant, kind in [*keys, ("base", "unconditional")]:
        m = matrices.load(store, source, variant, kind, weighted=False, dtype=np.float32,
                          with_tokens=False)  # fmt: skip
        if len(m.models):
            out[f"{variant}/{kind}"] = vectors.clip_threshold(m.values)
    return out


def resample(
    store: Store,
    source: str,
    *,
    n: int,
    name: str,
    method: str = "variance",
    seed: int = 0,
) -> Resampled:
    """Store K = n draws of `source`'s items as text set `name`, with weights; slice vectors."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if n < 1:
        raise UsageError("--n must be at least 1")
    if not name or len(name) > 128:
        raise UsageError("a text set name must be 1-128 characters")
    parent = store.textset(source)
    if parent.parent_id is not None:
        raise UsageError(f"{source!r} is itself resampled; resample its source instead")
    L = _source_matrix(store, parent) if method == "variance" else None
    pi = probabilities(L, parent.size, method)
    index, weights = draw(pi, n, seed)
    rows = queries.textset_items(store, parent)
    if len(rows) != parent.size:
        raise TextSetError(f"text set {source!r} is incomplete ({len(rows)}/{parent.size})")
    picked = [rows[int(i)] for i in index]
    sha = digest(parent.kind, picked, weights)
    row = TextSet(
        name=name, kind=parent.kind, sha256=sha, size=len(picked), parent_id=parent.id,
        source=f"resample:{parent.name}@{parent.sha256[:12]} {method} n={n} seed={seed}",
        clip_thresholds=source_thresholds(store, parent) or None,
    )  # fmt: skip
    fields = (
        {"prompt": it.prompt, "response": it.response, "text": it.text, "weight": float(w),
         "source_idx": int(i)}
        for it, i, w in zip(picked, index, weights, strict=True)
    )  # fmt: skip
    textset, created = queries.insert_textset(store, row, fields)
    if not created and textset.sha256 != sha:
        raise TextSetError(
            f"text set {name!r} already exists with different content "
            f"(stored {textset.sha256[:12]}, resampled {sha[:12]}); choose another `name`"
        )
    sliced = queries.slice_vectors(store, textset)
    return Resampled(textset, created, n, sliced)


slice_vectors = queries.slice_vectors
