"""The FAISS KL index: answers equal brute force; persisted, validated, refreshed from the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix, put_vector

from atlas.errors import NotFound, UsageError
from atlas.settings import Settings
from atlas.space import vectors
from atlas.space.index import (
    IndexCorrupt,
    KLIndex,
    index_stem,
    open_index,
    refresh_indexes,
    resolve_mode,
    saved_keys,
)


def brute_force(raw: np.ndarray, q: int, k: int, threshold: float | None = None):
    """Indices and KL of the k nearest rows to row q, by the formula in float64."""
    xi, _ = vectors.prepare(raw, threshold)
    kl = vectors.kl_to(xi[q], xi)
    kl[q] = np.inf
    order = np.lexsort((np.arange(len(kl)), kl))[:k]
    return order, kl[order]


@pytest.mark.parametrize("mode", ["exact", "pca"])
def test_answers_equal_brute_force_kl(mode):
    raw = clustered(120, 300, clusters=5, seed=1)
    ids = [7 * i + 3 for i in range(len(raw))]  # stable ids, not row numbers
    index = KLIndex.build(ids, raw, mode=mode, pca_dims=32)
    assert index.mode == mode and index.size == 120
    n = raw.shape[1]
    for q in (0, 17, 64, 119):
        order, kl = brute_force(raw, q, 10)
        hits = index.search(index.vector(ids[q]), 10, exclude=[ids[q]], rerank=120)
        assert [h[0] for h in hits] == [ids[i] for i in order]
        np.testing.assert_allclose([h[1] / (2 * n) for h in hits], kl, rtol=1e-5)
    # A raw query vector (not stored) placed with the stored threshold.
    probe = raw[3] + np.random.default_rng(5).normal(scale=0.1, size=n)
    hits = index.search(index.centre(probe), 5, rerank=120)
    xi, _ = vectors.prepare(raw)
    expected = vectors.kl_to(vectors.center(vectors.clip(probe, index.threshold)), xi)
    assert [h[0] for h in hits] == [ids[i] for i in np.argsort(expected)[:5]]
    np.testing.assert_allclose([h[1] / (2 * n) for h in hits], np.sort(expected)[:5], rtol=1e-5)


def test_search_edges():
    raw = clustered(6, 20, seed=2)
    index = KLIndex.build([1, 2, 3, 4, 5, 6], raw)
    assert len(index.search(index.vector(1), 50, exclude=[1])) == 5
    assert index.search(index.vector(1), 3, exclude=[1, 2, 3, 4, 5, 6]) == []
    assert 4 in index and 9 not in index
    with pytest.raises(ValueError):
        index.add([6], raw[:1])
    with pytest.raises(ValueError):
        index.search(np.zeros(3), 2)
    with pytest.raises(NotFound):
        index.vector(99)
    assert resolve_mode("auto", 10) == "exact" and resolve_mode("auto", 10**6) == "pca"
    with pytest.raises(UsageError):
        resolve_mode("hnsw", 10)


def test_incremental_add_equals_a_rebuild_with_the_stored_threshold():
    raw = clustered(60, 80, seed=3)
    first = KLIndex.build(range(40), raw[:40])
    first.add(range(40, 60), raw[40:])
    full = KLIndex.build(range(60), raw, threshold=first.threshold)
    assert first.threshold == vectors.clip_threshold(raw[:40])
    for q in (0, 45, 59):
        assert first.search(first.vector(q), 8, exclude=[q]) == full.search(
            full.vector(q), 8, exclude=[q]
        )
        order, kl = brute_force(raw, q, 8, threshold=first.threshold)
        hits = first.search(first.vector(q), 8, exclude=[q])
        assert [h[0] for h in hits] == list(order)
        np.testing.assert_allclose([h[1] / 160 for h in hits], kl, rtol=1e-5)


def test_save_load_and_corruption(tmp_path):
    raw = clustered(30, 40, seed=4)
    index = KLIndex.build(range(100, 130), raw, mode="pca", pca_dims=8)
    stem = tmp_path / "idx" / "base-conditional"
    index.save(stem)
    loaded = KLIndex.load(stem)
    assert loaded.ids() == list(range(100, 130)) and loaded.threshold == index.threshold
    assert loaded.search(loaded.vector(105), 4, exclude=[105]) == index.search(
        index.vector(105), 4, exclude=[105]
    )
    manifest = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**manifest, "model_ids": [1, 2]}))
    with pytest.raises(IndexCorrupt):
        KLIndex.load(stem)
    stem.with_suffix(".json").write_text(json.dumps({**manifest, "dim": 41}))
    with pytest.raises(IndexCorrupt):
        KLIndex.load(stem)
    stem.with_suffix(".json").write_text("{not json")
    with pytest.raises(IndexCorrupt):
        KLIndex.load(stem)
    stem.with_suffix(".json").write_text(json.dumps(manifest))
    stem.with_suffix(".faiss").write_bytes(b"garbage")
    with pytest.raises(IndexCorrupt):
        KLIndex.load(stem)


# --- the store-backed index (SQLite and Postgres) --------------------------------------------


def test_open_index_builds_refreshes_and_rebuilds(store, monkeypatch):
    settings = Settings.from_env()
    raw = clustered(24, 50, seed=5)
    ts = make_textset(store, 50)
    names = [f"org/m{i:02d}" for i in range(24)]
    models = put_matrix(store, ts, names[:16], raw[:16])

    index, what = open_index(store, settings, ts)
    assert (what.action, what.reason) == ("built", "no index yet")
    stem = index_stem(settings, ts, "base", "conditional")
    manifest = json.loads(stem.with_suffix(".json").read_text())
    assert manifest["textset_sha256"] == ts.sha256 and manifest["n_models"] == 16
    assert manifest["high_water_mark"] == list(store.high_water_mark())
    assert manifest["clip_threshold"] == vectors.clip_threshold(raw[:16])
    assert manifest["model_ids"] == [m.id for m in models]
    assert open_index(store, settings, "synth")[1].action == "none"

    # New models are added incrementally with the stored threshold.
    more = put_matrix(store, ts, names[16:20], raw[16:20])
    index, what = open_index(store, settings, ts)
    assert (what.action, what.added) == ("added", 4)
    assert index.threshold == manifest["clip_threshold"]
    order, kl = brute_force(raw[:20], 18, 5, threshold=index.threshold)
    hits = index.search(index.vector(more[2].id), 5, exclude=[more[2].id])
    ids = [m.id for m in models + more]
    assert [h[0] for h in hits] == [ids[i] for i in order]
    np.testing.assert_allclose([h[1] / 100 for h in hits], kl, rtol=1e-5)
    assert open_index(store, settings, ts)[1].action == "none"

    # Vectors of another key or text set change the high-water mark, not this index.
    put_vector(store, ts, names[0], raw[0], variant="cot")
    assert open_index(store, settings, ts)[1].action == "none"

    # A rescored model invalidates the index: full rebuild with a fresh threshold.
    put_vector(store, ts, names[3], raw[3] + 1.0)
    index, what = open_index(store, settings, ts)
    assert (what.action, what.reason) == ("built", "models were rescored or removed")
    fresh = np.vstack([raw[:3], raw[3:4] + 1.0, raw[4:20]]).astype(np.float32)
    assert index.threshold == vectors.clip_threshold(fresh)

    # Growth beyond the fraction since the full build: rebuild (new threshold).
    put_matrix(store, ts, names[20:], raw[20:])
    _, what = open_index(store, settings, ts)
    assert what.action == "added"
    stem.with_suffix(".json").write_text(
        json.dumps({**json.loads(stem.with_suffix(".json").read_text()), "built_models": 10})
    )
    put_vector(store, ts, "org/late", raw[5] + 0.5)
    assert open_index(store, settings, ts)[1].reason.startswith("models grew")

    # Missing, corrupt, foreign files: rebuilt from the store.
    stem.with_suffix(".faiss").unlink()
    assert open_index(store, settings, ts)[1].reason == "no index yet"
    stem.with_suffix(".faiss").write_bytes(b"\x00" * 64)
    assert open_index(store, settings, ts)[1].reason.startswith("corrupt index")
    manifest = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**manifest, "textset_sha256": "0" * 64}))
    assert open_index(store, settings, ts)[1].action == "built"
    assert open_index(store, settings, ts, rebuild=True)[1].reason == "rebuild requested"

    # The compressed mode, by setting.
    monkeypatch.setenv("ATLAS_INDEX_MODE", "pca")
    index, what = open_index(store, settings, ts)
    assert what.action == "built" and index.mode == "pca" and index.size == 25
    monkeypatch.setenv("ATLAS_INDEX_MODE", "hnsw")
    with pytest.raises(UsageError):
        open_index(store, settings, ts)


def test_refresh_indexes_and_kinds(store):
    settings = Settings.from_env()
    raw = clustered(8, 30, seed=6)
    ts = make_textset(store, 30)
    names = [f"org/m{i}" for i in range(8)]
    put_matrix(store, ts, names[:6], raw[:6])
    put_matrix(store, ts, names[:6], raw[:6] - 2.0 - np.arange(30) / 10, kind="unconditional")
    pmi, _ = open_index(store, settings, ts, "base", "pmi")
    np.testing.assert_allclose(
        pmi.vector(pmi.ids()[0]), vectors.center(vectors.clip(np.arange(30) / 10 + 2.0,
                                                               pmi.threshold)), atol=1e-5
    )
    assert open_index(store, settings, ts, "cot", "unconditional")[0].ids() == pmi.ids()
    assert sorted(saved_keys(settings, ts)) == [("base", "pmi"), ("base", "unconditional")]

    done = refresh_indexes(store, settings, ts)
    assert {k: v.action for k, v in done.items()} == {
        "synth/base/conditional": "built", "synth/base/pmi": "none",
        "synth/base/unconditional": "none",
    }
    put_matrix(store, ts, names[6:], raw[6:])
    put_matrix(store, ts, names[6:], raw[6:] - 1.0, kind="unconditional")
    done = refresh_indexes(store, settings)
    assert {k: (v.action, v.added) for k, v in done.items()} == {
        "synth/base/conditional": ("added", 2), "synth/base/pmi": ("added", 2),
        "synth/base/unconditional": ("added", 2),
    }
    with pytest.raises(NotFound):
        open_index(store, settings, ts, "repeat", "conditional")


def test_compressed_shares_the_full_vectors_and_agrees():
    raw = clustered(80, 120, clusters=4, seed=7)
    exact = KLIndex.build(range(80), raw)
    pca = exact.compressed(16)
    built = KLIndex.build(range(80), raw, mode="pca", pca_dims=16)
    assert pca.mode == "pca" and pca.flat is exact.flat and pca.pca_dims == 16
    for q in (0, 33, 79):
        want = exact.search(exact.vector(q), 10, exclude=[q])
        assert pca.search(pca.vector(q), 10, exclude=[q], rerank=80) == want
        assert built.search(built.vector(q), 10, exclude=[q], rerank=80) == want
