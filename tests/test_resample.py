"""Resampled text sets (Oyama et al. 2025a): the sampling math by hand, then the real store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix, put_vector
from sqlmodel import select

from atlas.errors import TextSetError, UsageError
from atlas.resample import draw, probabilities, resample, slice_vectors
from atlas.space import matrices, vectors
from atlas.space.matrices import weights_of
from atlas.space.vectors import weigh
from atlas.store.tables import TextItem, TextSet, Vector


def test_variance_probabilities_follow_the_formula():
    L = clustered(12, 40, seed=1)
    pi = probabilities(L, 40, "variance")
    clipped = np.maximum(L, np.quantile(L, 0.02))
    Q = clipped - clipped.mean(1, keepdims=True) - clipped.mean(0, keepdims=True) + clipped.mean()
    want = np.array([sum(Q[i, s] ** 2 for i in range(12)) for s in range(40)])
    np.testing.assert_allclose(pi, want / want.sum(), rtol=1e-10)
    np.testing.assert_allclose(probabilities(None, 8, "uniform"), np.full(8, 1 / 8))
    with pytest.raises(UsageError):
        probabilities(L[:1], 40, "variance")
    with pytest.raises(UsageError):
        probabilities(L, 40, "stratified")


def test_draw_merges_repeats_into_weights():
    pi = np.array([0.5, 0.25, 0.125, 0.125])
    index, weights = draw(pi, 10, seed=3)
    drawn = np.random.default_rng(3).choice(4, size=10, replace=True, p=pi)
    for s, w in zip(index, weights, strict=True):
        m = int((drawn == s).sum())
        assert m > 0 and w == pytest.approx(np.sqrt(m / (10 * pi[s])))
    assert list(index) == sorted(set(drawn.tolist()))


def test_weighted_sum_is_unbiased_for_the_full_sum():
    d = np.random.default_rng(0).normal(size=50) ** 2
    pi = d / d.sum() * 0.5 + 0.5 / 50
    estimates = []
    for seed in range(400):
        index, w = draw(pi, 20, seed)
        estimates.append(float((w**2 * d[index]).sum()))
    assert np.mean(estimates) == pytest.approx(d.sum(), rel=0.05)


def test_weigh_gives_weighted_squared_distances():
    rng = np.random.default_rng(2)
    L = rng.normal(size=(5, 9)) - 30
    u = rng.uniform(0.5, 2.0, size=9)
    assert weigh(L, None) is L
    np.testing.assert_allclose(weigh(L, np.ones(9)), L, atol=1e-12)
    Xi = vectors.center(weigh(L, u))
    for i in range(5):
        m = (L[i] * u).sum() / u.sum()
        np.testing.assert_allclose(Xi[i], u * (L[i] - m), atol=1e-10)
    kl = vectors.kl_matrix(Xi)
    d = L[1] - L[2]
    dm = (d * u).sum() / u.sum()
    assert kl[1, 2] == pytest.approx((u**2 * (d - dm) ** 2).sum() / (2 * 9))
    # A per-model offset (the mean log-likelihood) does not move a model.
    shifted = L.copy()
    shifted[0] += 7.0
    np.testing.assert_allclose(vectors.kl_matrix(vectors.center(weigh(shifted, u))), kl, atol=1e-9)


def _scored(store, n=60, models=8):
    ts = make_textset(store, n, "full")
    L = clustered(models, n, seed=4)
    tokens = np.arange(1, n + 1)
    put_matrix(store, ts, [f"org/m{i}" for i in range(models)], L, tokens=tokens)
    put_vector(store, ts, "org/m0", L[0] - 1, kind="unconditional")
    return ts, L


def test_resample_stores_weights_and_slices_vectors(store):
    ts, L = _scored(store)
    result = resample(store, "full", n=30, name="half", method="variance", seed=1)
    new = result.textset
    assert result.created and new.parent_id == ts.id and result.draws == 30
    pi = probabilities(L, 60, "variance")
    index, weights = draw(pi, 30, 1)
    assert new.size == len(index)
    with store.session() as s:
        items = s.exec(select(TextItem).where(TextItem.textset_id == new.id)
                       .order_by(TextItem.idx)).all()  # fmt: skip
    assert [it.source_idx for it in items] == index.tolist()
    assert [it.prompt for it in items] == [f"prompt {i}" for i in index]
    np.testing.assert_allclose(weights_of(store, new), weights * np.sqrt(len(index) / 60))
    # 8 conditional + 1 unconditional pieces sliced, with their provenance.
    assert result.sliced == 9
    raw = matrices.load(store, new, weighted=False)
    np.testing.assert_allclose(raw.values, L[:, index].astype(np.float32), rtol=0)
    np.testing.assert_allclose(raw.tokens, np.full(8, (index + 1).mean()))
    with store.session() as s:
        sliced = s.exec(select(Vector).where(Vector.textset_id == new.id)).all()
        sources = {v.id for v in s.exec(select(Vector).where(Vector.textset_id == ts.id))}
    assert {v.derived_from for v in sliced} <= sources and len(sliced) == 9
    assert all(v.textset_sha256 == new.sha256 for v in sliced)
    # The source's clip thresholds, recorded when drawn (m0's PMI is 1 on every text).
    full = L.astype(np.float32)
    assert new.clip_thresholds == {
        "base/conditional": vectors.clip_threshold(full),
        "base/pmi": pytest.approx(1.0, abs=1e-5),
        "base/unconditional": vectors.clip_threshold(full[:1] - 1),
    }
    # The matrix every index, map and analysis reads: clipped at the source's threshold, then
    # weighted, and not clipped again downstream.
    weighted = matrices.load(store, new)
    clipped = vectors.clip(raw.values, vectors.clip_threshold(full))
    np.testing.assert_allclose(weighted.values, weigh(clipped, weights_of(store, new)))
    assert weighted.prepared and matrices.threshold_of(weighted) == float("-inf")
    assert not raw.prepared and not matrices.load(store, ts).prepared
    # Same arguments again: a no-op that adds only what is missing.
    again = resample(store, "full", n=30, name="half", method="variance", seed=1)
    assert not again.created and again.sliced == 0 and again.textset.sha256 == new.sha256
    put_vector(store, ts, "org/late", L[1] + 0.5)
    assert slice_vectors(store, new) == 1


def test_resample_refusals_change_nothing(store):
    _scored(store)
    resample(store, "full", n=20, name="quarter", method="uniform", seed=0)
    with pytest.raises(TextSetError):
        resample(store, "full", n=20, name="quarter", method="uniform", seed=5)
    with pytest.raises(UsageError):
        resample(store, "quarter", n=5, name="again")
    make_textset(store, 10, "unscored")
    with pytest.raises(UsageError):
        resample(store, "unscored", n=5, name="nothing", method="variance")
    with store.session() as s:
        names = sorted(t.name for t in s.exec(select(TextSet)))
    assert names == ["full", "quarter", "unscored"]


def test_cli_resample_then_nearest_uses_weights(cli, tmp_path):
    from atlas.store import Store

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(url)
    _, L = _scored(store)
    store.close()
    bad = cli("--db", url, "textset", "resample", "full", "--n", "10", "--name", "x",
              "--method", "stratified")  # fmt: skip
    assert bad.exit_code == 2 and "stratified" in bad.stderr and "Traceback" not in bad.stderr
    missing = cli("--db", url, "textset", "resample", "nope", "--n", "10", "--name", "x")
    assert missing.exit_code == 4
    ok = cli("--db", url, "textset", "resample", "full", "--n", "30", "--name", "half",
             "--seed", "2", "--json")  # fmt: skip
    assert ok.exit_code == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["draws"] == 30 and summary["sliced_vectors"] == 9 and summary["created"]
    got = cli("--db", url, "nearest", "org/m0", "--textset", "half", "-k", "7", "--json")
    assert got.exit_code == 0, got.stderr
    index, weights = draw(probabilities(L, 60, "variance"), 30, 2)
    # clipped at the full set's threshold, then weighted; no second clip
    full = L.astype(np.float32)
    sub = vectors.clip(full[:, index], vectors.clip_threshold(full))
    Xi = vectors.center(weigh(sub, weights * np.sqrt(len(index) / 60)))
    kl = vectors.kl_matrix(Xi)[0]
    want = sorted(range(1, 8), key=lambda j: kl[j])
    rows = json.loads(got.stdout)
    assert [r["model"] for r in rows] == [f"org/m{j}" for j in want]
    np.testing.assert_allclose([r["kl"] for r in rows], kl[want], rtol=1e-6)
    # A PCA map of the resampled set is fitted on the same rows (no second clip).
    fitted = cli("--db", url, "map", "refresh", "--textset", "half", "--method", "pca",
                 "--json")  # fmt: skip
    assert fitted.exit_code == 0, fitted.stderr
    assert json.loads(fitted.stdout)["clip_threshold"] is None
