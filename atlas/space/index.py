"""A persisted FAISS index of centred log-likelihood vectors, for KL nearest-neighbour queries.

One index per (text set, variant, kind), keyed by stable model ids (`IndexIDMap2` over
`IndexFlatL2`), saved under `Settings.index_dir` with a JSON manifest. The store is the truth:
a stale, missing or corrupt index is rebuilt from it; models scored since the last full build
are added incrementally, clipped with the stored threshold. Squared L2 distances between centred
vectors are KL estimates up to the factor 1 / (2N).

Models added after a save go to a small delta index (`<stem>.delta.faiss`), so an incremental
refresh rewrites only that file; the main file is memory-mapped when FAISS can (1.10+) and a
process keeps indexes it has opened until their files change.

The compressed mode (`pca`) projects the centred vectors to a few hundred dimensions, searches
that small flat index for candidates and re-ranks them exactly with the full vectors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from atlas.errors import LockHeld, NotFound, UsageError
from atlas.settings import Settings
from atlas.space import matrices, vectors
from atlas.store import Store
from atlas.store.tables import TextSet

FORMAT_VERSION = 1
MODES = ("exact", "pca")
PCA_FROM_MODELS = 100_000  # `auto` mode switches to pca from this many models
PCA_DIMS = 256
PCA_TRAIN_ROWS = 2048
RERANK = 256  # pca mode: candidates re-ranked exactly per query
SHORTLIST = 32  # of those, how many (beyond k) get float64 distances
REBUILD_GROWTH = 0.5  # full rebuild (new clip threshold) once models grew by this fraction
CHUNK_ROWS = 256
LOCK_TIMEOUT_S = 900

_threads_set = False


def load_faiss() -> Any:
    """Import faiss; threads: OMP_NUM_THREADS, else half the cores (at most 8)."""
    global _threads_set
    import faiss

    if not _threads_set:
        if not os.environ.get("OMP_NUM_THREADS"):
            # Single queries gain little from threads and lose a lot when cores are busy.
            faiss.omp_set_num_threads(max(1, min((os.cpu_count() or 1) // 2, 8)))
        _threads_set = True
    return faiss


def resolve_mode(mode: str, n_models: int) -> str:
    """`exact` or `pca` for a requested mode (`auto` picks by model count)."""
    if mode == "auto":
        return "pca" if n_models >= PCA_FROM_MODELS else "exact"
    if mode not in MODES:
        raise UsageError(f"unknown index mode {mode!r}; choose from auto, {', '.join(MODES)}")
    return mode


@dataclass
class KLIndex:
    """Centred vectors of some models in FAISS, with the clip threshold they were made with."""

    dim: int
    threshold: float
    mode: str = "exact"
    flat: Any = None  # IndexIDMap2(IndexFlatL2(dim)): every full centred vector
    coarse: Any = None  # pca mode: IndexIDMap2(IndexPreTransform(linear map, IndexFlatL2(d')))
    pca_dims: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    _idset: set[int] = field(default_factory=set, repr=False)
    delta: Any = None  # IndexIDMap2(IndexFlatL2): models added since the main part was saved
    _saved_at: Path | None = field(default=None, repr=False)  # where the main part is on disk

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        ids: Sequence[int],
        raw: np.ndarray,
        *,
        threshold: float | None = None,
        mode: str = "exact",
        pca_dims: int = PCA_DIMS,
        seed: int = 0,
    ) -> KLIndex:
        """An index of raw vectors (models x N): clipped at `threshold` (default: own 2%)."""
        faiss = load_faiss()
        raw = np.asarray(raw)
        if raw.ndim != 2 or len(ids) != raw.shape[0]:
            raise ValueError("need one id per row of a models x N matrix")
        if threshold is None:
            threshold = vectors.clip_threshold(raw)
        mode = resolve_mode(mode, len(ids))
        index = cls(dim=raw.shape[1], threshold=float(threshold), mode=mode)
        index.flat = faiss.IndexIDMap2(faiss.IndexFlatL2(index.dim))
        if mode == "pca":
            index.coarse, index.pca_dims = _pca_index(
                faiss, index._centred_sample(raw, seed), pca_dims
            )
        index.add(ids, raw)
        return index

    def compressed(self, pca_dims: int = PCA_DIMS, *, seed: int = 0) -> KLIndex:
        """A pca-mode index over the same full vectors (shared, not copied)."""
        faiss = load_faiss()
        ids = np.asarray(self.ids(), dtype=np.int64)
        rng = np.random.default_rng(seed)
        pick = ids if len(ids) <= PCA_TRAIN_ROWS else rng.choice(ids, PCA_TRAIN_ROWS, False)
        sample = self.vectors(np.sort(pick)).astype(np.float64)
        coarse, dims = _pca_index(faiss, sample, pca_dims)
        main = np.asarray(self._main_ids(), dtype=np.int64)
        for start in range(0, len(main), CHUNK_ROWS):
            block = main[start : start + CHUNK_ROWS]
            coarse.add_with_ids(self.flat.reconstruct_batch(block), block)
        return KLIndex(dim=self.dim, threshold=self.threshold, mode="pca", flat=self.flat,
                       coarse=coarse, pca_dims=dims, manifest=dict(self.manifest),
                       _idset=set(self._idset), delta=self.delta)  # fmt: skip

    def _centred_sample(self, raw: np.ndarray, seed: int) -> np.ndarray:
        rows = np.arange(raw.shape[0])
        if len(rows) > PCA_TRAIN_ROWS:
            rows = np.sort(np.random.default_rng(seed).choice(rows, PCA_TRAIN_ROWS, replace=False))
        return self.centre(raw[rows])

    def centre(self, raw: np.ndarray) -> np.ndarray:
        """Raw vectors clipped at the stored threshold and row-centred (float64)."""
        return vectors.center(vectors.clip(raw, self.threshold))

    def add(self, ids: Sequence[int], raw: np.ndarray) -> None:
        """Add models (raw vectors, clipped with the stored threshold); ids must be new."""
        raw = np.atleast_2d(np.asarray(raw))
        if raw.shape[1] != self.dim:
            raise ValueError(f"vectors have {raw.shape[1]} values, the index {self.dim}")
        ids_arr = np.asarray(list(ids), dtype=np.int64)
        new = set(ids_arr.tolist())
        if new & self._idset or len(new) != len(ids_arr):
            raise ValueError("model ids already in the index")
        if self._saved_at is not None and self.delta is None:
            self.delta = load_faiss().IndexIDMap2(load_faiss().IndexFlatL2(self.dim))
        for start in range(0, len(ids_arr), CHUNK_ROWS):
            block = self.centre(raw[start : start + CHUNK_ROWS]).astype(np.float32)
            block_ids = ids_arr[start : start + CHUNK_ROWS]
            if self._saved_at is not None:  # the saved main part stays as it is on disk
                self.delta.add_with_ids(block, block_ids)
            else:
                self.flat.add_with_ids(block, block_ids)
                if self.coarse is not None:
                    self.coarse.add_with_ids(block, block_ids)
            self._idset.update(int(i) for i in block_ids)

    # --- queries --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.flat.ntotal) + self._delta_size

    @property
    def _delta_size(self) -> int:
        return 0 if self.delta is None else int(self.delta.ntotal)

    def _main_ids(self) -> list[int]:
        return [int(i) for i in load_faiss().vector_to_array(self.flat.id_map)]

    def _delta_ids(self) -> list[int]:
        if self.delta is None:
            return []
        return [int(i) for i in load_faiss().vector_to_array(self.delta.id_map)]

    def ids(self) -> list[int]:
        """Model ids in insertion order."""
        return self._main_ids() + self._delta_ids()

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored centred vectors (float32) of some model ids, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self._delta_size:
            return self.flat.reconstruct_batch(ids)
        in_delta = set(self._delta_ids())
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        mask = np.asarray([int(i) in in_delta for i in ids], dtype=bool)
        if mask.any():
            out[mask] = self.delta.reconstruct_batch(ids[mask])
        if (~mask).any():
            out[~mask] = self.flat.reconstruct_batch(ids[~mask])
        return out

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._idset

    def vector(self, model_id: int) -> np.ndarray:
        """A stored model's centred vector (float64)."""
        if int(model_id) not in self._idset:
            raise NotFound(f"model id {model_id} is not in the index")
        try:
            return self.vectors([int(model_id)])[0].astype(np.float64)
        except RuntimeError as exc:
            raise NotFound(f"model id {model_id} is not in the index") from exc

    def search(
        self, xi: np.ndarray, k: int = 10, *, exclude: Iterable[int] = (), rerank: int = RERANK
    ) -> list[tuple[int, float]]:
        """The k nearest (model id, squared distance) to a centred vector, nearest first."""
        excluded = {int(i) for i in exclude}
        k = min(k, self.size - len(excluded & self._idset))
        if k <= 0:
            return []
        query = np.asarray(xi, dtype=np.float64).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has {query.shape[1]} values, the index {self.dim}")
        want = k + len(excluded)
        if self.coarse is not None:
            want = max(want, rerank + len(excluded))
        source = self.coarse if self.coarse is not None else self.flat
        q32 = query.astype(np.float32)
        found = []
        if source.ntotal:
            found = source.search(q32, min(want, int(source.ntotal)))[1][0].tolist()
        if self._delta_size:  # the few models added since the save: searched exactly
            found += self.delta.search(q32, min(k + len(excluded), self._delta_size))[1][0].tolist()
        candidates = [int(i) for i in found if i >= 0 and int(i) not in excluded]
        if not candidates:
            return []
        stored = self.vectors(candidates)
        if len(candidates) > k + SHORTLIST:  # pca candidates: shortlist in float32 first
            diff32 = stored - query.astype(np.float32)
            near = np.argpartition(np.einsum("ij,ij->i", diff32, diff32), k + SHORTLIST)
            near = np.sort(near[: k + SHORTLIST])
            candidates, stored = [candidates[j] for j in near], stored[near]
        # Exact float64 distances to the stored float32 vectors, ties broken by id.
        diff = stored.astype(np.float64) - query
        sq = np.einsum("ij,ij->i", diff, diff)
        order = sorted(range(len(candidates)), key=lambda j: (sq[j], candidates[j]))[:k]
        return [(candidates[j], float(sq[j])) for j in order]

    def nbytes(self) -> int:
        """Approximate memory of the stored vectors and ids."""
        total = self.size * (self.dim * 4 + 16)
        if self.coarse is not None:  # the delta part has no compressed copy
            total += self.size * (self.pca_dims * 4 + 16) + self.dim * self.pca_dims * 4
        return total

    # --- persistence ----------------------------------------------------------------------
    def save(self, stem: Path) -> None:
        """Write `<stem>.faiss` (and `<stem>.pca.faiss`, `<stem>.delta.faiss`), then
        `<stem>.json`, atomically; a main part already saved there is not written again."""
        faiss = load_faiss()
        stem.parent.mkdir(parents=True, exist_ok=True)
        if self._saved_at != stem:
            _write_atomic(stem.with_suffix(".faiss"),
                          lambda p: faiss.write_index(self.flat, str(p)))  # fmt: skip
            pca = stem.with_suffix(".pca.faiss")
            if self.coarse is not None:
                _write_atomic(pca, lambda p: faiss.write_index(self.coarse, str(p)))
            else:
                pca.unlink(missing_ok=True)
        delta = stem.with_suffix(".delta.faiss")
        if self._delta_size:
            _write_atomic(delta, lambda p: faiss.write_index(self.delta, str(p)))
        else:
            delta.unlink(missing_ok=True)
        self._saved_at = stem
        manifest = {**self.manifest, "format": FORMAT_VERSION, "dim": self.dim,
                    "clip_threshold": self.threshold, "mode": self.mode,
                    "pca_dims": self.pca_dims, "delta_models": self._delta_size,
                    "n_models": self.size, "model_ids": self.ids()}
        self.manifest = manifest
        text = json.dumps(manifest, indent=1, sort_keys=True)
        _write_atomic(stem.with_suffix(".json"), lambda p: p.write_text(text))

    @classmethod
    def load(cls, stem: Path) -> KLIndex:
        """Read a saved index; raise IndexCorrupt when files disagree with the manifest."""
        faiss = load_faiss()
        for suffix in (".json", ".faiss"):
            if not stem.with_suffix(suffix).exists():
                raise IndexMissing(f"no {stem.with_suffix(suffix).name}")
        try:
            manifest = json.loads(stem.with_suffix(".json").read_text())
            if manifest.get("format") != FORMAT_VERSION:
                raise IndexCorrupt(f"index format {manifest.get('format')!r}")
            index = cls(dim=int(manifest["dim"]), threshold=float(manifest["clip_threshold"]),
                        mode=str(manifest["mode"]), pca_dims=int(manifest.get("pca_dims", 0)),
                        manifest=manifest)
            index.flat = _read_mapped(faiss, stem.with_suffix(".faiss"))
            if index.mode == "pca":
                index.coarse = _read_mapped(faiss, stem.with_suffix(".pca.faiss"))
            if int(manifest.get("delta_models", 0)):
                index.delta = faiss.read_index(str(stem.with_suffix(".delta.faiss")))
        except IndexCorrupt:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorrupt(f"unreadable index {stem}: {exc}") from exc
        index._idset = set(index.ids())
        index._saved_at = stem
        index._validate()
        return index

    def _validate(self) -> None:
        flat_ok = isinstance(self.flat, load_faiss().IndexIDMap2) and self.flat.d == self.dim
        if not flat_ok:
            raise IndexCorrupt("index dimension does not match its manifest")
        if self.ids() != [int(i) for i in self.manifest.get("model_ids", [])]:
            raise IndexCorrupt("index ids do not match its manifest")
        if self.delta is not None and (
            not isinstance(self.delta, load_faiss().IndexIDMap2) or self.delta.d != self.dim
        ):
            raise IndexCorrupt("delta index dimension does not match its manifest")
        if self.coarse is not None and (
            self.coarse.d != self.dim
            or [int(i) for i in load_faiss().vector_to_array(self.coarse.id_map)]
            != self._main_ids()
        ):
            raise IndexCorrupt("compressed index does not match the full one")


