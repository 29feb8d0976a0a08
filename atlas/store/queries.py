"""Every query beyond a single row, and the rules the parts of atlas share.

- **Current revision, else newest**: a model's vector piece for a key is the one of its current
  revision when stored, else its newest (`chosen_pieces`, `chosen_piece_ids`).
- **Default text set**: `sample` when it holds vectors for the key, else the text set with the
  most models holding them, ties by name (`default_textset`).
- **Scored only**: pieces of a model that is not `scored` (being scored, failed, left by a
  killed run) are never read: every query that hands vectors to indexes, neighbours, maps,
  analyses or exports goes through `_of`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, insert, null
from sqlmodel import col, delete, or_, select

from atlas.errors import NotFound
from atlas.store.db import Store
from atlas.store.tables import (
    HubModel,
    MapPoint,
    MapSnapshot,
    SyncRun,
    TextItem,
    TextSet,
    Vector,
    utcnow,
)

SAMPLE_NAME = "sample"

# --- vectors ----------------------------------------------------------------------------------


SCORED = "scored"


def _of(ts: TextSet, variant: str, kind: str) -> tuple[Any, ...]:
    """Conditions for pieces of one key that match the text set's content, of scored models."""
    return (
        HubModel.status == SCORED,
        Vector.textset_id == ts.id,
        Vector.variant == variant,
        Vector.kind == kind,
        Vector.textset_sha256 == ts.sha256,
        Vector.n == ts.size,
    )


def _newest_first_per_model(query: Any) -> Any:
    # By id, not created_at: ids grow with insertion, and SQLite stores created_at after the
    # vector blobs, so sorting by it reads every blob's overflow pages.
    return query.order_by(col(HubModel.id), col(Vector.id))


def chosen_pieces(
    store: Store,
    ts: TextSet,
    variant: str,
    kind: str,
    model_ids: Iterable[int] | None = None,
) -> dict[int, tuple[Vector, HubModel]]:
    """Model id -> (piece, model) for one key: the current revision's piece, else the newest."""
    query = _newest_first_per_model(
        select(Vector, HubModel)
        .join(HubModel, col(HubModel.id) == Vector.model_id)
        .where(*_of(ts, variant, kind))
    )
    if model_ids is not None:
        query = query.where(col(Vector.model_id).in_(list(model_ids)))
    chosen: dict[int, tuple[Vector, HubModel]] = {}
    with store.session() as s:
        for vec, model in s.exec(query):
            held = chosen.get(model.id)  # type: ignore[arg-type]
            if held is None or held[0].revision != model.revision:
                chosen[model.id] = (vec, model)  # type: ignore[index]
    return chosen


def chosen_piece_ids(
    store: Store,
    ts: TextSet,
    variant: str,
    kind: str,
    model_ids: Iterable[int] | None = None,
) -> dict[int, int]:
    """Model id -> id of the piece `chosen_pieces` would pick (no values loaded)."""
    query = _newest_first_per_model(
        select(Vector.id, Vector.revision, HubModel.id, HubModel.revision)
        .join(HubModel, col(HubModel.id) == Vector.model_id)
        .where(*_of(ts, variant, kind))
    )
    if model_ids is not None:
        query = query.where(col(Vector.model_id).in_(list(model_ids)))
    chosen: dict[int, tuple[int, str]] = {}
    with store.session() as s:
        for vid, vrev, mid, mrev in s.exec(query):
            held = chosen.get(mid)
            if held is None or held[1] != mrev:
                chosen[mid] = (int(vid), vrev)
    return {m: v for m, (v, _) in chosen.items()}


