"""Export a map snapshot as self-describing files: JSON, CSV, raw vectors, a PNG and a web page.

`snapshot.json` holds the provenance and the models with their coordinates, `models.csv` the
same table flat, `loglik.npz` the raw (unclipped) conditional and unconditional vectors, and
`map.png` / `map.html` the map; the page embeds each model's nearest neighbours by estimated KL.
`analyses/` holds the PMI, prompt-shift and lineage analyses (`atlas.analyses.report`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from atlas.analyses.report import write_analyses  # pmi, shift, lineage: JSON + PNG each
from atlas.errors import UsageError
from atlas.export.page import render_map
from atlas.space import maps, matrices, vectors
from atlas.space.index import ALL_PAIRS_UP_TO, all_neighbours
from atlas.store import Store, queries
from atlas.store.tables import HubModel, MapPoint, MapSnapshot, TextSet

FORMAT = "atlas-map-snapshot/1"
FILES = ("snapshot.json", "models.csv", "loglik.npz", "map.png", "map.html", "analyses")
NEIGHBOURS = 10
CANVAS_FROM = 3000  # the page draws larger maps on a canvas instead of one SVG circle per model
CSV_FIELDS = (
    "id", "repo_id", "revision", "model_type", "architecture", "num_parameters", "downloads",
    "likes", "base_models", "status", "x", "y",
)  # fmt: skip
COLOUR_ATTRIBUTES = [
    ("type", "model type"),
    ("author", "author"),
    ("family", "base model"),
    ("architecture", "architecture"),
    ("status", "status"),
    ("template_mode", "template mode"),
]


@dataclass
class SnapshotData:
    """Everything an export writes, gathered from the store once."""

    snapshot: MapSnapshot
    textset: TextSet
    points: list[MapPoint]
    models: list[HubModel]
    revisions: list[str | None]
    conditional: np.ndarray  # models x N float32, NaN rows where a model has no vector
    unconditional: np.ndarray
    neighbours: list[list[tuple[int, float]]]  # per model: (index, KL nats per text)
    templates: list[dict[str, Any]] = field(default_factory=list)  # per model, see _templates

    @property
    def coords(self) -> np.ndarray:
        return np.asarray([(p.x, p.y) for p in self.points], dtype=np.float64).reshape(-1, 2)


def _aligned(
    matrix: matrices.Matrix, ids: list[int], n: int, dtype: Any = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `matrix` in the order of `ids` (NaN where missing), and which rows exist."""
    row = {mid: i for i, mid in enumerate(matrix.model_ids)}
    have = np.asarray([mid in row for mid in ids], dtype=bool)
    if matrix.model_ids == ids and matrix.values.dtype == dtype:
        return matrix.values, have  # already aligned: no copy
    out = np.full((len(ids), n), np.nan, dtype=dtype)
    for i, mid in enumerate(ids):
        if mid in row:
            out[i] = matrix.values[row[mid]]
    return out, have


def top_neighbours(Xi: np.ndarray, k: int, block: int = 512) -> list[list[tuple[int, float]]]:
    """Each row's `k` nearest other rows by `KL = ||xi_i - xi_j||^2 / (2N)`, nearest first.

    Through `index.all_neighbours`: every pair for small maps, a FAISS kNN index at scale.
    """
    dims = Xi.shape[1] if Xi.ndim == 2 else 1
    idx, sq = all_neighbours(Xi, k, block=block)
    return [[(int(j), float(d / (2.0 * dims))) for j, d in zip(ri, rs, strict=True)]
            for ri, rs in zip(idx, sq, strict=True)]  # fmt: skip


def _templates(store: Store, stamps: dict[int, tuple[int, ...]], ids: list[int]) -> list:
    """Per model, how its vector applied the chat template (mode, sha256, clock, scorer)."""
    first = {mid: s[0] for mid, s in stamps.items() if s}
    rows = queries.piece_provenance(store, list(first.values()))
    empty = {"mode": None, "sha256": None, "clock": None, "scorer_version": None}
    return [rows.get(first.get(mid, -1), empty) for mid in ids]


