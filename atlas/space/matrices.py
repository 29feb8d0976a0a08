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

from atlas.errors import UsageError
from atlas.space import vectors
from atlas.store import Store, queries
from atlas.store.tables import VARIANTS, HubModel, TextSet

KINDS = ("conditional", "unconditional", "pmi")
LOAD_CHUNK = 256  # pieces read per query
SCORED = queries.SCORED


@dataclass
class Matrix:
    """Raw (unclipped) vectors of some models, with the pieces they came from."""

    models: list[HubModel]
    values: np.ndarray  # models x N, float64 (or the dtype `load` was asked for)
    stamps: list[tuple[int, ...]]  # the vector piece ids behind each row
    tokens: np.ndarray  # mean scored tokens per response, per model (nan where unknown)
    # A resampled set's rows: clipped at its source's threshold, then weighted (`prepare`);
    # nothing downstream clips them again.
    prepared: bool = False

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


def _stored_keys(variant: str, kind: str) -> list[tuple[str, str]]:
    return [(variant, "conditional"), ("base", "unconditional")] if kind == "pmi" else [
        (variant, kind)]  # fmt: skip


def key_mark(store: Store, textset: TextSet | str, variant: str, kind: str) -> list[int]:
    """A cheap high-water mark of one key: (count, largest id) of its stored pieces (for pmi,
    of both kinds); it changes whenever a piece of the key is added, replaced or removed."""
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)
    return [x for v, k in _stored_keys(variant, kind) for x in queries.piece_mark(store, ts, v, k)]


def stamps(store: Store, textset: TextSet | str, variant: str, kind: str) -> dict[int, tuple]:
    """Model id -> the ids of the vector pieces its row would use (no values loaded)."""
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)

    if kind != "pmi":
        return {m: (v,) for m, v in queries.chosen_piece_ids(store, ts, variant, kind).items()}
    cond = queries.chosen_piece_ids(store, ts, variant, "conditional")
    uncond = queries.chosen_piece_ids(store, ts, "base", "unconditional")
    return {m: (cond[m], uncond[m]) for m in cond if m in uncond}


def _fill(
    store: Store,
    piece_ids: list[int],
    out: np.ndarray,
    *,
    subtract: bool = False,
    with_tokens: bool = True,
) -> list[float]:
    """Read pieces into the rows of `out` in chunks (a few MB at a time); mean tokens per row
    (NaN throughout without `with_tokens`, which then reads no token counts)."""
    n = out.shape[1]
    tokens: list[float] = []
    for start in range(0, len(piece_ids), LOAD_CHUNK):
        chunk = piece_ids[start : start + LOAD_CHUNK]
        found = queries.piece_values(store, chunk, with_tokens=with_tokens)
        for row, pid in enumerate(chunk, start=start):
            values, counts = found[pid]
            piece = np.frombuffer(values, dtype="<f4", count=n)
            if subtract:
                out[row] -= piece
            else:
                out[row] = piece
            if counts is None:
                tokens.append(np.nan)
            else:
                c = np.frombuffer(counts, dtype="<i4", count=n)
                tokens.append(float(vectors.mean_tokens(c)) if c.size else np.nan)
    return tokens


def _models(store: Store, ids: list[int]) -> list[HubModel]:
    rows: dict[int, HubModel] = {}
    for start in range(0, len(ids), LOAD_CHUNK * 8):
        rows.update(queries.models_by_id(store, ids[start : start + LOAD_CHUNK * 8]))
    return [rows[i] for i in ids]


