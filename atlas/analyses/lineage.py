"""Lineage: does the map recover model genealogy? Nearest neighbours vs recorded base models.

For each fine-tuned model whose recorded base (`HubModel.base_models`, from the Hub's
`base_model:` tags or a card's `base_model`) is also in the atlas, its relatives are that base
and its siblings (other models with the same base). Precision at k is the share of its k
KL-nearest neighbours that are relatives, averaged over those models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.analyses import plots
from atlas.analyses.common import load_clipped, plain
from atlas.space import matrices, vectors
from atlas.space.index import ALL_PAIRS_UP_TO, all_neighbours

if TYPE_CHECKING:
    from atlas.store import Store

KS = (1, 5)


# --- pure math -------------------------------------------------------------------------------
def _key(name: str) -> str:
    return name.strip().lower()


def relatives(
    names: Sequence[str], bases: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, str]]:
    """For each model whose base is among `names`: relative -> "base" or "sibling"."""
    present = {_key(n): n for n in names}
    recorded = {n: {_key(b) for b in bases.get(n, ())} - {_key(n)} for n in names}
    position = {n: i for i, n in enumerate(names)}
    children: dict[str, list[str]] = {}  # recorded base -> the models that record it, in order
    for name in names:
        for b in recorded[name]:
            children.setdefault(b, []).append(name)
    out: dict[str, dict[str, str]] = {}
    for name in names:
        own = recorded[name]
        in_atlas = [present[b] for b in sorted(own) if b in present]
        if not in_atlas:
            continue
        rel = {b: "base" for b in in_atlas}
        # Siblings share a recorded base: found through `children`, not by testing every model.
        shared = {other for b in own for other in children[b]}
        for other in sorted(shared, key=position.__getitem__):
            if other != name and other not in rel:
                rel[other] = "sibling"
        out[name] = rel
    return out


@dataclass
class LineageRow:
    """One fine-tuned model: its relatives and where they rank among its neighbours."""

    model: str
    bases: list[str]
    n_relatives: int
    neighbours: list[str]
    relations: list[str]
    base_rank: int
    first_relative_rank: int
    kl_base: float
    kl_nearest_other: float


@dataclass
class LineageResult:
    """Precision at k of KL-nearest neighbours being a recorded base or a sibling."""

    textset: str
    n_models: int
    rows: list[LineageRow]
    precision: dict[int, float]
    hit: dict[int, float]
    chance: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-model rows."""
        return plain({
            "analysis": "lineage",
            "textset": self.textset,
            "n_models": self.n_models,
            "n_evaluated": len(self.rows),
            "precision": {f"@{k}": v for k, v in self.precision.items()},
            "hit": {f"@{k}": v for k, v in self.hit.items()},
            "chance_at_1": self.chance,
            "models": [vars(r) for r in self.rows],
        })


def evaluate(
    kl: np.ndarray,
    names: Sequence[str],
    bases: Mapping[str, Sequence[str]],
    *,
    ks: Sequence[int] = KS,
    textset: str = "",
) -> LineageResult:
    """Precision and hit rate at each k from a KL matrix (`kl[i, j] = KL(p_i || p_j)`)."""
    kl = np.asarray(kl, dtype=np.float64)
    index = {n: i for i, n in enumerate(names)}
    family = relatives(names, bases)
    rows: list[LineageRow] = []
    top = max(ks, default=1)
    prec: dict[int, list[float]] = {k: [] for k in ks}
    hits: dict[int, list[float]] = {k: [] for k in ks}
    chance: list[float] = []
    for name, rel in family.items():
        i = index[name]
        order = [j for j in np.argsort(kl[i], kind="stable") if j != i]
        ranked = [names[j] for j in order]
        flags = [n in rel for n in ranked]
        for k in ks:
            kk = min(k, len(ranked))
            prec[k].append(sum(flags[:kk]) / kk if kk else np.nan)
            hits[k].append(float(any(flags[:kk])))
        chance.append(len(rel) / max(len(ranked), 1))
        base_ranks = [ranked.index(b) + 1 for b, r in rel.items() if r == "base"]
        others = [kl[i, index[n]] for n in ranked if n not in rel]
        rows.append(LineageRow(
            model=name,
            bases=[b for b, r in rel.items() if r == "base"],
            n_relatives=len(rel),
            neighbours=ranked[:top],
            relations=[rel.get(n, "other") for n in ranked[:top]],
            base_rank=min(base_ranks),
            first_relative_rank=flags.index(True) + 1,
            kl_base=float(min(kl[i, index[b]] for b, r in rel.items() if r == "base")),
            kl_nearest_other=float(min(others)) if others else float("nan"),
        ))

    return _result(textset, names, rows, prec, hits, chance)


def _result(
    textset: str,
    names: Sequence[str],
    rows: list[Any],
    prec: Mapping[int, list[float]],
    hits: Mapping[int, list[float]],
    chance: list[float],
) -> LineageResult:
    """The per-model rows with precision, hit rate and chance averaged over the models."""

    def mean(values: list[float]) -> float:
        return float(np.nanmean(values)) if values else float("nan")

    return LineageResult(
        textset=textset,
        n_models=len(names),
        rows=rows,
        precision={k: mean(v) for k, v in prec.items()},
        hit={k: mean(v) for k, v in hits.items()},
        chance=mean(chance),
    )