class IndexMissing(Exception):
    """No saved index at this path."""


class IndexCorrupt(Exception):
    """A saved index cannot be used as it is."""


def _read_mapped(faiss: Any, path: Path) -> Any:
    """Read an index, memory-mapping its vectors where FAISS supports it (1.10+: IFC flag)."""
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if flag is not None:
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError:
            pass  # an index type that cannot be mapped: read it
    return faiss.read_index(str(path))


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pca_index(faiss: Any, sample: np.ndarray, dims: int, seed: int = 0) -> tuple[Any, int]:
    """A flat index behind a PCA projection learnt from centred `sample` rows.

    The top components come from a randomized SVD (two power iterations) in float32: they only
    choose candidates, which are then re-ranked exactly.
    """
    n, d = sample.shape
    dims = max(1, min(dims, d, max(n - 1, 1)))
    mean = sample.mean(axis=0)
    centred = (sample - mean).astype(np.float32)
    width = min(dims + 16, n, d)
    if width < min(n, d):  # project onto an approximate top subspace first
        omega = np.random.default_rng(seed).standard_normal((d, width), dtype=np.float32)
        basis = _orthonormal(centred @ omega)
        for _ in range(2):
            basis = _orthonormal(centred @ (centred.T @ basis))
        centred = basis.T @ centred
    components = _top_right_vectors(centred, dims)
    transform = faiss.LinearTransform(d, dims, True)
    faiss.copy_array_to_vector(np.ascontiguousarray(components.T, dtype=np.float32).ravel(),
                               transform.A)  # fmt: skip
    faiss.copy_array_to_vector((-(mean @ components)).astype(np.float32), transform.b)
    transform.is_trained = True
    inner = faiss.IndexPreTransform(transform, faiss.IndexFlatL2(dims))
    return faiss.IndexIDMap2(inner), dims


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of a tall matrix (via its small Gram matrix)."""
    evals, evecs = np.linalg.eigh(y.T.astype(np.float64) @ y.astype(np.float64))
    keep = evals > evals.max() * 1e-10
    return (y @ (evecs[:, keep] / np.sqrt(evals[keep])).astype(y.dtype)).astype(np.float32)


def _top_right_vectors(m: np.ndarray, dims: int) -> np.ndarray:
    """The top `dims` right singular vectors of a short, wide matrix (d x dims), via its Gram."""
    wide = m.astype(np.float64)
    evals, evecs = np.linalg.eigh(wide @ wide.T)
    top = np.argsort(evals)[::-1][:dims]
    scale = np.sqrt(np.maximum(evals[top], 1e-12))
    return (wide.T @ evecs[:, top]) / scale


# --- the store-backed index ------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64] or "textset"


def index_stem(settings: Settings, textset: TextSet, variant: str, kind: str) -> Path:
    """Where the index for one key lives (without suffix)."""
    folder = settings.index_dir / f"{_slug(textset.name)}-{textset.sha256[:12]}"
    return folder / f"{variant.replace('+', '_')}-{kind}"


@dataclass
class Refresh:
    """What `open_index` had to do: nothing, an incremental add, or a full build (and why)."""

    action: str  # "none", "added", "built"
    reason: str = ""
    added: int = 0


def open_index(
    store: Store,
    settings: Settings,
    textset: TextSet | str,
    variant: str = "base",
    kind: str = "conditional",
    *,
    mode: str | None = None,
    rebuild: bool = False,
) -> tuple[KLIndex, Refresh]:
    """The up-to-date index for a key: loaded, refreshed incrementally or rebuilt from the store."""
    from filelock import FileLock, Timeout

    ts = matrices.resolve_textset(store, textset)
    variant, kind = matrices.check_key(variant, kind)
    requested = mode or settings.index_mode
    stem = index_stem(settings, ts, variant, kind)
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(stem.with_suffix(".lock")), timeout=LOCK_TIMEOUT_S):
            return _refresh(store, ts, variant, kind, requested, stem, rebuild)
    except Timeout as exc:
        raise LockHeld(f"another process is rebuilding the index {stem}") from exc


def _refresh(
    store: Store, ts: TextSet, variant: str, kind: str, requested: str, stem: Path, rebuild: bool
) -> tuple[KLIndex, Refresh]:
    mark = list(store.high_water_mark())
    key = {"textset": ts.name, "textset_sha256": ts.sha256, "variant": variant, "kind": kind}
    index: KLIndex | None = None
    reason = "rebuild requested" if rebuild else ""
    if not rebuild:
        try:
            index = _load_cached(stem)
            if any(index.manifest.get(k) != v for k, v in key.items()):
                reason, index = "manifest does not match the text set or key", None
        except IndexMissing:
            reason = "no index yet"
        except IndexCorrupt as exc:
            reason = f"corrupt index ({exc})"
    if index is not None and index.manifest.get("high_water_mark") == mark:
        if resolve_mode(requested, index.size) == index.mode:
            return index, Refresh("none")
        reason, index = f"mode changed to {resolve_mode(requested, index.size)}", None
    current = matrices.stamps(store, ts, variant, kind)
    if index is not None:
        held = {int(k): tuple(v) for k, v in index.manifest.get("stamps", {}).items()}
        new_ids = [m for m in current if m not in held]
        built_with = int(index.manifest.get("built_models", index.size))
        if any(current.get(m) != s for m, s in held.items()):
            reason = "models were rescored or removed"
        elif resolve_mode(requested, len(current)) != index.mode:
            reason = f"mode changed to {resolve_mode(requested, len(current))}"
        elif len(current) > built_with * (1 + REBUILD_GROWTH):
            reason = f"models grew from {built_with} to {len(current)} since the full build"
        else:
            if new_ids:
                m = matrices.load(store, ts, variant, kind, model_ids=new_ids, dtype=_dtype(kind),
                                  with_tokens=False)
                index.add(m.model_ids, m.values)
                held.update(zip(m.model_ids, m.stamps, strict=True))
            index.manifest.update(high_water_mark=mark, updated=_now(),
                                  stamps={str(k): list(v) for k, v in held.items()})
            index.save(stem)
            _remember(stem, index)
            return index, Refresh("added" if new_ids else "none", added=len(new_ids))
    m = matrices.load(store, ts, variant, kind, dtype=_dtype(kind), with_tokens=False)
    if not m.models:
        raise NotFound(
            f"no {kind} vectors for text set {ts.name!r} (variant {variant})",
            hint=f"score models first: `atlas score MODEL --textset {ts.name}`",
        )
    index = KLIndex.build(m.model_ids, m.values, threshold=matrices.threshold_of(m),
                          mode=resolve_mode(requested, len(m.models)))  # fmt: skip
    index.manifest = {**key, "high_water_mark": mark, "built_models": index.size,
                      "built": _now(), "updated": _now(),
                      "stamps": {str(i): list(s) for i, s in zip(m.model_ids, m.stamps,
                                                                 strict=True)}}
    index.save(stem)
    _remember(stem, index)
    return index, Refresh("built", reason=reason)


_OPENED: dict[Path, tuple[tuple, KLIndex]] = {}  # indexes this process has read, by stem


def _signature(stem: Path) -> tuple:
    """Identity of an index's files on disk: changes whenever any of them is rewritten."""
    sig = []
    for suffix in (".json", ".faiss", ".pca.faiss", ".delta.faiss"):
        try:
            st = stem.with_suffix(suffix).stat()
            sig.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append(None)
    return tuple(sig)


