"""Helpers for tests: synthetic text sets and log-likelihood vectors put in a real store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from atlas.store import Store
from atlas.store.tables import HubModel, TextSet, Vector
from atlas.textsets import Item, import_items


def make_textset(store: Store, n: int, name: str = "synth") -> TextSet:
    """A pairs text set of `n` items."""
    items = [Item(prompt=f"prompt {i}", response=f"response {i}") for i in range(n)]
    return import_items(store, name, items).textset


def put_vector(
    store: Store,
    textset: TextSet,
    repo_id: str,
    values: np.ndarray,
    *,
    variant: str = "base",
    kind: str = "conditional",
    revision: str = "r1",
    tokens: np.ndarray | None = None,
    **meta: Any,
) -> HubModel:
    """Store one model's vector piece (creating the model row, status scored)."""
    model = store.model(repo_id)
    if model is None or meta or model.revision != revision:
        model = store.upsert_model(repo_id, revision=revision, status="scored", **meta)
    piece = Vector(
        model_id=model.id,  # type: ignore[arg-type]
        revision=revision,
        textset_id=textset.id,  # type: ignore[arg-type]
        textset_sha256=textset.sha256,
        variant=variant,
        kind=kind,
        n=len(values),
        values=np.asarray(values, dtype="<f4").tobytes(),
        token_counts=None if tokens is None else np.asarray(tokens, dtype="<i4").tobytes(),
        dtype="float32",
        device="cpu",
        scorer_version="test",
    )
    store.put_vectors([piece])
    return model


def put_matrix(
    store: Store,
    textset: TextSet,
    names: Sequence[str],
    matrix: np.ndarray,
    **kwargs: Any,
) -> list[HubModel]:
    """Store one vector per row of `matrix`, for models `names`."""
    pairs = zip(names, matrix, strict=True)
    return [put_vector(store, textset, n, row, **kwargs) for n, row in pairs]


def clustered(
    n_models: int, n: int, *, clusters: int = 4, spread: float = 0.3, seed: int = 0
) -> np.ndarray:
    """Log-likelihood-like rows (negative, per-model offsets) grouped in clusters."""
    rng = np.random.default_rng(seed)
    base = -rng.gamma(4.0, 10.0, size=n)
    centres = rng.normal(scale=3.0, size=(clusters, n))
    label = np.arange(n_models) % clusters
    rows = base + centres[label] + rng.normal(scale=spread * 3.0, size=(n_models, n))
    rows += rng.normal(scale=5.0, size=(n_models, 1))  # offsets that centering removes
    return rows.astype(np.float32).astype(np.float64)