def evaluate_knn(
    near: np.ndarray,
    near_kl: np.ndarray,
    kl_pair: Any,
    names: Sequence[str],
    bases: Mapping[str, Sequence[str]],
    *,
    ks: Sequence[int] = KS,
    textset: str = "",
) -> LineageResult:
    """`evaluate` from each model's nearest neighbours instead of a models x models matrix.

    `near[i]` / `near_kl[i]` are model i's nearest others (indices, KL), nearest first;
    `kl_pair(i, j)` gives one KL. A base ranked beyond the listed neighbours gets rank 0
    (unknown) and KL from `kl_pair`; precision at k needs only the first k.
    """
    index = {n: i for i, n in enumerate(names)}
    family = relatives(names, bases)
    top = max(ks, default=1)
    rows: list[LineageRow] = []
    prec: dict[int, list[float]] = {k: [] for k in ks}
    hits: dict[int, list[float]] = {k: [] for k in ks}
    chance: list[float] = []
    others_total = max(len(names) - 1, 1)
    for name, rel in family.items():
        i = index[name]
        ranked = [names[j] for j in near[i]]
        flags = [n in rel for n in ranked]
        for k in ks:
            kk = min(k, len(ranked))
            prec[k].append(sum(flags[:kk]) / kk if kk else np.nan)
            hits[k].append(float(any(flags[:kk])))
        chance.append(len(rel) / others_total)
        base_names = [b for b, r in rel.items() if r == "base"]
        base_ranks = [ranked.index(b) + 1 for b in base_names if b in ranked]
        others = [float(kl) for n, kl in zip(ranked, near_kl[i], strict=True) if n not in rel]
        rows.append(LineageRow(
            model=name, bases=base_names, n_relatives=len(rel), neighbours=ranked[:top],
            relations=[rel.get(n, "other") for n in ranked[:top]],
            base_rank=min(base_ranks) if base_ranks else 0,
            first_relative_rank=flags.index(True) + 1 if any(flags) else 0,
            kl_base=float(min(kl_pair(i, index[b]) for b in base_names)),
            kl_nearest_other=others[0] if others else float("nan"),
        ))  # fmt: skip

    return _result(textset, names, rows, prec, hits, chance)


# --- the store ---------------------------------------------------------------------------------
def analyze(
    store: Store,
    textset: str,
    *,
    variant: str = "base",
    models: Sequence[str] | None = None,
    ks: Sequence[int] = KS,
) -> LineageResult:
    """Lineage precision over the models with vectors on `textset` (or only `models`)."""

    kind = "unconditional" if store.textset(textset).kind == "plain" else "conditional"
    count = len(models) if models else _count(store, textset, variant, kind)
    large = count > ALL_PAIRS_UP_TO
    rows, (L,) = load_clipped(store, textset, [(variant, kind)], models,
                              dtype=np.float32 if large else np.float64)  # fmt: skip
    names = [m.repo_id for m in rows]
    bases = {m.repo_id: list(m.base_models or []) for m in rows}
    if not large:
        kl = vectors.kl_matrix(vectors.center(L)) if rows else np.zeros((0, 0))
        return evaluate(kl, names, bases, ks=ks, textset=textset)
    # At scale: neighbours from a kNN index, never a models x models matrix (float32, in place).
    L -= L.mean(axis=1, dtype=np.float64, keepdims=True).astype(L.dtype)
    n = L.shape[1]
    near, sq = all_neighbours(L, max(max(ks, default=1), DEPTH))

    def kl_pair(i: int, j: int) -> float:
        diff = L[i].astype(np.float64) - L[j].astype(np.float64)
        return float(diff @ diff / (2.0 * n))

    return evaluate_knn(near, sq / (2.0 * n), kl_pair, names, bases, ks=ks, textset=textset)


DEPTH = 50  # at scale: neighbours listed per model (a base ranked further is rank 0, unknown)


def _count(store: Store, textset: str, variant: str, kind: str) -> int:
    return len(matrices.stamps(store, textset, variant, kind))


def plot(result: LineageResult, path: Path | str) -> Path:
    """Per fine-tuned model: KL to its base vs KL to the nearest model outside its family."""

    rows = result.rows
    note = ", ".join(f"P@{k} {v:.2f}" for k, v in result.precision.items())
    if len(rows) > plots.MAX_BARS:  # one bar per model would not fit: compare distributions
        return plots.distributions(
            path,
            {"KL to recorded base": [r.kl_base for r in rows],
             "KL to nearest non-relative": [r.kl_nearest_other for r in rows]},
            xlabel="estimated KL  [nats per text]",
            title=f"Lineage on {result.textset}: {len(rows)} fine-tuned models",
            note=note or None,
        )  # fmt: skip
    return plots.ranked_bars(
        path,
        [r.model for r in rows],
        {
            "KL to recorded base": [r.kl_base for r in rows],
            "KL to nearest non-relative": [r.kl_nearest_other for r in rows],
        },
        xlabel="estimated KL  [nats per text]",
        title=f"Lineage on {result.textset}: {len(rows)} fine-tuned models",
        note=note or None,
    )
