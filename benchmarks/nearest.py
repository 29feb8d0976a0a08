"""Benchmark the KL nearest-neighbour index on synthetic log-likelihood vectors.

Vectors are N = 10,000 long and structured like real ones: families of models share a
low-rank signature (rank 64, decaying strengths), members vary around their family, and every
value carries independent noise and a per-model offset (which centering removes). With the
default noise the top 42 principal components hold ~85% of the variance (the authors report
42 components for 90% on 1,018 real models). Measures, at 1k, 10k and 100k models: build time, query
latency p50/p99 (one query at a time: a stored model's k = 10 neighbours, itself excluded, with
the exact float64 re-scoring that `atlas nearest` does), incremental-add time, index memory and
process RSS, and recall@10 of the compressed (pca) mode against exact search.

    python benchmarks/nearest.py            # the full run (a few minutes, ~9 GB RAM at 100k)
    python benchmarks/nearest.py --quick    # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas.space import vectors
from atlas.space.index import PCA_DIMS, RERANK, KLIndex, load_faiss

RANK = 64
K = 10


class Synth:
    """A deterministic generator of clustered log-likelihood-like rows, made in chunks."""

    def __init__(self, n_dims: int, *, families: int, noise: float = 2.2, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n_dims = n_dims
        self.noise = noise
        self.seed = seed
        # Directions with decaying strength: a few dominate, as in real maps.
        strength = (1.0 / np.sqrt(1.0 + np.arange(RANK))).astype(np.float32)
        self.basis = (rng.standard_normal((RANK, n_dims), dtype=np.float32) * strength[:, None])
        self.families = rng.standard_normal((families, RANK), dtype=np.float32) * 3.0
        self.mean = (-rng.gamma(4.0, 12.0, size=n_dims)).astype(np.float32)

    def rows(self, start: int, count: int) -> np.ndarray:
        """Rows start .. start+count (the same rows for the same arguments)."""
        rng = np.random.default_rng([self.seed, start, count])
        family = rng.integers(0, len(self.families), size=count)
        latent = self.families[family] + rng.standard_normal((count, RANK), dtype=np.float32)
        out = latent @ self.basis
        out += self.mean
        out += rng.standard_normal((count, self.n_dims), dtype=np.float32) * self.noise
        out += rng.normal(scale=5.0, size=(count, 1)).astype(np.float32)
        return out

    def matrix(self, n: int, chunk: int = 5000) -> np.ndarray:
        out = np.empty((n, self.n_dims), dtype=np.float32)
        for start in range(0, n, chunk):
            out[start : start + chunk] = self.rows(start, min(chunk, n - start))
        return out


def rss_gb() -> float:
    """Current resident set size of this process, GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def latencies(index: KLIndex, queries: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """Answers and per-query seconds, one query at a time, as `atlas nearest` runs them."""
    answers, times = [], []
    for q in queries:
        started = time.perf_counter()
        hits = index.search(index.vector(int(q)), K, exclude=[int(q)])
        times.append(time.perf_counter() - started)
        answers.append([h[0] for h in hits])
    return answers, np.asarray(times)


def exact_truth(index: KLIndex, queries: np.ndarray) -> list[list[int]]:
    """Exact top-k by float64 distance, from one batched FAISS search plus re-scoring."""
    xq = index.flat.reconstruct_batch(queries.astype(np.int64))
    _, found = index.flat.search(xq, K + 21)
    truth = []
    for q, row, cand in zip(queries, xq, found, strict=True):
        cand = np.asarray([c for c in cand if c >= 0 and c != q], dtype=np.int64)
        diff = index.flat.reconstruct_batch(cand).astype(np.float64) - row.astype(np.float64)
        sq = np.einsum("ij,ij->i", diff, diff)
        truth.append([int(c) for c in cand[np.lexsort((cand, sq))][:K]])
    return truth


def recall(answers: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(a) & set(t)) / K for a, t in zip(answers, truth, strict=True)]))


def ms(t: np.ndarray, q: float) -> float:
    return float(np.percentile(t, q) * 1000)