def load(
    store: Store,
    textset: TextSet | str,
    variant: str = "base",
    kind: str = "conditional",
    *,
    model_ids: Iterable[int] | None = None,
    weighted: bool = True,
    dtype: Any = np.float64,
    with_tokens: bool = True,
) -> Matrix:
    """The raw matrix for (text set, variant, kind), optionally only for some models.

    Rows stream from the store in chunks into one array of `dtype` (float32 halves the memory
    of large matrices; the stored values are float32, so nothing is lost for stored kinds).
    `with_tokens=False` skips the token counts (as large as the values) when not needed.
    A resampled (weighted) text set's rows come weighted (`atlas.space.vectors.weigh`), so every
    distance computed downstream is the weighted one; `weighted=False` gives the stored values.
    """
    ts = resolve_textset(store, textset)
    variant, kind = check_key(variant, kind)
    ids = None if model_ids is None else [int(i) for i in model_ids]
    if kind == "pmi":
        cond = queries.chosen_piece_ids(store, ts, variant, "conditional", ids)
        uncond = queries.chosen_piece_ids(store, ts, "base", "unconditional", ids)
        keys = [m for m in cond if m in uncond]
        stamp = [(cond[m], uncond[m]) for m in keys]
    else:
        chosen = queries.chosen_piece_ids(store, ts, variant, kind, ids)
        keys = list(chosen)
        stamp = [(chosen[m],) for m in keys]
    values = np.empty((len(keys), ts.size), dtype=dtype)
    tokens = _fill(store, [s[0] for s in stamp], values, with_tokens=with_tokens)
    if kind == "pmi":  # conditional minus unconditional, in `dtype`
        _fill(store, [s[1] for s in stamp], values, subtract=True, with_tokens=False)
    prepared = False
    if weighted and keys:
        values, prepared = prepare(store, ts, values, variant, kind)
        values = values.astype(dtype, copy=False)
    return Matrix(
        _models(store, keys), values, stamp, np.asarray(tokens, dtype=np.float64), prepared
    )


def prepare(
    store: Store, textset: TextSet, values: np.ndarray, variant: str, kind: str
) -> tuple[np.ndarray, bool]:
    """A resampled set's raw rows clipped at its source's threshold, then weighted.

    Returns (rows, True); other sets' rows come back unchanged with False (they are clipped
    downstream, at the 2% quantile of the matrix in use).
    """
    scale = weights_of(store, textset)
    if scale is None:
        return values, False
    threshold = source_threshold(store, textset, variant, kind)
    if threshold is None:  # the source has no vectors of this key: the rows' own 2% quantile
        threshold = vectors.clip_threshold(values)
    return vectors.weigh(vectors.clip(values, threshold), scale), True


def source_threshold(store: Store, textset: TextSet, variant: str, kind: str) -> float | None:
    """The 2% clip threshold of a resampled set's source for (variant, kind).

    Recorded when the set was drawn (`atlas.resample`); for a key scored only later, the
    source's stored vectors of that key now; None when the source has none.
    """
    recorded = (textset.clip_thresholds or {}).get(f"{variant}/{kind}")
    if recorded is not None:
        return float(recorded)
    if textset.parent_id is None:
        return None
    parent = queries.textset_by_id(store, textset.parent_id)
    source = load(store, parent, variant, kind, weighted=False, dtype=np.float32,
                  with_tokens=False)  # fmt: skip
    return vectors.clip_threshold(source.values) if len(source.models) else None


def threshold_of(matrix: Matrix) -> float:
    """The clip threshold to apply to a loaded matrix: its own 2% quantile, or -inf (no more
    clipping) for a resampled set's rows, which `prepare` clipped at the source's."""
    return float("-inf") if matrix.prepared else vectors.clip_threshold(matrix.values)


def weights_of(store: Store, textset: TextSet) -> np.ndarray | None:
    """Per-item scales `w * sqrt(K' / N)` of a resampled set (K' items of N), or None."""
    if textset.parent_id is None:
        return None
    rows, n = queries.item_weights(store, textset)
    if not rows or all(w is None for w in rows):
        return None
    weights = np.asarray([1.0 if w is None else float(w) for w in rows], dtype=np.float64)
    return weights * np.sqrt(len(rows) / n)
