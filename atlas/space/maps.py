"""Model maps: 2-D coordinates (PCA, t-SNE) of double-centred vectors, stored as snapshots.

A full refresh clips the raw matrix at its 2% quantile, double-centres it and fits PCA
(scikit-learn) or t-SNE (openTSNE). It also saves what an incremental refresh needs under
`ATLAS_HOME/maps/` (derived data: when it is missing a full refit happens instead). An
incremental refresh places models scored since the full one into the existing embedding, keeps
every stored coordinate as it was, and records the full snapshot as its parent.

From `APPROXIMATE_FROM` models a full fit streams the matrix in float32 and centres it in place:
PCA takes its components from a randomized SVD, and t-SNE runs on the top `REDUCED_DIMS`
principal components with neighbours from FAISS and FFT gradients (how t-SNE is run at this
size); new models are placed in that reduced space. Below it, the fits are the exact ones.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atlas.errors import NotFound, UsageError
from atlas.settings import Settings
from atlas.space import matrices, vectors
from atlas.store import Store, queries
from atlas.store.tables import MapSnapshot, TextSet

METHODS = ("tsne", "pca")
SEED = 42
MIN_TSNE_MODELS = 4  # below this, t-SNE has no meaningful neighbourhoods: PCA instead
MAX_PERPLEXITY = 30.0
MIN_INCREMENTAL_REFERENCE = 4  # smaller full maps are always refitted
TRANSFORM_PERPLEXITY = 5.0  # openTSNE's default for placing new points
TSNE_ITERATIONS = {"early_exaggeration_iter": 250, "n_iter": 750}
APPROXIMATE_FROM = 5000  # models: from here fits run in float32 on reduced dimensions
REDUCED_DIMS = 50  # t-SNE's input dimensions at scale (principal components)
# openTSNE's FFT gradients run on numpy's FFT here (no FFTW): their grid grows with the spread of
# the embedding, and families of near-identical models spread it far, so Barnes-Hut (whose cost
# does not depend on the spread) is faster up to this many models (measured: benchmarks/scale.py).
FFT_FROM = 100_000
Progress = Callable[[str], None]


@dataclass
class MapRefresh:
    """What a refresh did: the snapshot, `full`, `incremental` or `unchanged`, and why."""

    snapshot: MapSnapshot
    mode: str
    added: list[str] = field(default_factory=list)
    note: str | None = None


# --- pure fitting -------------------------------------------------------------------------------


def reference(L: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Double-centred coordinates of clipped `L`, and the column offset that places new rows.

    A new row `l` lands at `center(clip(l, threshold)) - offset`, which for the reference rows
    reproduces `double_center(clip(L, threshold))` exactly.
    """
    clipped = vectors.clip(L, threshold)
    offset = vectors.center(clipped).mean(axis=0)
    return vectors.double_center(clipped), offset


def place_rows(L: np.ndarray, threshold: float, offset: np.ndarray) -> np.ndarray:
    """Rows in an existing reference frame: clip with its threshold, centre, subtract its offset."""
    return vectors.center(vectors.clip(L, threshold)) - offset


def fit_pca(Q: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """PCA to 2-D: coordinates, the state to project new rows, the parameters.

    Equal to scikit-learn's `PCA(2, svd_solver="full")`, signs included; with fewer models
    than texts it diagonalises the models x models Gram matrix, which is much faster.
    """
    n, dims = Q.shape
    components = np.zeros((2, dims))
    mean = Q.mean(axis=0) if n else np.zeros(dims)
    coords = np.zeros((n, 2))
    params: dict[str, Any] = {"n_components": 2, "solver": "exact", "random_state": SEED}
    k = min(2, n, dims)
    if n < 2 or k < 1:
        return coords, {"components": components, "mean": mean}, params
    X = Q - mean
    if n <= dims:
        values, vecs = np.linalg.eigh(X @ X.T)
        top = np.argsort(values)[::-1][:k]
        values = np.maximum(values[top], 0.0)
        keep = values > values[0] * 1e-12
        comps = np.zeros((k, dims))
        comps[keep] = (X.T @ vecs[:, top][:, keep] / np.sqrt(values[keep])).T
        total = float((X * X).sum())
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=k, svd_solver="full", random_state=SEED).fit(Q)
        comps, values = pca.components_.copy(), pca.explained_variance_ * (n - 1)
        total = float((X * X).sum())
    # scikit-learn's sign convention: the largest |loading| of each component is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    components[:k] = comps
    coords[:, :k] = X @ comps.T
    ratio = values / total if total > 0 else np.zeros(k)
    params["explained_variance_ratio"] = [round(float(r), 6) for r in ratio]
    return coords, {"components": components, "mean": mean}, params