def run_size(synth: Synth, n: int, args: argparse.Namespace) -> dict:
    """Every measurement at one model count."""
    rng = np.random.default_rng(n)
    row: dict = {"models": n, "dims": synth.n_dims}
    started = time.perf_counter()
    raw = synth.matrix(n)
    row["generate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    threshold = vectors.clip_threshold(raw)
    index = KLIndex.build(np.arange(n), raw, threshold=threshold, mode="exact")
    row["build_exact_s"] = time.perf_counter() - started
    del raw
    gc.collect()
    row["index_exact_gb"] = index.nbytes() / 2**30

    queries = rng.choice(n, size=min(args.queries, n), replace=False)
    slow = n >= 50_000
    exact_queries = queries[: args.exact_queries] if slow else queries
    answers, t = latencies(index, exact_queries)
    row["exact_p50_ms"], row["exact_p99_ms"] = ms(t, 50), ms(t, 99)

    started = time.perf_counter()
    truth = exact_truth(index, queries)
    row["truth_s"] = time.perf_counter() - started
    assert recall(answers, truth[: len(answers)]) == 1.0, "exact search disagrees with truth"

    if n >= args.pca_from:
        started = time.perf_counter()
        pca = index.compressed(args.pca_dims)
        row["build_pca_s"] = time.perf_counter() - started
        row["index_pca_extra_gb"] = (pca.nbytes() - index.nbytes()) / 2**30
        answers, t = latencies(pca, queries)
        row["pca_p50_ms"], row["pca_p99_ms"] = ms(t, 50), ms(t, 99)
        row["pca_recall_at_10"] = recall(answers, truth)
        del pca

    # Incremental add: new models clipped with the stored threshold, one call per model.
    new = synth.rows(n, args.adds)
    started = time.perf_counter()
    for i in range(args.adds):
        index.add([n + i], new[i : i + 1])
    row["add_ms_per_model"] = (time.perf_counter() - started) / args.adds * 1000
    row["rss_gb"] = rss_gb()
    row["peak_rss_gb"] = peak_rss_gb()
    del index
    gc.collect()
    return row


COLUMNS = [
    ("models", "models", "{:,}"),
    ("build_exact_s", "build s", "{:.1f}"),
    ("add_ms_per_model", "add ms/model", "{:.2f}"),
    ("exact_p50_ms", "exact p50 ms", "{:.1f}"),
    ("exact_p99_ms", "exact p99 ms", "{:.1f}"),
    ("build_pca_s", "pca build s", "{:.1f}"),
    ("pca_p50_ms", "pca p50 ms", "{:.1f}"),
    ("pca_p99_ms", "pca p99 ms", "{:.1f}"),
    ("pca_recall_at_10", "pca recall@10", "{:.4f}"),
    ("index_exact_gb", "index GB", "{:.2f}"),
    ("index_pca_extra_gb", "+pca GB", "{:.3f}"),
    ("peak_rss_gb", "peak RSS GB", "{:.1f}"),
]


def table(rows: list[dict]) -> str:
    """A Markdown table of the results."""
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "| " + " | ".join("---:" for _ in COLUMNS) + " |"
    lines = [head, rule]
    for r in rows:
        cells = [fmt.format(r[key]) if key in r else "-" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="model counts, comma-separated (default 1000,10000,100000)")
    parser.add_argument("--dims", type=int, default=None, help="texts per vector (N)")
    parser.add_argument("--queries", type=int, default=200, help="queries per size")
    parser.add_argument("--exact-queries", type=int, default=30,
                        help="exact-mode queries timed at >= 50k models (each scans everything)")
    parser.add_argument("--adds", type=int, default=100, help="models added incrementally")
    parser.add_argument("--pca-dims", type=int, default=PCA_DIMS, help="pca mode dimensions")
    parser.add_argument("--pca-from", type=int, default=10_000, help="measure pca from n models")
    parser.add_argument("--noise", type=float, default=2.2, help="per-value noise (std)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, dims = args.sizes or [500, 3000], args.dims or 1000
        args.queries, args.adds, args.pca_from = 40, 20, 3000
    else:
        sizes, dims = args.sizes or [1_000, 10_000, 100_000], args.dims or 10_000
    faiss = load_faiss()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; N = {dims}; "
          f"k = {K}; pca: {args.pca_dims} dims, {RERANK} candidates re-ranked", file=sys.stderr)
    synth = Synth(dims, families=max(20, max(sizes) // 500), noise=args.noise)
    rows = []
    for n in sizes:
        started = time.perf_counter()
        rows.append(run_size(synth, n, args))
        print(f"{n:,} models done in {time.perf_counter() - started:.0f} s: "
              + json.dumps({k: round(v, 4) for k, v in rows[-1].items()}), file=sys.stderr)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