def _load_cached(stem: Path) -> KLIndex:
    """A saved index, from this process's memory when its files have not changed."""
    held = _OPENED.get(stem)
    sig = _signature(stem)
    if held is not None and held[0] == sig:
        return held[1]
    index = KLIndex.load(stem)
    _OPENED[stem] = (sig, index)
    return index


def _remember(stem: Path, index: KLIndex) -> None:
    _OPENED[stem] = (_signature(stem), index)


def _dtype(kind: str) -> Any:
    """Stored kinds are float32 already (no loss, half the memory); pmi is a float64 difference."""
    return np.float64 if kind == "pmi" else np.float32


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def saved_keys(settings: Settings, textset: TextSet) -> list[tuple[str, str]]:
    """(variant, kind) of every index saved for a text set."""
    folder = index_stem(settings, textset, "base", "conditional").parent
    keys = []
    for path in sorted(folder.glob("*.json")):
        try:
            manifest = json.loads(path.read_text())
            keys.append((str(manifest["variant"]), str(manifest["kind"])))
        except (OSError, ValueError, KeyError):
            continue
    return keys


def refresh_indexes(
    store: Store, settings: Settings, textset: TextSet | str | None = None
) -> dict[str, Refresh]:
    """Bring the saved indexes (and base/conditional) of text sets up to date; sync calls this.

    Newly scored models are added incrementally; returns what was done per index.
    """
    sets = [matrices.resolve_textset(store, textset)] if textset else store.textsets()
    done: dict[str, Refresh] = {}
    for ts in sets:
        keys = dict.fromkeys([("base", "conditional"), *saved_keys(settings, ts)])
        for variant, kind in keys:
            try:
                _, what = open_index(store, settings, ts, variant, kind)
            except NotFound:
                continue
            done[f"{ts.name}/{variant}/{kind}"] = what
    return done