def centre_in_place(L: np.ndarray, threshold: float) -> np.ndarray:
    """`reference` for a large float32 matrix without copies: `L` becomes the double-centred
    coordinates; returns the column offset that places new rows (as `reference` does)."""
    np.maximum(L, np.float32(threshold), out=L)
    for start in range(0, len(L), 4096):
        block = L[start : start + 4096]
        block -= block.mean(axis=1, dtype=np.float64, keepdims=True).astype(L.dtype)
    offset = L.mean(axis=0, dtype=np.float64)
    L -= offset.astype(L.dtype)
    return offset


def top_components(
    X: np.ndarray, k: int, *, iterations: int = 4, oversample: int = 10, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, float]:
    """The top `k` principal axes of column-centred `X` by randomized SVD in X's dtype
    (Halko et al.): components (k x dims, float64), their squared singular values, and the
    total sum of squares."""
    n, dims = X.shape
    k = min(k, n, dims)
    width = min(k + oversample, n, dims)
    rng = np.random.default_rng(seed)
    Y = X @ rng.standard_normal((dims, width)).astype(X.dtype)
    for _ in range(iterations):
        Y = X @ (X.T @ _orthonormal(Y))
    basis = _orthonormal(Y)
    B = (basis.T @ X).astype(np.float64)  # width x dims
    _, sing, vt = np.linalg.svd(B, full_matrices=False)
    total = 0.0
    for start in range(0, n, 4096):
        block = X[start : start + 4096].astype(np.float64)
        total += float(np.einsum("ij,ij->", block, block))
    return vt[:k], sing[:k] ** 2, total