def _revisions(store: Store, stamps: dict[int, tuple[int, ...]], ids: list[int]) -> list:
    first = {mid: s[0] for mid, s in stamps.items() if s}
    rows = queries.piece_revisions(store, first.values())
    return [rows.get(first[mid]) if mid in first else None for mid in ids]


def gather(
    store: Store, snapshot_id: int | None = None, *, neighbours: int = NEIGHBOURS
) -> SnapshotData:
    """The snapshot (newest when None), its models, raw vectors and KL neighbours."""
    if neighbours < 0:
        raise UsageError("`neighbours` must be zero or more")
    snap = maps.get_snapshot(store, snapshot_id)
    ts = queries.textset_by_id(store, snap.textset_id)
    # Only scored models: one being scored again or failed since the snapshot has no vectors.
    pairs = [
        (p, m) for p, m in maps.snapshot_points(store, snap.id)  # type: ignore[arg-type]
        if m.status == queries.SCORED
    ]  # fmt: skip
    points = [p for p, _ in pairs]
    models = [m for _, m in pairs]
    ids = [int(m.id) for m in models]  # type: ignore[arg-type]
    n = ts.size  # type: ignore[union-attr]
    # Stored values are float32: loading them as float32 loses nothing and halves the memory.
    f32 = np.float32

    def aligned(variant: str, kind: str, dtype: Any = f32) -> tuple[np.ndarray, np.ndarray]:
        loaded = matrices.load(store, ts, variant, kind, model_ids=ids, dtype=dtype,  # type: ignore[arg-type]
                               with_tokens=False, weighted=False)
        return _aligned(loaded, ids, n, dtype)

    cond, _ = aligned(snap.variant, "conditional")
    uncond, _ = aligned("base", "unconditional")
    if snap.kind == "pmi":
        own, have = aligned(snap.variant, "pmi", np.float64)
    else:
        own = cond if snap.kind == "conditional" else uncond
        have = ~np.isnan(own).any(axis=1)
    kept = np.flatnonzero(have)
    found: list[list[tuple[int, float]]] = [[] for _ in ids]
    if len(kept):
        # A resampled set's rows: clipped at its source's threshold and weighted, no more clip.
        chosen, prepared = matrices.prepare(store, ts, own[kept], snap.variant, snap.kind)  # type: ignore[arg-type]
        threshold = snap.clip_threshold
        if prepared:
            threshold = float("-inf")
        elif threshold is None:
            threshold = vectors.clip_threshold(own[kept])
        if len(kept) <= ALL_PAIRS_UP_TO:
            Xi = vectors.center(vectors.clip(chosen, threshold))
        else:  # float32, one copy (`own[kept]` is one already), clipped and centred in place
            Xi = chosen.astype(f32, copy=False)
            del chosen
            np.maximum(Xi, np.asarray(threshold, dtype=f32), out=Xi)
            Xi -= Xi.mean(axis=1, dtype=np.float64, keepdims=True).astype(f32)
        for local, near in zip(kept, top_neighbours(Xi, neighbours), strict=True):
            found[int(local)] = [(int(kept[j]), kl) for j, kl in near]
    stamps = matrices.stamps(store, ts, snap.variant, snap.kind)  # type: ignore[arg-type]
    return SnapshotData(
        snapshot=snap,
        textset=ts,  # type: ignore[arg-type]
        points=points,
        models=models,
        revisions=_revisions(store, stamps, ids),
        templates=_templates(store, stamps, ids),
        conditional=cond.astype(np.float32, copy=False),
        unconditional=uncond.astype(np.float32, copy=False),
        neighbours=found,
    )


