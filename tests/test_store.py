"""The store: migrations up, down and up again, no drift, constraints, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from atlas.errors import StoreUnavailable
from atlas.store import Store, queries
from atlas.store.db import alembic_config
from atlas.store.tables import HubModel, TextSet, Vector

TABLES = {"models", "textsets", "text_items", "vectors", "map_snapshots", "map_points",
          "sync_runs", "state"}


def _tables(store: Store) -> set[str]:
    return set(inspect(store.engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(db_url):
    store = Store(db_url, migrate=False)
    assert store.current_revision() is None
    assert store.ensure_schema() is True
    assert store.current_revision() == store.head_revision()
    assert _tables(store) == TABLES
    store.downgrade("base")
    assert store.current_revision() is None
    assert _tables(store) == set()
    store.upgrade()
    assert _tables(store) == TABLES
    assert store.ensure_schema() is False
    store.close()


def test_no_drift_between_models_and_migrations(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == []


def test_single_head():
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1


def _vector(model_id, textset_id, values, variant="base", kind="conditional", rev="r1"):
    arr = np.asarray(values, dtype="<f4")
    return Vector(model_id=model_id, revision=rev, textset_id=textset_id, textset_sha256="x" * 64,
                  variant=variant, kind=kind, n=len(arr), values=arr.tobytes(),
                  dtype="float32", device="cpu", scorer_version="test")


def test_duplicates_are_impossible(store):
    m = store.upsert_model("org/a", revision="r1", status="scored")
    with store.session() as s:
        t = TextSet(name="t", kind="pairs", sha256="x" * 64, size=2)
        s.add(t)
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(HubModel(repo_id="org/a"))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(TextSet(name="t", kind="pairs", sha256="y" * 64, size=1))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(_vector(m.id, t.id, [1, 2]))
        s.add(_vector(m.id, t.id, [3, 4]))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(_vector(m.id, t.id, [1, 2], variant="bogus"))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(HubModel(repo_id="org/b", status="bogus"))


def test_put_vectors_is_atomic_and_replaces(store):
    m = store.upsert_model("org/a", revision="r1", status="scored")
    with store.session() as s:
        t = TextSet(name="t", kind="pairs", sha256="x" * 64, size=2)
        s.add(t)
    store.put_vectors(
        [_vector(m.id, t.id, [1, 2]), _vector(m.id, t.id, [3, 4], kind="unconditional")]
    )
    store.put_vectors([_vector(m.id, t.id, [5, 6])])
    pieces = store.vector_pieces(textset_id=t.id)
    assert sorted((p.kind, tuple(p.array())) for p in pieces) == [
        ("conditional", (5.0, 6.0)), ("unconditional", (3.0, 4.0))]
    # A failing batch leaves nothing behind.
    with pytest.raises(IntegrityError):
        store.put_vectors([_vector(m.id, t.id, [7, 8], variant="cot"),
                           _vector(m.id, t.id, [9, 9], variant="bogus")])
    assert len(store.vector_pieces(textset_id=t.id)) == 2
    chosen = queries.chosen_pieces(store, t, "base", "conditional")
    assert [(m.repo_id, tuple(v.array())) for v, m in chosen.values()] == [("org/a", (5.0, 6.0))]
    assert store.high_water_mark()[0] == 2


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(StoreUnavailable, match="cannot open database"):
        Store("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable) as info:
        Store("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(info.value)
    with pytest.raises(StoreUnavailable, match="invalid database URL"):
        Store("not a url")


def test_state_roundtrip(store):
    assert store.get_state("hub") == {}
    store.set_state("hub", {"watermark": "2026-01-01"})
    store.set_state("hub", {"watermark": "2026-02-01"})
    assert store.get_state("hub") == {"watermark": "2026-02-01"}