# --- every model's neighbours at once ----------------------------------------------------------

ALL_PAIRS_UP_TO = 3000  # below this many rows, `all_neighbours` compares every pair exactly
ALL_CANDIDATES = 64  # beyond k, candidates per row re-ranked exactly at scale


def all_neighbours(
    Xi: np.ndarray, k: int, *, block: int = 512, candidates: int = ALL_CANDIDATES
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` nearest other rows by squared L2 distance, nearest first (ties by row).

    Returns (rows x k indices, rows x k squared distances in float64). Up to `ALL_PAIRS_UP_TO`
    rows every pair is compared (exactly, in blocks); above it a FAISS kNN index over a PCA
    projection (as the `pca` index mode) proposes `k + candidates` rows per row, which are
    re-ranked with the full vectors, so no models x models matrix is ever formed.
    """
    n = len(Xi)
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0))
    if n <= ALL_PAIRS_UP_TO:
        return _all_pairs(np.asarray(Xi, dtype=np.float64), k, block)
    from threadpoolctl import threadpool_limits

    X = np.ascontiguousarray(Xi, dtype=np.float32)
    faiss = load_faiss()
    rng = np.random.default_rng(0)
    sample = X[np.sort(rng.choice(n, min(n, PCA_TRAIN_ROWS), replace=False))]
    coarse, dims = _pca_index(faiss, sample.astype(np.float64), PCA_DIMS)
    # Project every row once (the pre-transformed index would project again for each search).
    linear = faiss.downcast_VectorTransform(faiss.downcast_index(coarse.index).chain.at(0))
    A = faiss.vector_to_array(linear.A).reshape(dims, X.shape[1]).T.copy()
    b = faiss.vector_to_array(linear.b)
    projected = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS * 8):
        projected[start : start + CHUNK_ROWS * 8] = X[start : start + CHUNK_ROWS * 8] @ A + b
    flat = faiss.IndexFlatL2(dims)
    flat.add(projected)
    want = min(n, k + 1 + candidates)
    norms = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    idx = np.zeros((n, k), dtype=np.int64)
    sq = np.zeros((n, k))
    for start in range(0, n, CHUNK_ROWS * 8):
        _, found = flat.search(projected[start : start + CHUNK_ROWS * 8], want)
        # One BLAS thread for the many small products: OpenBLAS's threads cost ten times the
        # product itself there (2 ms instead of 0.25 ms per row, more on a busy machine).
        with threadpool_limits(limits=1, user_api="blas"):
            for r, cand in enumerate(found, start=start):
                cand = cand[(cand >= 0) & (cand != r)]
                d = norms[cand] + norms[r] - 2.0 * (X[cand] @ X[r]).astype(np.float64)
                np.maximum(d, 0.0, out=d)
                order = np.lexsort((cand, d))[:k]
                idx[r, : len(order)], sq[r, : len(order)] = cand[order], d[order]
    return idx, sq


def _all_pairs(X: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(X)
    norms = np.einsum("ij,ij->i", X, X)
    idx = np.zeros((n, k), dtype=np.int64)
    out = np.zeros((n, k))
    for start in range(0, n, block):
        part = X[start : start + block]
        # an explicit copy of the transpose: numpy's OpenBLAS has crashed on X @ X.T
        sq = norms[start : start + block, None] + norms[None, :] - 2.0 * (part @ X.T.copy())
        np.maximum(sq, 0.0, out=sq)
        rows = np.arange(len(part))
        sq[rows, rows + start] = np.inf
        for r in range(len(part)):
            cand = np.argpartition(sq[r], k - 1)[:k] if k < n else np.arange(n)
            cand = cand[np.lexsort((cand, sq[r, cand]))]
            idx[start + r], out[start + r] = cand[:k], sq[r, cand[:k]]
    return idx, out
