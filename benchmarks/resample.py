"""How well a resampled text set keeps the KL matrix (Oyama et al. 2025a): uniform vs variance.

For K = N/2 and N/4 draws (with replacement, weights 1/sqrt(K pi), repeats merged as
`atlas textset resample` does), the KL matrix of the weighted subset, computed as atlas
computes it (`atlas.space.matrices.prepare`: clip at the full set's 2nd-percentile threshold,
then `atlas.space.vectors.weigh`, centre, KL; nothing clips again), is compared with the full
set's: Pearson correlation of the off-diagonal entries and relative error
||KL_K - KL_N||_F / ||KL_N||_F, mean over seeds. Uniform sampling with K = N draws is the
paper's yardstick ("variance sampling with half the texts is about as accurate as uniform
sampling with all of them"). The "before" columns are the pipeline atlas had until the clip
moved ahead of the weights (weigh, then clip at the weighted matrix's own 2nd percentile).

The synthetic atlas: model families with a shared low-rank signature, members varying around
it, per-model offsets, and texts whose spread across models is heavy-tailed (as real
log-likelihoods are: a few texts separate models much more than most). With `--db URL
--textset NAME` it also runs on the stored vectors of a real text set.

    python benchmarks/resample.py            # about a minute
    python benchmarks/resample.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas.resample import draw, probabilities
from atlas.space import vectors
from atlas.space.vectors import weigh


def synthetic_atlas(models: int, n: int, seed: int = 0) -> np.ndarray:
    """models x n log-likelihood-like matrix with families and heavy-tailed text spreads."""
    rng = np.random.default_rng(seed)
    families = max(2, models // 10)
    spread = rng.lognormal(0.0, 1.0, size=n)  # per-text scale of model differences
    base = -rng.gamma(4.0, 25.0, size=n)
    signature = rng.normal(size=(families, 16)) @ rng.normal(size=(16, n)) / 4
    label = rng.integers(0, families, size=models)
    member = rng.normal(size=(models, 8)) @ rng.normal(size=(8, n)) / 6
    noise = rng.normal(scale=0.3, size=(models, n))
    L = base + spread * (signature[label] + member + noise)
    return L + rng.normal(scale=20.0, size=(models, 1))


def kl_of(L: np.ndarray, scale: np.ndarray | None = None, threshold: float | None = None):
    """atlas's KL matrix: clip at `threshold` (the full set's; default: L's own 2nd
    percentile), weigh, centre."""
    if threshold is None:
        threshold = vectors.clip_threshold(L)
    return vectors.kl_matrix(vectors.center(weigh(vectors.clip(L, threshold), scale)))


def kl_before(L: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The earlier pipeline: weigh, then clip at the weighted matrix's 2nd percentile."""
    W = weigh(L, scale)
    return vectors.kl_matrix(vectors.center(vectors.clip(W, vectors.clip_threshold(W))))


def compare(L: np.ndarray, seeds: int, label: str) -> list[dict[str, Any]]:
    n = L.shape[1]
    full = kl_of(L)
    threshold = vectors.clip_threshold(L)
    upper = np.triu_indices(len(L), 1)
    rows = []
    for method in ("uniform", "variance"):
        pi = probabilities(L, n, method)
        for k in (n, n // 2, n // 4):
            if method == "variance" and k == n:
                continue
            corr, rel, distinct, rel_old, corr_old = [], [], [], [], []
            for seed in range(seeds):
                index, w = draw(pi, k, seed)
                scale = w * np.sqrt(len(index) / n)
                sub = kl_of(L[:, index], scale, threshold)
                corr.append(np.corrcoef(sub[upper], full[upper])[0, 1])
                rel.append(np.linalg.norm(sub - full) / np.linalg.norm(full))
                old = kl_before(L[:, index], scale)
                corr_old.append(np.corrcoef(old[upper], full[upper])[0, 1])
                rel_old.append(np.linalg.norm(old - full) / np.linalg.norm(full))
                distinct.append(len(index))
            rows.append({"set": label, "method": method, "K": k, "K_over_N": k / n,
                         "distinct_texts": float(np.mean(distinct)),
                         "correlation": float(np.mean(corr)),
                         "relative_error": float(np.mean(rel)),
                         "relative_error_sd": float(np.std(rel)),
                         "correlation_before": float(np.mean(corr_old)),
                         "relative_error_before": float(np.mean(rel_old))})  # fmt: skip
    print(f"\n{label}: {L.shape[0]} models x {n} texts, {seeds} seeds per row")
    print(f"  {'':<26} {'atlas (clip at source, weigh)':>28} {'before (weigh, then clip)':>26}")
    print(f"  {'method':<9} {'K':>7} {'distinct':>9} {'corr':>12} {'rel. error':>14} "
          f"{'corr':>12} {'rel. error':>12}")
    for r in rows:
        print(f"  {r['method']:<9} {r['K']:>7} {r['distinct_texts']:>9.0f} "
              f"{r['correlation']:>12.4f} {r['relative_error']:>14.4f} "
              f"{r['correlation_before']:>12.4f} {r['relative_error_before']:>12.4f}")
    return rows


def stored(url: str, textset: str) -> np.ndarray:
    from atlas.space import matrices
    from atlas.store import Store

    store = Store(url)
    try:
        return matrices.load(store, textset, weighted=False).values
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--db", default=None, help="a store with real vectors (SQLAlchemy URL)")
    parser.add_argument("--textset", default=None, help="its text set")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.texts, args.seeds = 60, 400, 3
    results = compare(synthetic_atlas(args.models, args.texts), args.seeds, "synthetic")
    if args.db and args.textset:
        L = stored(args.db, args.textset)
        if len(L) >= 3:
            results += compare(L, args.seeds, f"stored {args.textset}")
        else:
            print(f"\n{args.textset}: fewer than 3 stored models, skipped", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
