"""Assemble models x texts log-likelihood matrices from the store, per (text set, variant, kind).

Kinds: `conditional` and `unconditional` are stored; `pmi` is conditional[variant] minus
unconditional[base], aligned by model (unconditional vectors do not depend on the prompt variant,
so they are stored once under `base`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlmodel import col, select

from atlas.errors import UsageError
from atlas.space import vectors
from atlas.store import Store
from atlas.store.tables import VARIANTS, HubModel, TextSet, Vector

KINDS = ("conditional", "unconditional", "pmi")


@dataclass
class Matrix:
    """Raw (unclipped) vectors of some models, with the pieces they came from."""

    models: list[HubModel]
    values: np.ndarray  # models x N, float64
    stamps: list[tuple[int, ...]]  # the vector piece ids behind each row
    tokens: np.ndarray  # mean scored tokens per response, per model (nan where unknown)

    @property
    def model_ids(self) -> list[int]:
        return [int(m.id) for m in self.models]  # type: ignore[arg-type]


def check_key(variant: str, kind: str) -> tuple[str, str]:
    """Validate a (variant, kind) pair; unconditional vectors always live under `base`."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return ("base" if kind == "unconditional" else variant), kind


def resolve_textset(store: Store, textset: TextSet | str) -> TextSet:
    """A TextSet row from a row or a name."""
    return textset if isinstance(textset, TextSet) else store.textset(textset)


def _choose(rows: Iterable[tuple[Vector, HubModel]]) -> dict[int, tuple[Vector, HubModel]]:
    """Per model: the piece for its current revision when there is one, else the newest."""
    chosen: dict[int, tuple[Vector, HubModel]] = {}
    for vec, model in rows:
        held = chosen.get(model.id)  # type: ignore[arg-type]
        if held is None or held[0].revision != model.revision:
            chosen[model.id] = (vec, model)  # type: ignore[index]
    return chosen


def _of(ts: TextSet, variant: str, kind: str) -> tuple[Any, ...]:
    """Conditions for pieces of one key that match the text set's content."""
    return (
        Vector.textset_id == ts.id,
        Vector.variant == variant,
        Vector.kind == kind,
        Vector.textset_sha256 == ts.sha256,
        Vector.n == ts.size,
    )


def _stored(
    store: Store, ts: TextSet, variant: str, kind: str, model_ids: Iterable[int] | None
) -> dict[int, tuple[Vector, HubModel]]:
    query = (
        select(Vector, HubModel)
        .join(HubModel, col(HubModel.id) == Vector.model_id)
        .where(*_of(ts, variant, kind))
        .order_by(col(HubModel.id), col(Vector.created_at), col(Vector.id))
    )
    if model_ids is not None:
        query = query.where(col(Vector.model_id).in_(list(model_ids)))
    with store.session() as s:
        return _choose(s.exec(query))


def stamps(store: Store, textset: TextSet | str, variant: str, kind: str) -> dict[int, tuple]:
    """Model id -> the ids of the vector pieces its row would use (no values loaded)."""
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)

    def ids(v: str, k: str) -> dict[int, int]:
        query = (
            select(Vector.id, Vector.revision, HubModel.id, HubModel.revision)
            .join(HubModel, col(HubModel.id) == Vector.model_id)
            .where(*_of(ts, v, k))
            .order_by(col(HubModel.id), col(Vector.created_at), col(Vector.id))
        )
        chosen: dict[int, tuple[int, str]] = {}
        with store.session() as s:
            for vid, vrev, mid, mrev in s.exec(query):
                held = chosen.get(mid)
                if held is None or held[1] != mrev:
                    chosen[mid] = (int(vid), vrev)
        return {m: v for m, (v, _) in chosen.items()}

    if kind != "pmi":
        return {m: (v,) for m, v in ids(variant, kind).items()}
    cond, uncond = ids(variant, "conditional"), ids("base", "unconditional")
    return {m: (cond[m], uncond[m]) for m in cond if m in uncond}


def _mean_tokens(vec: Vector) -> float:
    counts = vec.token_array()
    return float(vectors.mean_tokens(counts)) if counts is not None and counts.size else np.nan


def load(
    store: Store,
    textset: TextSet | str,
    variant: str = "base",
    kind: str = "conditional",
    *,
    model_ids: Iterable[int] | None = None,
) -> Matrix:
    """The raw matrix for (text set, variant, kind), optionally only for some models."""
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)
    ids = None if model_ids is None else list(model_ids)
    if kind == "pmi":
        cond = _stored(store, ts, variant, "conditional", ids)
        uncond = _stored(store, ts, "base", "unconditional", ids)
        keys = [m for m in cond if m in uncond]
        rows = [vectors.pmi(cond[m][0].array(), uncond[m][0].array()) for m in keys]
        stamp = [(int(cond[m][0].id), int(uncond[m][0].id)) for m in keys]  # type: ignore[arg-type]
        models = [cond[m][1] for m in keys]
        tokens = [_mean_tokens(cond[m][0]) for m in keys]
    else:
        chosen = _stored(store, ts, variant, kind, ids)
        rows = [v.array() for v, _ in chosen.values()]
        stamp = [(int(v.id),) for v, _ in chosen.values()]  # type: ignore[arg-type]
        models = [m for _, m in chosen.values()]
        tokens = [_mean_tokens(v) for v, _ in chosen.values()]
    values = np.stack(rows).astype(np.float64) if rows else np.zeros((0, ts.size))
    return Matrix(models, values, stamp, np.asarray(tokens, dtype=np.float64))


def matrix_for(
    store: Store, textset: TextSet | str, variant: str = "base", kind: str = "conditional"
) -> tuple[list[HubModel], np.ndarray]:
    """Models and their raw log-likelihood matrix (models x N, float64) for one key."""
    m = load(store, textset, variant, kind)
    return m.models, m.values
