"""Assemble models x texts log-likelihood matrices from the store, per (text set, variant, kind).

Kinds: `conditional` and `unconditional` are stored; `pmi` is conditional[variant] minus
unconditional[base], aligned by model (unconditional vectors do not depend on the prompt variant,
so they are stored once under `base`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from atlas.errors import UsageError
from atlas.space import vectors
from atlas.store import Store, queries
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


def stamps(store: Store, textset: TextSet | str, variant: str, kind: str) -> dict[int, tuple]:
    """Model id -> the ids of the vector pieces its row would use (no values loaded)."""
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)

    if kind != "pmi":
        return {m: (v,) for m, v in queries.chosen_piece_ids(store, ts, variant, kind).items()}
    cond = queries.chosen_piece_ids(store, ts, variant, "conditional")
    uncond = queries.chosen_piece_ids(store, ts, "base", "unconditional")
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
    weighted: bool = True,
) -> Matrix:
    """The raw matrix for (text set, variant, kind), optionally only for some models.

    A resampled (weighted) text set's rows come weighted (`atlas.resample.weigh`), so every
    distance computed downstream is the weighted one; `weighted=False` gives the stored values.
    """
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)
    ids = None if model_ids is None else list(model_ids)
    if kind == "pmi":
        cond = queries.chosen_pieces(store, ts, variant, "conditional", ids)
        uncond = queries.chosen_pieces(store, ts, "base", "unconditional", ids)
        keys = [m for m in cond if m in uncond]
        rows = [vectors.pmi(cond[m][0].array(), uncond[m][0].array()) for m in keys]
        stamp = [(int(cond[m][0].id), int(uncond[m][0].id)) for m in keys]  # type: ignore[arg-type]
        models = [cond[m][1] for m in keys]
        tokens = [_mean_tokens(cond[m][0]) for m in keys]
    else:
        chosen = queries.chosen_pieces(store, ts, variant, kind, ids)
        rows = [v.array() for v, _ in chosen.values()]
        stamp = [(int(v.id),) for v, _ in chosen.values()]  # type: ignore[arg-type]
        models = [m for _, m in chosen.values()]
        tokens = [_mean_tokens(v) for v, _ in chosen.values()]
    values = np.stack(rows).astype(np.float64) if rows else np.zeros((0, ts.size))
    if weighted and rows:
        from atlas.resample import weigh, weights_of

        values = weigh(values, weights_of(store, ts))
    return Matrix(models, values, stamp, np.asarray(tokens, dtype=np.float64))