# --- the files ----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _metadata(m: HubModel) -> dict[str, Any]:
    return {
        "type": m.model_type,
        "architecture": m.architecture,
        "params": m.num_parameters,
        "downloads": m.downloads,
        "likes": m.likes,
        "base_models": list(m.base_models or []),
        "status": m.status,
        "author": m.author,
    }


def provenance(data: SnapshotData) -> dict[str, Any]:
    """The contents of snapshot.json."""
    from atlas import __version__

    snap, ts = data.snapshot, data.textset
    return {
        "format": FORMAT,
        "atlas_version": __version__,
        "exported": _iso(datetime.now(timezone.utc)),
        "snapshot": {
            "id": snap.id,
            "created": _iso(snap.created_at),
            "method": snap.method,
            "params": snap.params,
            "kind": snap.kind,
            "variant": snap.variant,
            "clip_threshold": snap.clip_threshold,
            "n_models": len(data.models),
            "parent_id": snap.parent_id,
        },
        "textset": {"name": ts.name, "sha256": ts.sha256, "kind": ts.kind, "size": ts.size},
        "loglik": {
            "file": "loglik.npz",
            "conditional_variant": snap.variant,
            "unconditional_variant": "base",
            "units": "nats per text, raw (unclipped), NaN where a model has no vector",
        },
        "models": [
            {
                "id": m.id,
                "repo_id": m.repo_id,
                "revision": rev or m.revision,
                "metadata": _metadata(m),
                "template": tpl,
                "x": p.x,
                "y": p.y,
            }
            for m, p, rev, tpl in zip(
                data.models, data.points, data.revisions, _per_model(data), strict=True
            )
        ],
    }


