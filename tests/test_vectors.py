"""The vector math against the formulas, worked by hand on a 3 x 4 matrix."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.space import vectors

# Three models, four texts.
L = np.array(
    [
        [-10.0, -20.0, -30.0, -40.0],
        [-12.0, -18.0, -33.0, -37.0],
        [-50.0, -5.0, -25.0, -40.0],
    ]
)


def test_clip_threshold_is_the_2nd_percentile_of_the_whole_matrix():
    # Sorted values: -50, -40, -40, -37, -33, -30, -25, ...; numpy's linear quantile at 0.02
    # over 12 values sits at position 0.02 * 11 = 0.22 between -50 and -40.
    assert vectors.clip_threshold(L) == pytest.approx(-50.0 + 0.22 * 10.0)
    assert vectors.clip_threshold(L, q=0.5) == pytest.approx((-30.0 - 25.0) / 2)
    with pytest.raises(ValueError):
        vectors.clip_threshold(np.zeros((0, 4)))


def test_clip_raises_values_below_the_threshold():
    clipped = vectors.clip(L, -35.0)
    expected = L.copy()
    expected[0, 3] = expected[1, 3] = expected[2, 0] = expected[2, 3] = -35.0
    np.testing.assert_array_equal(clipped, expected)
    assert clipped.dtype == np.float64
    np.testing.assert_array_equal(vectors.clip(L[0], -25.0), [-10.0, -20.0, -25.0, -25.0])


def test_center_subtracts_each_models_own_mean():
    xi = vectors.center(L)
    # Row means: -25, -25, -30.
    np.testing.assert_allclose(xi[0], [15.0, 5.0, -5.0, -15.0])
    np.testing.assert_allclose(xi[1], [13.0, 7.0, -8.0, -12.0])
    np.testing.assert_allclose(xi[2], [-20.0, 25.0, 5.0, -10.0])
    np.testing.assert_allclose(vectors.center(L[2]), xi[2])


def test_double_center():
    q = vectors.double_center(L)
    # Column means: -24, -43/3, -88/3, -39; grand mean -80/3.
    row = np.array([-25.0, -25.0, -30.0])
    col = np.array([-24.0, -43.0 / 3, -88.0 / 3, -39.0])
    grand = -80.0 / 3
    for i in range(3):
        for s in range(4):
            assert q[i, s] == pytest.approx(L[i, s] - row[i] - col[s] + grand)
    np.testing.assert_allclose(q.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(q.sum(axis=1), 0.0, atol=1e-12)
    # Only the row centering matters for distances.
    xi = vectors.center(L)
    assert np.sum((q[0] - q[2]) ** 2) == pytest.approx(np.sum((xi[0] - xi[2]) ** 2))


def test_kl_by_hand():
    xi = vectors.center(L)
    # xi_0 - xi_1 = [2, -2, 3, -3]: squared norm 26, N = 4, so KL = 26 / 8.
    # xi_0 - xi_2 = [35, -20, -10, -5]: 1225 + 400 + 100 + 25 = 1750, KL = 1750 / 8.
    # xi_1 - xi_2 = [33, -18, -13, -2]: 1089 + 324 + 169 + 4 = 1586, KL = 1586 / 8.
    expected = np.array(
        [
            [0.0, 26 / 8, 1750 / 8],
            [26 / 8, 0.0, 1586 / 8],
            [1750 / 8, 1586 / 8, 0.0],
        ]
    )
    np.testing.assert_allclose(vectors.kl_matrix(xi), expected)
    np.testing.assert_allclose(vectors.kl_to(xi[0], xi), expected[0])
    np.testing.assert_allclose(vectors.sq_distances(xi[1], xi), expected[1] * 8)


def test_kl_matrix_equals_the_variance_identity():
    # ||xi_i - xi_j||^2 = N * Var_s(l_i(x_s) - l_j(x_s)).
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 40)) * 3 - 20
    kl = vectors.kl_matrix(vectors.center(raw))
    for i in range(5):
        for j in range(5):
            assert kl[i, j] == pytest.approx(np.var(raw[i] - raw[j]) / 2, abs=1e-9)


def test_prepare_clips_then_centres():
    xi, threshold = vectors.prepare(L)
    assert threshold == pytest.approx(-47.8)
    np.testing.assert_allclose(xi, vectors.center(vectors.clip(L, -47.8)))
    xi2, t2 = vectors.prepare(L, threshold=-35.0)
    assert t2 == -35.0
    np.testing.assert_allclose(xi2[2], vectors.center(np.array([-35.0, -5.0, -25.0, -35.0])))


def test_kl_per_token_and_mean_tokens():
    tokens = np.array([[4, 6, 5, 5], [10, 10, 10, 10]])
    assert vectors.mean_tokens(tokens[0]) == 5.0
    assert vectors.mean_tokens(tokens) == 7.5
    np.testing.assert_allclose(vectors.kl_per_token(np.array([10.0, 2.5]), 5.0), [2.0, 0.5])
    np.testing.assert_allclose(
        vectors.kl_per_token(np.array([10.0, 20.0]), np.array([5.0, 10.0])), [2.0, 2.0]
    )
    with pytest.raises(ValueError):
        vectors.kl_per_token(1.0, 0.0)


def test_pmi_is_conditional_minus_unconditional():
    uncond = L - np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(vectors.pmi(L, uncond), np.tile([1.0, 2.0, 3.0, 4.0], (3, 1)))
    with pytest.raises(ValueError):
        vectors.pmi(L, L[:2])


# --- matrices assembled from a real store (SQLite and Postgres) ---------------------------------


def test_load_assembles_kinds_and_pmi(store):
    from _vectorstore import make_textset, put_matrix, put_vector

    from atlas.errors import UsageError
    from atlas.space import matrices

    ts = make_textset(store, 4)
    put_matrix(store, ts, ["a/x", "b/y", "c/z"], L, tokens=np.array([2, 4, 6, 8]))
    uncond = L - 1.5
    # c/z has no unconditional vector: it drops out of pmi; b/y's cot vector is separate.
    put_matrix(store, ts, ["b/y", "a/x"], uncond[[1, 0]], kind="unconditional")
    put_vector(store, ts, "b/y", L[1] + 100, variant="cot")

    loaded = matrices.load(store, ts, "base", "conditional")
    models = loaded.models
    cond = loaded.values
    assert [m.repo_id for m in models] == ["a/x", "b/y", "c/z"]
    np.testing.assert_array_equal(cond, L)
    assert cond.dtype == np.float64

    loaded = matrices.load(store, "synth", "cot", "unconditional")  # stored under base
    models = loaded.models
    un = loaded.values
    assert [m.repo_id for m in models] == ["a/x", "b/y"]
    np.testing.assert_array_equal(un, uncond[:2])

    loaded = matrices.load(store, ts, "base", "pmi")
    models = loaded.models
    p = loaded.values
    assert [m.repo_id for m in models] == ["a/x", "b/y"]
    np.testing.assert_allclose(p, 1.5)

    m = matrices.load(store, ts, "cot", "pmi")
    assert [x.repo_id for x in m.models] == ["b/y"]
    np.testing.assert_allclose(m.values, L[[1]] + 100 - uncond[[1]])
    assert np.isnan(m.tokens[0])

    full = matrices.load(store, ts)
    np.testing.assert_array_equal(full.tokens, [5.0, 5.0, 5.0])
    assert matrices.stamps(store, ts, "base", "conditional") == dict(
        zip(full.model_ids, full.stamps, strict=True)
    )
    pmi_stamps = matrices.stamps(store, ts, "base", "pmi")
    assert sorted(pmi_stamps) == matrices.load(store, ts, "base", "pmi").model_ids
    assert all(len(s) == 2 for s in pmi_stamps.values())
    only = matrices.load(store, ts, model_ids=[models[1].id])
    assert only.model_ids == [models[1].id]
    assert matrices.load(store, ts, "repeat").values.shape == (0, 4)
    with pytest.raises(UsageError):
        matrices.load(store, ts, "base", "bogus")
    with pytest.raises(UsageError):
        matrices.load(store, ts, "nope", "conditional")


def test_matrix_prefers_the_current_revision(store):
    from _vectorstore import make_textset, put_vector

    from atlas.space import matrices

    ts = make_textset(store, 4)
    put_vector(store, ts, "a/x", L[0], revision="old")
    put_vector(store, ts, "a/x", L[1], revision="new")
    loaded = matrices.load(store, ts)
    values = loaded.values
    np.testing.assert_array_equal(values, L[[1]])
    store.upsert_model("a/x", revision="old")
    loaded = matrices.load(store, ts)
    values = loaded.values
    np.testing.assert_array_equal(values, L[[0]])
    store.upsert_model("a/x", revision="neither")  # no piece for it: the newest one
    loaded = matrices.load(store, ts)
    values = loaded.values
    np.testing.assert_array_equal(values, L[[1]])


def test_clip_threshold_equals_numpy_quantile_in_float32_and_float64():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 7), (13, 17), (50, 301)]:
        m = (rng.normal(size=shape) * 30 - 50).astype(np.float32)
        for q in (0.0, 0.02, 0.3, 0.5, 0.77, 1.0):
            expected = float(np.quantile(m.astype(np.float64), q))
            assert vectors.clip_threshold(m, q) == expected
            assert vectors.clip_threshold(m.astype(np.float64), q) == expected