def piece_mark(store: Store, ts: TextSet, variant: str, kind: str) -> tuple[int, int]:
    """(count, largest id) of one key's pieces, from the (text set, variant, kind) index
    without touching the vector blobs: a high-water mark for staleness checks."""
    query = (
        select(func.count(col(Vector.id)), func.max(Vector.id))
        .join(HubModel, col(HubModel.id) == Vector.model_id)
        .where(Vector.textset_id == ts.id, Vector.variant == variant, Vector.kind == kind)
        .where(HubModel.status == SCORED)  # a model becoming scored (or leaving it) moves it
    )
    with store.session() as s:
        n, newest = s.exec(query).one()
    return int(n), int(newest or 0)


def piece_values(
    store: Store, piece_ids: Sequence[int], *, with_tokens: bool = True
) -> dict[int, tuple[bytes, bytes | None]]:
    """Piece id -> (values blob, token counts blob or None) for some pieces (read a chunk at a
    time: the blobs are large)."""
    counts = Vector.token_counts if with_tokens else null()
    query = select(Vector.id, Vector.values, counts)  # type: ignore[call-overload]
    query = query.where(col(Vector.id).in_(list(piece_ids)))
    with store.session() as s:
        return {int(i): (v, t) for i, v, t in s.exec(query)}


def piece_revisions(store: Store, piece_ids: Iterable[int]) -> dict[int, str]:
    """Vector piece id -> the model revision it was computed at."""
    query = select(Vector.id, Vector.revision).where(col(Vector.id).in_(list(piece_ids)))
    with store.session() as s:
        return {int(i): r for i, r in s.exec(query).all()}


def delete_vectors(store: Store, ids: Sequence[int]) -> None:
    """Remove vector pieces by id (undoes a failed run's writes)."""
    if not ids:
        return
    with store.session() as s:
        s.exec(delete(Vector).where(col(Vector.id).in_(list(ids))))  # type: ignore[call-overload]


def template_provenance(
    store: Store,
) -> dict[int, list[tuple[str | None, str | None, str | None]]]:
    """Model id -> (template mode, template sha256, template clock) of each of its pieces at
    its current revision."""
    query = (
        select(Vector.model_id, Vector.template_mode, Vector.template_sha256,
               Vector.template_clock)
        .join(HubModel, col(HubModel.id) == Vector.model_id)
        .where(Vector.revision == HubModel.revision)
    )  # fmt: skip
    found: dict[int, list[tuple[str | None, str | None, str | None]]] = {}
    with store.session() as s:
        for model_id, mode, sha, clock in s.exec(query):
            found.setdefault(int(model_id), []).append((mode, sha, clock))
    return found