def write_csv(path: Path, record: dict[str, Any]) -> None:
    """models.csv: one row per model, metadata flattened, base models joined by spaces."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for m in record["models"]:
            meta = m["metadata"]
            writer.writerow([
                m["id"], m["repo_id"], m["revision"] or "", meta["type"] or "",
                meta["architecture"] or "", _blank(meta["params"]), _blank(meta["downloads"]),
                _blank(meta["likes"]), " ".join(meta["base_models"]), meta["status"],
                repr(m["x"]), repr(m["y"]),
            ])  # fmt: skip


def _blank(value: Any) -> str:
    return "" if value is None else str(value)


def write_npz(path: Path, data: SnapshotData) -> None:
    """loglik.npz: models, conditional, unconditional (float32, models x N), textset_sha256."""
    names = [m.repo_id for m in data.models]
    with open(path, "wb") as fh:
        np.savez(
            fh,
            models=np.asarray(names, dtype=str),
            conditional=data.conditional,
            unconditional=data.unconditional,
            textset_sha256=np.asarray(data.textset.sha256),
        )


def _title(data: SnapshotData) -> str:
    snap = data.snapshot
    return (
        f"atlas map #{snap.id}: {snap.method} of {snap.kind} vectors ({snap.variant}), "
        f"text set {data.textset.name}, {len(data.models)} models"
    )


def write_png(path: Path, data: SnapshotData, *, max_labels: int = 40) -> None:
    """map.png: points coloured by model type; labels for all when few, else a spread subset."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xy = data.coords
    types = [m.model_type or "unknown" for m in data.models]
    order = [t for t, _ in Counter(types).most_common() if t != "unknown"]
    if "unknown" in types:
        order.append("unknown")
    fig = Figure(figsize=(10, 8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab20" if len(order) > 10 else "tab10"]
    size = 28 if len(xy) <= 300 else 12 if len(xy) <= 3000 else 4
    for i, t in enumerate(order):
        mask = np.asarray([x == t for x in types])
        colour = "#9aa1ab" if t == "unknown" or i >= cmap.N else cmap(i)
        label = t.replace("$", r"\$") if i < cmap.N or t == "unknown" else None
        ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colour, label=label,
                   edgecolors="white", linewidths=0.5)  # fmt: skip
    ax.set_title(_title(data).replace("$", r"\$"), fontsize=10)
    ax.margins(0.12)
    ax.set_xticks([])
    ax.set_yticks([])
    if order:
        ax.legend(title="model type", fontsize=8, title_fontsize=8, loc="best", markerscale=1.2)
    _label_points(fig, ax, data, xy, max_labels)
    fig.savefig(path)


def _label_points(fig: Any, ax: Any, data: SnapshotData, xy: np.ndarray, limit: int) -> None:
    """Label every point when few; otherwise the most downloaded ones whose labels fit."""
    if not len(xy):
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    few = len(xy) <= limit
    order = sorted(
        range(len(xy)), key=lambda i: (-(data.models[i].downloads or 0), data.models[i].repo_id)
    )
    placed: list[Any] = []
    for i in order:
        if not few and len(placed) >= limit:
            break
        name = data.models[i].repo_id
        text = ax.annotate(name.split("/")[-1] if not few else name, xy[i], xytext=(4, 3),
                           textcoords="offset points", fontsize=7, parse_math=False)  # fmt: skip
        box = text.get_window_extent(renderer).expanded(1.05, 1.1)
        if not few and any(box.overlaps(other) for other in placed):
            text.remove()
            continue
        placed.append(box)


def _per_model(data: SnapshotData) -> list[dict[str, Any]]:
    empty = {"mode": None, "sha256": None, "clock": None, "scorer_version": None}
    return data.templates or [dict(empty) for _ in data.models]


def page_data(data: SnapshotData) -> dict[str, Any]:
    """What map.html embeds: the snapshot, the models with metadata, their KL neighbours."""
    snap = data.snapshot
    models = []
    for m, p, rev, tpl in zip(
        data.models, data.points, data.revisions, _per_model(data), strict=True
    ):
        bases = list(m.base_models or [])
        models.append({
            "id": m.id, "name": m.repo_id, "x": p.x, "y": p.y, "revision": rev or m.revision,
            "type": m.model_type, "architecture": m.architecture, "params": m.num_parameters,
            "downloads": m.downloads, "likes": m.likes, "base_models": bases,
            "status": m.status, "author": m.author, "family": bases[0] if bases else m.repo_id,
            "template_mode": tpl["mode"] or "not recorded",
        })  # fmt: skip
    return {
        "snapshot": {
            "id": snap.id,
            "method": snap.method,
            "kind": snap.kind,
            "variant": snap.variant,
            "textset": data.textset.name,
            "textset_sha256": data.textset.sha256,
            "created": _iso(snap.created_at),
            "clip_threshold": snap.clip_threshold,
        },
        "kl_unit": "nats per text",
        "render": "canvas" if len(models) > CANVAS_FROM else "svg",
        "attributes": COLOUR_ATTRIBUTES,
        "models": models,
        "neighbours": [[[j, round(kl, 8)] for j, kl in near] for near in data.neighbours],
    }


def write_html(path: Path, data: SnapshotData) -> None:
    """map.html: the self-contained interactive page."""

    path.write_text(render_map(page_data(data), _title(data)), encoding="utf-8")


def export(
    store: Store,
    directory: Path | str,
    snapshot_id: int | None = None,
    *,
    neighbours: int = NEIGHBOURS,
) -> Path:
    """Write FILES for a snapshot (the newest when None) into `directory`; return it."""
    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    data = gather(store, snapshot_id, neighbours=neighbours)
    out.mkdir(parents=True, exist_ok=True)
    record = provenance(data)
    (out / "snapshot.json").write_text(
        json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    write_csv(out / "models.csv", record)
    write_npz(out / "loglik.npz", data)
    write_png(out / "map.png", data)
    write_html(out / "map.html", data)

    textset = data.textset.name
    del data, record  # the analyses load what they need: free the snapshot's matrices first
    write_analyses(store, textset, out / "analyses")
    return out