def _orthonormal(Y: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(Y.astype(np.float64))
    return q.astype(Y.dtype)


def _sign_fix(comps: np.ndarray) -> np.ndarray:
    """scikit-learn's sign convention: the largest |loading| of each component is positive."""
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return comps * np.where(signs == 0, 1.0, signs)[:, None]


def fit_pca_large(Q: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """`fit_pca` for a large column-centred float32 matrix: randomized SVD, no copies of Q."""
    dims = Q.shape[1]
    comps, values, total = top_components(Q, 2)
    comps = _sign_fix(comps)
    components = np.zeros((2, dims))
    components[: len(comps)] = comps
    coords = (Q @ components.T.astype(Q.dtype)).astype(np.float64)
    params: dict[str, Any] = {"n_components": 2, "solver": "randomized", "random_state": SEED}
    ratio = values / total if total > 0 else np.zeros(len(values))
    params["explained_variance_ratio"] = [round(float(r), 6) for r in ratio]
    return coords, {"components": components, "mean": np.zeros(dims)}, params


def project_pca(Q_new: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
    """New rows projected on stored PCA components."""
    return (Q_new - state["mean"]) @ state["components"].T


def perplexity_for(n: int) -> float:
    """The authors' perplexity (30), capped for small maps at (n - 1) / 3."""
    return float(min(MAX_PERPLEXITY, (n - 1) / 3.0))


def _sq_dist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    sq = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(sq, 0.0)


def knn(data: np.ndarray, query: np.ndarray | None, k: int, block: int = 1024):
    """Exact k nearest rows of `data` (Euclidean) for each query row, or for each data row
    excluding itself when `query` is None; returns (indices, distances), nearest first."""
    data = np.asarray(data, dtype=np.float64)
    own = query is None
    rows = data if own else np.asarray(query, dtype=np.float64)
    k = min(k, len(data) - (1 if own else 0))
    idx = np.zeros((len(rows), k), dtype=np.int64)
    dist = np.zeros((len(rows), k))
    for start in range(0, len(rows), block):
        sq = _sq_dist(rows[start : start + block], data)
        if own:
            sq[np.arange(len(sq)), np.arange(start, start + len(sq))] = np.inf
        part = np.argpartition(sq, k - 1, axis=1)[:, :k] if k < sq.shape[1] else None
        cand = part if part is not None else np.tile(np.arange(sq.shape[1]), (len(sq), 1))
        cand_d = np.take_along_axis(sq, cand, axis=1)
        order = np.lexsort((cand, cand_d), axis=1)
        idx[start : start + len(sq)] = np.take_along_axis(cand, order, axis=1)
        dist[start : start + len(sq)] = np.sqrt(np.take_along_axis(cand_d, order, axis=1))
    return idx, dist


def _knn_index(data: np.ndarray, k: int, graph: tuple[np.ndarray, np.ndarray] | None = None):
    """An openTSNE neighbour index answering exactly (Euclidean, squared by its kernel)."""
    from openTSNE.nearest_neighbors import KNNIndex

    class ExactKNN(KNNIndex):
        VALID_METRICS = ("euclidean",)

        def build(self):
            return graph if graph is not None else knn(self.data, None, self.k)

        def query(self, query, k):
            return knn(self.data, query, k)

    return ExactKNN(data, k, metric="euclidean")


def _affinities(Q: np.ndarray, perplexity: float, graph=None):
    from openTSNE.affinity import PerplexityBasedNN

    k = min(len(Q) - 1, int(3 * perplexity))
    return PerplexityBasedNN(
        perplexity=perplexity, knn_index=_knn_index(Q, k, graph), n_jobs=1, random_state=SEED
    )


def _gradient_method(n: int) -> str:
    return "bh" if n < 10_000 else "fft"


def fit_tsne(Q: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """openTSNE on the double-centred matrix with the authors' settings; coordinates, state,
    parameters. The Gaussian kernel acts on squared Euclidean distances (sklearn's
    `metric='sqeuclidean'`, which the authors used), PCA initialisation, seed 42."""
    import openTSNE

    n = len(Q)
    perplexity = perplexity_for(n)
    affinities = _affinities(Q, perplexity)
    method = _gradient_method(n)
    tsne = openTSNE.TSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        metric="euclidean",
        negative_gradient_method=method,
        random_state=SEED,
        n_jobs=1,
        **TSNE_ITERATIONS,
    )
    embedding = tsne.fit(X=Q, affinities=affinities)
    coords = np.asarray(embedding, dtype=np.float64).copy()
    graph_idx, graph_dist = affinities.knn_index.build()
    params = {
        "perplexity": round(perplexity, 6),
        "k_neighbors": int(graph_idx.shape[1]),
        "initialization": "pca",
        "affinity": "gaussian on squared euclidean distances",
        "neighbors": "exact",
        "learning_rate": "auto",
        "negative_gradient_method": method,
        **TSNE_ITERATIONS,
        "random_state": SEED,
        "opentsne": openTSNE.__version__,
    }
    state = {
        "Q": Q.astype(np.float32),
        "coords": coords,
        "knn_indices": graph_idx,
        "knn_distances": graph_dist,
        "perplexity": np.asarray(perplexity),
    }
    return coords, state, params


def _faiss_knn(data: np.ndarray, query: np.ndarray | None, k: int):
    """Exact Euclidean k nearest rows by FAISS (float32), as `knn` returns them."""
    from atlas.space.index import load_faiss

    faiss = load_faiss()
    base = np.ascontiguousarray(data, dtype=np.float32)
    own = query is None
    rows = base if own else np.ascontiguousarray(query, dtype=np.float32)
    k = min(k, len(base) - (1 if own else 0))
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    sq, idx = index.search(rows, k + 1 if own else k)
    if own:  # drop each row itself (or a duplicate standing in its place)
        keep = idx != np.arange(len(rows))[:, None]
        first = np.argmax(~keep, axis=1)
        keep[np.arange(len(rows)), np.where((~keep).any(axis=1), first, k)] = False
        idx = idx[keep].reshape(len(rows), k)
        sq = sq[keep].reshape(len(rows), k)
    return idx.astype(np.int64), np.sqrt(np.maximum(sq, 0.0)).astype(np.float64)


def _approx_knn_index(data: np.ndarray, k: int, graph=None):
    """An openTSNE neighbour index over reduced data, answered by FAISS."""
    from openTSNE.nearest_neighbors import KNNIndex

    class FaissKNN(KNNIndex):
        VALID_METRICS = ("euclidean",)

        def build(self):
            return graph if graph is not None else _faiss_knn(self.data, None, self.k)

        def query(self, query, k):
            return _faiss_knn(self.data, query, k)

    return FaissKNN(data, k, metric="euclidean")


def reduce(Q: np.ndarray, dims: int = REDUCED_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """The top principal-component scores of column-centred Q (n x dims) and the axes."""
    comps, _, _ = top_components(Q, dims, iterations=2)
    comps = _sign_fix(comps)
    return (Q @ comps.T.astype(Q.dtype)).astype(np.float64), comps


def fit_tsne_approx(Q: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """t-SNE at scale: openTSNE on the top principal components of Q, FAISS neighbours,
    Barnes-Hut gradients (FFT from `FFT_FROM` models); otherwise the settings of `fit_tsne`."""
    import openTSNE
    from openTSNE.affinity import PerplexityBasedNN

    n = len(Q)
    perplexity = perplexity_for(n)
    Z, comps = reduce(Q)
    k = min(n - 1, int(3 * perplexity))
    affinities = PerplexityBasedNN(perplexity=perplexity, knn_index=_approx_knn_index(Z, k),
                                   n_jobs=1, random_state=SEED)  # fmt: skip
    method = "fft" if n >= FFT_FROM else "bh"
    tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, initialization="pca",
                         metric="euclidean", negative_gradient_method=method,
                         random_state=SEED, n_jobs=1, **TSNE_ITERATIONS)  # fmt: skip
    coords = np.asarray(tsne.fit(X=Z, affinities=affinities), dtype=np.float64).copy()
    graph_idx, graph_dist = affinities.knn_index.build()
    params = {
        "perplexity": round(perplexity, 6), "k_neighbors": int(graph_idx.shape[1]),
        "initialization": "pca", "affinity": "gaussian on squared euclidean distances",
        "neighbors": f"faiss, exact on the top {Z.shape[1]} principal components",
        "learning_rate": "auto", "negative_gradient_method": method, **TSNE_ITERATIONS,
        "random_state": SEED, "opentsne": openTSNE.__version__,
    }  # fmt: skip
    state = {"Q": Z.astype(np.float32), "reduce": comps.astype(np.float32), "coords": coords,
             "knn_indices": graph_idx, "knn_distances": graph_dist,
             "perplexity": np.asarray(perplexity)}  # fmt: skip
    return coords, state, params


def transform_tsne(Q_new: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
    """Place new rows into a stored t-SNE embedding without moving its points.

    openTSNE's `transform` re-centres the reference embedding in place before placing the new
    points; the shift it applied is added back so that the new points share the stored frame.
    """
    from openTSNE import TSNEEmbedding

    Q_ref = state["Q"].astype(np.float64)
    stored = np.asarray(state["coords"], dtype=np.float64)
    graph = (state["knn_indices"], state["knn_distances"])
    if "reduce" in state:  # a fit at scale: place in its principal-component space
        from openTSNE.affinity import PerplexityBasedNN

        Q_new = np.asarray(Q_new, dtype=np.float64) @ state["reduce"].T.astype(np.float64)
        affinities = PerplexityBasedNN(
            perplexity=float(state["perplexity"]), n_jobs=1, random_state=SEED,
            knn_index=_approx_knn_index(Q_ref, len(graph[0][0]), graph))  # fmt: skip
    else:
        affinities = _affinities(Q_ref, float(state["perplexity"]), graph)
    embedding = TSNEEmbedding(
        stored.copy(), affinities, negative_gradient_method="bh", random_state=SEED, n_jobs=1
    )
    perplexity = min(TRANSFORM_PERPLEXITY, len(Q_ref) / 3.0)
    placed = embedding.transform(Q_new, perplexity=perplexity, k=min(25, len(Q_ref)))
    shift = stored[0] - np.asarray(embedding)[0]
    return np.asarray(placed, dtype=np.float64) + shift


# --- persisted fit state -----------------------------------------------------------------------


def database_identity(url: str) -> str:
    """The database a URL names, however it is spelt: a SQLite file's resolved absolute path,
    else backend, host, port and database (never the user or password)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ":memory:"
        if database != ":memory:":
            database = str(Path(database).expanduser().resolve())
        return f"sqlite:{database}"
    return f"{backend}://{parsed.host or ''}:{parsed.port or ''}/{parsed.database or ''}"


def _state_dir(settings: Settings, store: Store) -> Path:
    key = hashlib.sha256(database_identity(store.url).encode()).hexdigest()[:16]
    return settings.home / "maps" / key


def _state_path(settings: Settings, store: Store, token: str) -> Path:
    path = _state_dir(settings, store) / f"{token}.npz"
    if not path.exists():  # state saved before maps were keyed by the database's identity
        legacy = hashlib.sha256(store.url.encode()).hexdigest()[:16]
        old = settings.home / "maps" / legacy / f"{token}.npz"
        if old.exists():
            return old
    return path


def _save_state(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _load_state(
    path: Path, token: str, keys: Sequence[str] | None = None
) -> dict[str, np.ndarray] | None:
    """The fit state atlas wrote (never pickled), or None when missing, unreadable or not this
    fit's; only `keys` when given (npz members load lazily)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["token"]) != token:
                return None
            names = data.files if keys is None else [k for k in keys if k in data.files]
            return {name: data[name] for name in names}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


# --- snapshots in the store -------------------------------------------------------------------


def snapshots(store: Store, textset: str | None = None) -> list[MapSnapshot]:
    """Stored map snapshots, newest first."""
    textset_id = None if textset is None else store.textset(textset).id
    return queries.snapshots(store, textset_id)


def get_snapshot(store: Store, snapshot_id: int | None = None) -> MapSnapshot:
    """One snapshot by id, or the newest; NotFound when there is none."""
    found = queries.snapshot(store, snapshot_id)
    if found is None:
        what = "no map snapshot yet" if snapshot_id is None else f"no snapshot #{snapshot_id}"
        raise NotFound(what, hint="make one with `atlas map refresh`; see `atlas map list`")
    return found


snapshot_points = queries.snapshot_points


def default_textset(store: Store, variant: str = "base", kind: str = "conditional") -> TextSet:
    """The store's default text set for (variant, kind) (see `queries.default_textset`)."""
    variant, kind = matrices.check_key(variant, kind)
    return queries.default_textset(store, variant, "conditional" if kind == "pmi" else kind)


def _series_latest(
    store: Store, textset_id: int, variant: str, kind: str, method: str
) -> MapSnapshot | None:
    for snap in queries.series_snapshots(store, textset_id, variant, kind):
        if snap.params.get("requested", snap.method) == method:
            return snap
    return None


def _store_snapshot(
    store: Store, snapshot: MapSnapshot, model_ids: Sequence[int], coords: np.ndarray
) -> MapSnapshot:
    points = ((mid, x, y) for mid, (x, y) in zip(model_ids, coords, strict=True))
    return queries.insert_snapshot(store, snapshot, points)


# --- refresh ------------------------------------------------------------------------------------


def refresh(
    store: Store,
    settings: Settings,
    *,
    method: str = "tsne",
    textset: str | TextSet | None = None,
    variant: str = "base",
    kind: str = "conditional",
    full: bool = False,
    refit_fraction: float | None = None,
    progress: Progress | None = None,
) -> MapRefresh:
    """Refresh one map: place new models incrementally, or refit when asked, when there is no
    usable fit, or when the models grew by `refit_fraction` (setting) since the last full fit."""
    if method not in METHODS:
        raise UsageError(f"unknown map method {method!r}; choose from {', '.join(METHODS)}")
    variant, kind = matrices.check_key(variant, kind)
    ts = (
        default_textset(store, variant, kind)
        if textset is None
        else matrices.resolve_textset(store, textset)
    )
    fraction = settings.map_refit_fraction if refit_fraction is None else refit_fraction
    say = progress or (lambda _m: None)
    current = matrices.stamps(store, ts, variant, kind)  # cheap: no vector is read yet
    if not current:
        raise NotFound(
            f"no {kind} vectors for text set {ts.name!r}, variant {variant!r}",
            hint="score some models first; `atlas status` shows what is stored",
        )
    latest = _series_latest(store, ts.id, variant, kind, method)  # type: ignore[arg-type]
    reason = "asked for a full refit" if full else None
    if latest is not None and reason is None:
        inc = _incremental(store, settings, ts, latest, current, fraction, say)
        if isinstance(inc, MapRefresh):
            return inc
        reason = inc
    large = len(current) >= APPROXIMATE_FROM
    say(f"loading {len(current)} models' vectors")
    matrix = matrices.load(store, ts, variant, kind, dtype=np.float32 if large else np.float64,
                           with_tokens=False)
    return _full(store, settings, ts, method, variant, kind, matrix, latest, reason, say)


def _full(
    store: Store,
    settings: Settings,
    ts: TextSet,
    method: str,
    variant: str,
    kind: str,
    matrix: matrices.Matrix,
    previous: MapSnapshot | None,
    reason: str | None,
    say: Progress,
) -> MapRefresh:
    n = len(matrix.models)
    threshold = matrices.threshold_of(matrix)  # -inf: a resampled set's rows, clipped already
    large = n >= APPROXIMATE_FROM
    if large:  # float32, in place: the matrix becomes Q
        offset = centre_in_place(matrix.values, threshold)
        Q = matrix.values
    else:
        Q, offset = reference(matrix.values, threshold)
    used, note = method, reason
    if method == "tsne" and n < MIN_TSNE_MODELS:
        used = "pca"
        note = f"{n} model{'s' * (n != 1)}: too few for t-SNE, PCA instead"
    say(f"fitting {used} on {n} models x {matrix.values.shape[1]} texts")
    if used == "tsne":
        coords, state, params = fit_tsne_approx(Q) if large else fit_tsne(Q)
    else:
        coords, state, params = fit_pca_large(Q) if large else fit_pca(Q)
    token = uuid.uuid4().hex
    params = {"requested": method, "mode": "full", "state": token, **params}
    if note:
        params["note"] = note
    _save_state(
        _state_path(settings, store, token),
        {
            **state,
            "token": np.asarray(token),
            "method": np.asarray(used),
            "threshold": np.asarray(threshold),
            "offset": offset,
            "model_ids": np.asarray(matrix.model_ids, dtype=np.int64),
            "stamps": np.asarray(matrix.stamps, dtype=np.int64).reshape(n, -1),
        },
    )
    snap = MapSnapshot(
        method=used,
        params=params,
        textset_id=ts.id,  # type: ignore[arg-type]
        variant=variant,
        kind=kind,
        clip_threshold=threshold if np.isfinite(threshold) else None,
    )
    snap = _store_snapshot(store, snap, matrix.model_ids, coords)
    _forget_previous(store, settings, previous)
    return MapRefresh(snap, "full", [m.repo_id for m in matrix.models], note)


def _forget_previous(store: Store, settings: Settings, previous: MapSnapshot | None) -> None:
    """Remove the fit state of the series' previous full map: only the newest is used."""
    if previous is None:
        return
    root = previous if previous.parent_id is None else get_snapshot(store, previous.parent_id)
    token = root.params.get("state")
    if token:
        _state_path(settings, store, str(token)).unlink(missing_ok=True)


def _incremental(
    store: Store,
    settings: Settings,
    ts: TextSet,
    latest: MapSnapshot,
    stamps: dict[int, tuple],
    fraction: float,
    say: Progress,
) -> MapRefresh | str:
    """An incremental refresh, or the reason one is not possible (a full refit follows).

    Decides from the piece ids alone; only the new models' vectors are read.
    """
    root = latest if latest.parent_id is None else get_snapshot(store, latest.parent_id)
    held = queries.point_coords(store, latest.id)  # type: ignore[arg-type]
    token = str(root.params.get("state"))
    path = _state_path(settings, store, token)
    head = _load_state(path, token, ("model_ids", "stamps"))
    if head is None or "stamps" not in head:
        return "the saved fit state is missing"
    now = list(stamps)
    current = {mid: tuple(int(v) for v in st) for mid, st in stamps.items()}
    reference_stamps = dict(
        zip(head["model_ids"].tolist(), map(tuple, head["stamps"].tolist()), strict=True)
    )
    if any(current.get(mid, st) != st for mid, st in reference_stamps.items()):
        return "a model of the full map was scored again"
    placed_stamps = {int(k): tuple(v) for k, v in latest.params.get("placed_stamps", {}).items()}
    rescored = {m for m, st in placed_stamps.items() if m in held and current.get(m, st) != st}
    held = {m: xy for m, xy in held.items() if m not in rescored}
    new = [i for i, mid in enumerate(now) if mid not in held]
    removed = len(set(held) - set(now))
    if not new and not removed:
        return MapRefresh(latest, "unchanged", [], "no new models since the last snapshot")
    if root.n_models < MIN_INCREMENTAL_REFERENCE:
        return f"the full map has only {root.n_models} models"
    ref_ids = set(reference_stamps)
    grown = sum(1 for mid in now if mid not in ref_ids)
    if grown >= fraction * root.n_models:
        return f"{grown} models added since the full map ({root.n_models}), at least {fraction:.0%}"
    state = _load_state(path, token)
    if state is None:
        return "the saved fit state is missing"
    placed = np.zeros((0, 2))
    names: list[str] = []
    if new:
        matrix = matrices.load(store, ts, root.variant, root.kind,
                               model_ids=[now[i] for i in new])  # fmt: skip
        order = {mid: i for i, mid in enumerate(matrix.model_ids)}
        rows = matrix.values[[order[now[i]] for i in new]]
        names = [matrix.models[order[now[i]]].repo_id for i in new]
        Q_new = place_rows(rows, float(state["threshold"]), state["offset"])
        say(f"placing {len(new)} new models into snapshot #{root.id}")
        if str(state["method"]) == "tsne":
            placed = transform_tsne(Q_new, state)
        else:
            placed = project_pca(Q_new, state)
    keep = [mid for mid in now if mid in held]
    ids = keep + [now[i] for i in new]
    coords = np.asarray([held[mid] for mid in keep] + [tuple(p) for p in placed]).reshape(-1, 2)
    params = {
        **{k: v for k, v in root.params.items() if k not in ("note",)},
        "mode": "incremental",
        "placed": [now[i] for i in new],
        "placed_stamps": {str(m): list(current[m]) for m in ids if m not in ref_ids},
        "removed": removed,
        "previous": latest.id,
    }
    if str(state["method"]) == "tsne":
        params["transform"] = {"perplexity": min(TRANSFORM_PERPLEXITY, len(ref_ids) / 3.0)}
    snap = MapSnapshot(
        method=root.method,
        params=params,
        textset_id=root.textset_id,
        variant=root.variant,
        kind=root.kind,
        clip_threshold=root.clip_threshold,
        parent_id=root.id,
    )
    snap = _store_snapshot(store, snap, ids, coords)
    return MapRefresh(snap, "incremental", names)


def refresh_all(
    store: Store, settings: Settings, *, progress: Progress | None = None
) -> list[MapRefresh]:
    """After a sync: refresh every map series already stored (incremental where possible)."""
    series: dict[tuple[int, str, str, str], None] = {}
    for snap in snapshots(store):
        key = (snap.textset_id, snap.variant, snap.kind, snap.params.get("requested", snap.method))
        series.setdefault(key, None)
    done = []
    for textset_id, variant, kind, method in series:
        try:
            ts = queries.textset_by_id(store, textset_id)
            done.append(
                refresh(store, settings, method=method, textset=ts, variant=variant, kind=kind,
                        progress=progress)
            )
        except NotFound:
            continue
    return done
