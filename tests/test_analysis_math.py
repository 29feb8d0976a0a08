"""The analyses' numbers on small matrices, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atlas.analyses import kl_validation as validate
from atlas.analyses import lineage, pmi, predict, shift

# --- PMI ---------------------------------------------------------------------------------------
COND = np.array([[-1, -2, -3, -4], [-2, -2, -2, -2], [-1, -3, -1, -3]], dtype=float)
UNCOND = np.array([[-2, -2, -4, -6], [-3, -4, -5, -6], [-1, -5, -1, -3]], dtype=float)
# PMI = [[1, 0, 1, 2], [1, 2, 3, 4], [0, 2, 0, 0]]


def test_pmi_mi_and_variance_approximation_by_hand():
    result = pmi.analyze_matrices(COND, UNCOND, ["a", "b", "c"], textset="t")
    # means of the PMI rows
    assert result.mi == pytest.approx([1.0, 2.5, 0.5])
    # centred rows [0,-1,0,1], [-1.5,-.5,.5,1.5], [-.5,1.5,-.5,-.5]; half their variance
    assert result.variance_approx == pytest.approx([0.25, 0.625, 0.375])
    assert result.mean_conditional == pytest.approx([-2.5, -2.0, -2.0])
    # Pearson by the textbook formula; Spearman from ranks [2,3,1] vs [1,3,2]: 1 - 6*2/(3*8)
    dx = np.array([1, 2.5, 0.5]) - 4 / 3
    dy = np.array([0.25, 0.625, 0.375]) - 1.25 / 3
    assert result.pearson == pytest.approx((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))
    assert result.pearson == pytest.approx(0.83863, abs=1e-5)
    assert result.spearman == pytest.approx(0.5)


def test_pmi_table_has_one_row_per_model_with_each_textset():
    one = pmi.analyze_matrices(COND, UNCOND, ["a", "b", "c"], textset="t1")
    two = pmi.analyze_matrices(COND[:2] - 1, UNCOND[:2], ["a", "b"], textset="t2")
    rows = pmi.table_rows({"t1": one, "t2": two})
    assert [r["model"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["textsets"]["t1"] == {"mean_pmi": 1.0, "mean_conditional": -2.5}
    assert rows[0]["textsets"]["t2"] == {"mean_pmi": 0.0, "mean_conditional": -3.5}
    assert set(rows[2]["textsets"]) == {"t1"}
    data = one.as_dict()
    assert data["models"][1] == {
        "model": "b", "mi": 2.5, "variance_approx": 0.625, "mean_conditional": -2.0
    }


# --- prompt shift ------------------------------------------------------------------------------
BASE = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=float)
D_COT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
D_REP = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=float)
D_BOTH = np.array([[1, 1, 0, 1], [0, 1, 1, 0], [2, 0, 2, 0]], dtype=float)
COT, REP, BOTH = BASE + D_COT, BASE + D_REP, BASE + D_BOTH


def test_shift_vectors_and_additive_errors_by_hand():
    d = shift.shift_vectors(BASE, COT, REP, BOTH)
    np.testing.assert_allclose(d["cot"], D_COT)
    np.testing.assert_allclose(d["repeat+cot"], D_BOTH)
    # row 0: diff [0,0,0,-1] over ||[1,1,0,1]||; row 1 exact; row 2: ||[-1,1,-1,1]|| / sqrt(8)
    errors = shift.additive_errors(BASE, COT, REP, BOTH)
    assert errors == pytest.approx([1 / math.sqrt(3), 0.0, 2 / math.sqrt(8)])
    result = shift.analyze_matrices(BASE, COT, REP, BOTH, ["a", "b", "c"])
    s = result.summary()
    assert s["additive"]["median"] == pytest.approx(1 / math.sqrt(3))
    assert s["additive"]["mean"] == pytest.approx((1 / math.sqrt(3) + 2 / math.sqrt(8)) / 3)


def test_shift_centred_errors_follow_double_centring():
    def dc(m):
        return m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()

    b, c, r, both = dc(BASE), dc(COT), dc(REP), dc(BOTH)
    expected = [
        np.linalg.norm(b[i] + (c[i] - b[i]) + (r[i] - b[i]) - both[i])
        / np.linalg.norm(both[i] - b[i])
        for i in range(3)
    ]
    got = shift.centred_additive_errors(BASE, COT, REP, BOTH)
    assert got == pytest.approx(expected)


def test_shift_mean_change_correlation_by_hand():
    # Δmean both [0.75, 0.5, 1.0] vs Δmean cot + Δmean repeat [0.5, 0.5, 1.0]: r = sqrt(3)/2
    assert shift.mean_changes(BASE, BOTH) == pytest.approx([0.75, 0.5, 1.0])
    r = shift.mean_change_correlation(BASE, COT, REP, BOTH)
    assert r == pytest.approx(math.sqrt(3) / 2)


def test_shift_transfer_uses_mean_shift_of_the_others():
    # model 0: others' mean [.5,1,0,0] vs own [1,0,0,0] -> sqrt(1.25); model 2: 0.5/sqrt(2)*...
    errors = shift.transfer_errors(BASE, COT)
    assert errors == pytest.approx([math.sqrt(1.25), math.sqrt(1.25), 0.5])


def test_shift_projection_lies_in_the_span_and_keeps_distances():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 12))
    shifted = {v: base + rng.normal(size=12) + 0.1 * rng.normal(size=(5, 12))
               for v in ("cot", "repeat", "repeat+cot")}
    b2, s2, ratio = shift.projection(base, shifted)
    assert b2.shape == (5, 2) and all(p.shape == (5, 2) for p in s2.values())
    assert 0 < ratio[1] <= ratio[0] <= 1
    # the projection is onto an orthonormal basis, so 2-D distances never exceed N-D ones
    for v, pts in s2.items():
        d2 = np.linalg.norm(pts - b2, axis=1)
        dn = np.linalg.norm(shifted[v] - base, axis=1)
        assert np.all(d2 <= dn + 1e-9)


# --- KL validation -----------------------------------------------------------------------------
LOGP = np.array([
    [[-1, -2], [-2, -4], [-3, -2]],  # responses of model 0, scored by models 0, 1, 2
    [[-5, -5], [-3, -3], [-4, -3]],
    [[-2, -2], [-3, -1], [-1, -1]],
], dtype=float)


def test_mc_kl_and_symmetrisation_by_hand():
    kl = validate.mc_kl(LOGP)
    assert kl == pytest.approx(np.array([[0, 1.5, 1.0], [2.0, 0, 0.5], [1.0, 1.0, 0]]))
    sym = validate.symmetrise(kl)
    assert validate.upper_pairs(sym) == pytest.approx([1.75, 1.0, 0.75])
    # several samples per prompt are averaged first
    four = np.stack([LOGP, LOGP + 1.0], axis=3)
    assert validate.mc_kl(four) == pytest.approx(kl)
    # a subset of prompts
    assert validate.mc_kl(LOGP, np.array([1, 1]))[0, 1] == pytest.approx(2.0)


def test_vector_kl_matches_explicit_formula():
    L = COND
    xi = L - L.mean(axis=1, keepdims=True)
    n = L.shape[1]
    expected = np.array([[np.sum((xi[i] - xi[j]) ** 2) / (2 * n) for j in range(3)]
                         for i in range(3)])
    assert validate.vector_kl(L) == pytest.approx(expected)


def test_compare_correlations_and_bootstrap():
    vec = validate.vector_kl(COND)
    out = validate.compare(LOGP, vec, n_boot=200, seed=1)
    mc_pairs, vec_pairs = [1.75, 1.0, 0.75], validate.upper_pairs(vec)
    assert out.pearson == pytest.approx(np.corrcoef(mc_pairs, vec_pairs)[0, 1])
    lo, hi = out.pearson_ci
    assert -1 <= lo <= hi <= 1
    # the bootstrap is the percentile interval over resampled prompt indices
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    rng = np.random.default_rng(7)
    reps = [x[rng.integers(0, 8, size=8)].mean() for _ in range(300)]
    expected = np.percentile(reps, [2.5, 97.5])
    got = validate.bootstrap_ci(lambda idx: x[idx].mean(), 8, n_boot=300, seed=7)
    assert got == pytest.approx(tuple(expected))


def test_correlation_helpers_handle_degenerate_input():
    assert math.isnan(validate.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(validate.spearman([1], [2]))
    assert validate.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert validate.plain({"a": np.float64("nan"), "b": np.arange(2)}) == {"a": None, "b": [0, 1]}


# --- performance prediction ---------------------------------------------------------------------
def _ridge_by_hand(X, y, Xt, alpha):
    xm, ym = X.mean(axis=0), y.mean()
    Xc = X - xm
    w = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (y - ym))
    return (Xt - xm) @ w + ym


def test_oof_predictions_match_closed_form_ridge():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * rng.normal(size=12)
    folds = predict.random_folds(12, seed=3, n_splits=4)
    got = predict.oof_predictions(X, y, folds, alphas=[2.0])
    expected = np.empty(12)
    for train, test in folds:
        expected[test] = _ridge_by_hand(X[train], y[train], X[test], 2.0)
    assert got == pytest.approx(expected)
    clipped = predict.oof_predictions(X, y, folds, alphas=[2.0], clip_range=(-1.0, 1.0))
    assert clipped == pytest.approx(np.clip(expected, -1.0, 1.0))


@pytest.mark.parametrize(("n", "p"), [(40, 500), (60, 3), (30, 1)])
def test_gram_ridge_equals_sklearn_ridgecv(n, p):
    """The shared-Gram path picks the same alpha and predicts the same as RidgeCV."""
    rng = np.random.default_rng(n + p)
    X = rng.normal(size=(n, p)) + rng.normal(size=(1, p))
    y = X @ rng.normal(size=p) * 0.1 + rng.normal(size=n) + 5
    K = X @ X.T
    for train, test in predict.random_folds(n, seed=0):
        want, want_alpha = predict.fit_predict(X[train], y[train], X[test])
        got, got_alpha = predict.gram_fit_predict(K, y, train, test)
        assert got_alpha == want_alpha
        assert got == pytest.approx(want, rel=1e-7, abs=1e-7)


def test_group_folds_never_split_a_group():
    groups = ["llama", "llama", "qwen", "qwen", "qwen", "gemma", "mistral", "phi", "phi"]
    folds = predict.group_folds(groups, n_splits=3)
    assert len(folds) == 3
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen) == list(range(len(groups)))
    for train, test in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert predict.group_folds(["a", "a", "a"]) == []


def test_prediction_beats_the_mean_loglik_baseline_and_predicts_unscored():
    rng = np.random.default_rng(1)
    n, dims = 30, 40
    L = rng.normal(size=(n, dims)) - 3.0
    w = rng.normal(size=dims)
    Q = L - L.mean(axis=1, keepdims=True) - L.mean(axis=0) + L.mean()
    y = 50 + 5 * (Q @ w)
    names = [f"m{i}" for i in range(n)]
    scores = {names[i]: float(y[i]) for i in range(n - 3)}
    groups = [f"type{i % 6}" for i in range(n)]
    res = predict.predict_matrices(L, names, groups, scores, alphas=[0.1, 1.0, 10.0],
                                   seeds=(0, 1), n_splits=5)
    assert res.ridge["group"].pearson > 0.8
    assert res.ridge["random"].pearson > 0.8
    assert len(res.ridge["random"].per_seed) == 2
    assert abs(res.baseline["random"].pearson) < res.ridge["random"].pearson
    assert set(res.predicted) == set(names[-3:])
    lo, hi = res.clip_range
    assert all(lo <= p <= hi for p in res.predicted.values())
    assert res.as_dict()["n_labelled"] == n - 3


def test_read_scores(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("model,avg,other\na/b,61.5,x\nc/d,,y\ne/f,70,z\n")
    assert predict.read_scores(path, "avg") == {"a/b": 61.5, "e/f": 70.0}
    from atlas.errors import UsageError

    with pytest.raises(UsageError, match="needs a 'model' column"):
        predict.read_scores(path, "missing")


# --- lineage -----------------------------------------------------------------------------------
def test_lineage_precision_by_hand():
    names = ["A", "A1", "A2", "B", "B1", "X"]
    pos = np.array([0.0, 1.0, 3.0, 10.0, 12.5, 1.8])
    kl = (pos[:, None] - pos[None, :]) ** 2
    bases = {"A1": ["A"], "A2": ["a"], "B1": ["B"], "X": ["Z"]}  # ids compare case-insensitively
    res = lineage.evaluate(kl, names, bases, ks=(1, 2))
    assert [r.model for r in res.rows] == ["A1", "A2", "B1"]
    # A1: X, A, ... ; A2: X, A1, ... ; B1: B, A2, ...
    assert res.precision[1] == pytest.approx(1 / 3)
    assert res.precision[2] == pytest.approx(1 / 2)
    assert res.hit[2] == pytest.approx(1.0)
    assert res.chance == pytest.approx((0.4 + 0.4 + 0.2) / 3)
    rows = {r.model: r for r in res.rows}
    assert rows["A1"].relations == ["other", "base"]
    assert rows["A2"].relations == ["other", "sibling"]
    assert [rows[m].base_rank for m in ("A1", "A2", "B1")] == [2, 3, 1]
    assert rows["A2"].first_relative_rank == 2
    assert rows["A1"].kl_nearest_other == pytest.approx(0.64)
    assert rows["B1"].kl_nearest_other == pytest.approx(9.5**2)


def test_lineage_relatives():
    rel = lineage.relatives(["A", "A1", "A2", "C"], {"A1": ["A"], "A2": ["A"], "C": ["A1"]})
    assert rel == {"A1": {"A": "base", "A2": "sibling"}, "A2": {"A": "base", "A1": "sibling"},
                   "C": {"A1": "base"}}


# --- plots -------------------------------------------------------------------------------------
def test_plots_write_png(tmp_path):
    res = pmi.analyze_matrices(COND, UNCOND, ["a", "b", "c"], textset="t")
    path = pmi.plot(res, tmp_path / "pmi.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = shift.analyze_matrices(BASE, COT, REP, BOTH, ["a", "b", "c"], textset="t")
    assert shift.plot(s, tmp_path / "shift.png").stat().st_size > 1000