def piece_provenance(store: Store, piece_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Piece id -> its template mode, sha256, clock and scorer version (no vector values are
    loaded into memory; read in chunks)."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(piece_ids), 5000):
        query = select(Vector.id, Vector.template_mode, Vector.template_sha256,
                       Vector.template_clock, Vector.scorer_version).where(
            col(Vector.id).in_(list(piece_ids[start : start + 5000])))  # fmt: skip
        with store.session() as s:
            for i, mode, sha, clock, scorer in s.exec(query):
                found[int(i)] = {"mode": mode, "sha256": sha, "clock": clock,
                                 "scorer_version": scorer}  # fmt: skip
    return found


def pieces_by_id(store: Store, piece_ids: Iterable[int]) -> dict[int, Vector]:
    """Vector pieces by id (for their provenance)."""
    query = select(Vector).where(col(Vector.id).in_(list(piece_ids)))
    with store.session() as s:
        return {int(v.id): v for v in s.exec(query)}  # type: ignore[arg-type]


def outdated_pieces(store: Store, is_outdated: Any) -> dict[tuple[int, str], list[Vector]]:
    """Pieces whose scorer version `is_outdated(version)`, grouped by (model id, revision)."""
    groups: dict[tuple[int, str], list[Vector]] = {}
    with store.session() as s:
        for vec in s.exec(select(Vector).order_by(col(Vector.model_id), col(Vector.id))):
            if is_outdated(vec.scorer_version):
                groups.setdefault((vec.model_id, vec.revision), []).append(vec)
    return groups


def stamp_pieces(store: Store, stamps: dict[int, dict[str, Any]]) -> None:
    """Set provenance fields on pieces by id, in one transaction (their values unchanged)."""
    with store.session() as s:
        for piece_id, fields in stamps.items():
            row = s.get(Vector, piece_id)
            if row is None:
                continue
            for key, value in fields.items():
                setattr(row, key, value)
            s.add(row)


# --- text sets --------------------------------------------------------------------------------


def textset_by_id(store: Store, textset_id: int) -> TextSet:
    """A text set row by id, or NotFound."""
    with store.session() as s:
        found = s.get(TextSet, textset_id)
    if found is None:
        raise NotFound(f"no text set with id {textset_id}")
    return found


def default_textset(store: Store, variant: str = "base", kind: str = "conditional") -> TextSet:
    """`sample` when it holds (variant, kind) vectors, else the text set with the most models
    holding them (ties by name); NotFound when no text set holds any."""
    query = (
        select(TextSet, func.count(func.distinct(Vector.model_id)))
        .join(Vector, col(Vector.textset_id) == TextSet.id)
        .join(HubModel, col(HubModel.id) == Vector.model_id)
        .where(Vector.variant == variant, Vector.kind == kind, HubModel.status == SCORED)
        .group_by(col(TextSet.id))
    )
    with store.session() as s:
        counts = sorted(
            s.exec(query).all(),
            key=lambda row: (row[0].name != SAMPLE_NAME, -row[1], row[0].name),
        )
    if not counts:
        raise NotFound(
            f"no {kind} vectors for variant {variant!r} yet",
            hint="score some models first; `atlas status` shows what is stored",
        )
    return counts[0][0]


def insert_textset(
    store: Store, textset: TextSet, items: Iterable[dict[str, Any]]
) -> tuple[TextSet, bool]:
    """Store a text set and its items in one transaction.

    Returns (the stored row, True) or, when the name is taken, (the existing row, False).
    """
    with store.session() as s:
        existing = s.exec(select(TextSet).where(TextSet.name == textset.name)).first()
        if existing is not None:
            return existing, False
        s.add(textset)
        s.flush()
        s.add_all(
            TextItem(textset_id=textset.id, idx=i, **fields)  # type: ignore[arg-type]
            for i, fields in enumerate(items)
        )
        s.flush()
        s.refresh(textset)
    return textset, True


def textset_items(store: Store, textset: TextSet) -> list[TextItem]:
    """A text set's items, in order."""
    query = select(TextItem).where(TextItem.textset_id == textset.id).order_by(TextItem.idx)
    with store.session() as s:
        return list(s.exec(query).all())


# --- models -----------------------------------------------------------------------------------


def models_by_id(store: Store, ids: Iterable[int]) -> dict[int, HubModel]:
    """Model rows by id."""
    with store.session() as s:
        rows = s.exec(select(HubModel).where(col(HubModel.id).in_(list(ids))))
        return {int(m.id): m for m in rows}  # type: ignore[arg-type]


def known_models(store: Store) -> dict[str, tuple[str | None, str]]:
    """Repo id -> (revision, status) of every model seen."""
    with store.session() as s:
        rows = s.exec(select(HubModel.repo_id, HubModel.revision, HubModel.status)).all()
    return {repo: (rev, status) for repo, rev, status in rows}


def record_models(store: Store, updates: dict[str, dict[str, Any]]) -> None:
    """Insert or update many model rows (repo id -> fields) in one transaction."""
    with store.session() as s:
        repos = list(updates)
        existing = {
            m.repo_id: m for m in s.exec(select(HubModel).where(col(HubModel.repo_id).in_(repos)))
        }
        now = utcnow()
        for repo, fields in updates.items():
            row = existing.get(repo)
            if row is None:
                author = repo.split("/")[0][:128] if "/" in repo else None
                row = HubModel(repo_id=repo, author=author)
            for key, value in fields.items():
                setattr(row, key, _fit(key, value))
            row.updated_at = now
            s.add(row)


def _fit(column: str, value: Any) -> Any:
    """A listed string cut to its column's width (hostile listings must not fail a poll)."""
    if not isinstance(value, str):
        return value
    width = getattr(HubModel.__table__.c[column].type, "length", None)  # type: ignore[attr-defined]
    return value[:width] if width else value


def hub_models_to_score(
    store: Store,
    textset: TextSet,
    *,
    statuses: Sequence[str],
    retry_reasons: Sequence[str] = (),
    retry_detail: tuple[str, str] | None = None,
) -> tuple[list[HubModel], dict[int, set[str]]]:
    """Hub models in `statuses` (or failed for one of `retry_reasons`, or for the reason of
    `retry_detail` with a detail starting with its text), and per model id the revisions that
    have vectors on `textset`."""
    wanted = col(HubModel.status).in_(tuple(statuses))
    if retry_reasons:
        retryable = (HubModel.status == "failed") & col(HubModel.reason).in_(retry_reasons)
        wanted = or_(wanted, retryable)
    if retry_detail is not None:
        reason, prefix = retry_detail
        refused = (
            (HubModel.status == "failed")
            & (HubModel.reason == reason)
            & col(HubModel.detail).startswith(prefix, autoescape=True)
        )
        wanted = or_(wanted, refused)
    with store.session() as s:
        rows = list(s.exec(select(HubModel).where(HubModel.source == "hub").where(wanted)))
        have: dict[int, set[str]] = {}
        for model_id, revision in s.exec(
            select(Vector.model_id, Vector.revision).where(Vector.textset_id == textset.id)
        ):
            have.setdefault(model_id, set()).add(revision)
    return rows, have


# --- sync runs --------------------------------------------------------------------------------


def start_sync_run(store: Store, textset: str) -> int:
    """Record a new running sync (earlier ones still marked running were interrupted)."""
    with store.session() as s:
        for stale in s.exec(select(SyncRun).where(SyncRun.status == "running")):
            stale.status = "interrupted"
            stale.finished_at = stale.finished_at or utcnow()
            s.add(stale)
        run = SyncRun(status="running", counts={"textset": textset})
        s.add(run)
        s.flush()
        return int(run.id)  # type: ignore[arg-type]


def finish_sync_run(
    store: Store, run_id: int, status: str, counts: dict[str, Any], errors: list[str]
) -> None:
    """Close a sync run with its status, counts and (at most 200) error lines."""
    with store.session() as s:
        run = s.get(SyncRun, run_id)
        if run is None:
            return
        run.status, run.counts, run.errors = status, counts, errors[:200]
        run.finished_at = utcnow()
        s.add(run)


# --- map snapshots ----------------------------------------------------------------------------


def snapshots(store: Store, textset_id: int | None = None) -> list[MapSnapshot]:
    """Stored map snapshots, newest first."""
    query = select(MapSnapshot).order_by(col(MapSnapshot.id).desc())
    if textset_id is not None:
        query = query.where(MapSnapshot.textset_id == textset_id)
    with store.session() as s:
        return list(s.exec(query))


def snapshot(store: Store, snapshot_id: int | None = None) -> MapSnapshot | None:
    """One snapshot by id, or the newest."""
    with store.session() as s:
        if snapshot_id is None:
            return s.exec(select(MapSnapshot).order_by(col(MapSnapshot.id).desc())).first()
        return s.get(MapSnapshot, snapshot_id)


def snapshot_points(store: Store, snapshot_id: int) -> list[tuple[MapPoint, HubModel]]:
    """A snapshot's points with their models, in the order they were stored."""
    query = (
        select(MapPoint, HubModel)
        .join(HubModel, col(HubModel.id) == MapPoint.model_id)
        .where(MapPoint.snapshot_id == snapshot_id)
        .order_by(col(MapPoint.id))
    )
    with store.session() as s:
        return [(p, m) for p, m in s.exec(query)]


def point_coords(store: Store, snapshot_id: int) -> dict[int, tuple[float, float]]:
    """Model id -> (x, y) of a snapshot's points, without loading the models."""
    query = (
        select(MapPoint.model_id, MapPoint.x, MapPoint.y)
        .where(MapPoint.snapshot_id == snapshot_id)
        .order_by(col(MapPoint.id))
    )
    with store.session() as s:
        return {int(m): (float(x), float(y)) for m, x, y in s.exec(query)}


def series_snapshots(
    store: Store, textset_id: int, variant: str, kind: str
) -> list[MapSnapshot]:
    """The snapshots of one (text set, variant, kind) series, newest first."""
    query = (
        select(MapSnapshot)
        .where(
            MapSnapshot.textset_id == textset_id,
            MapSnapshot.variant == variant,
            MapSnapshot.kind == kind,
        )
        .order_by(col(MapSnapshot.id).desc())
    )
    with store.session() as s:
        return list(s.exec(query))


def insert_snapshot(
    store: Store, snapshot: MapSnapshot, points: Iterable[tuple[int, float, float]]
) -> MapSnapshot:
    """Store a snapshot and its (model id, x, y) points in one transaction."""
    points = list(points)
    with store.session() as s:
        snapshot.n_models = len(points)
        s.add(snapshot)
        s.flush()
        rows = [{"snapshot_id": snapshot.id, "model_id": int(m), "x": float(x), "y": float(y)}
                for m, x, y in points]  # fmt: skip
        if rows:  # one executemany, in order (point ids keep it)
            s.connection().execute(insert(MapPoint.__table__), rows)  # type: ignore[attr-defined]
    return snapshot


# --- resampled text sets --------------------------------------------------------------------


def item_weights(store: Store, textset: TextSet) -> tuple[list[float | None], int]:
    """A resampled set's item weights in order, and its parent's size."""
    query = select(TextItem.weight).where(TextItem.textset_id == textset.id)
    with store.session() as s:
        rows = list(s.exec(query.order_by(TextItem.idx)).all())
        parent = s.get(TextSet, textset.parent_id) if textset.parent_id is not None else None
    return rows, (parent.size if parent is not None else len(rows))


def slice_vectors(store: Store, textset: TextSet) -> int:
    """Copy the parent's vectors a resampled set lacks, sliced to its items; how many."""
    if textset.parent_id is None:
        return 0
    with store.session() as s:
        parent = s.get(TextSet, textset.parent_id)
        if parent is None:
            return 0
        index = np.asarray(
            s.exec(
                select(TextItem.source_idx)
                .where(TextItem.textset_id == textset.id)
                .order_by(TextItem.idx)
            ).all(),
            dtype=np.int64,
        )
        have = {
            (v.model_id, v.revision, v.variant, v.kind)
            for v in s.exec(select(Vector).where(Vector.textset_id == textset.id))
        }
        sources = s.exec(
            select(Vector)
            .where(
                Vector.textset_id == parent.id,
                Vector.textset_sha256 == parent.sha256,
                Vector.n == parent.size,
            )
            .order_by(col(Vector.id))
        ).all()
        added = 0
        for v in sources:
            if (v.model_id, v.revision, v.variant, v.kind) in have:
                continue
            counts = v.token_array()
            sliced = Vector(
                    model_id=v.model_id, revision=v.revision, textset_id=textset.id,
                    textset_sha256=textset.sha256, variant=v.variant, kind=v.kind,
                    n=len(index), values=v.array()[index].astype("<f4").tobytes(),
                    token_counts=None if counts is None else counts[index].astype("<i4").tobytes(),
                    truncated=min(v.truncated, len(index)), dtype=v.dtype, device=v.device,
                    scorer_version=v.scorer_version, template_mode=v.template_mode,
                    derived_from=v.id,
            )  # fmt: skip
            s.add(sliced)
            have.add((v.model_id, v.revision, v.variant, v.kind))
            added += 1
    return added
