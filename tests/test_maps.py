"""Map snapshots on synthetic vectors in real SQLite and Postgres stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix

from atlas.settings import Settings
from atlas.space import maps, vectors


@pytest.fixture
def db_url(tmp_path) -> str:
    """Backend-agnostic: SQLite only (the store, sync and queue tests cover Postgres)."""
    return f"sqlite:///{tmp_path / 'store.db'}"

N_TEXTS = 40


def _names(prefix: str, count: int, start: int = 0) -> list[str]:
    return [f"c{i % 4}/{prefix}-{i:02d}" for i in range(start, start + count)]


def _xy(store, snapshot) -> dict[str, tuple[float, float]]:
    return {m.repo_id: (p.x, p.y) for p, m in maps.snapshot_points(store, snapshot.id)}


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env()


def test_pca_equals_sklearn_on_the_clipped_double_centred_matrix(store, settings):
    from sklearn.decomposition import PCA

    ts = make_textset(store, N_TEXTS)
    L = clustered(12, N_TEXTS, seed=1)
    put_matrix(store, ts, _names("m", 12), L)
    done = maps.refresh(store, settings, method="pca")
    snap = done.snapshot
    assert (done.mode, snap.method, snap.kind) == ("full", "pca", "conditional")
    assert snap.variant == "base"
    assert snap.n_models == 12 and snap.parent_id is None and snap.textset_id == ts.id
    threshold = np.quantile(L, 0.02)
    assert snap.clip_threshold == pytest.approx(threshold, abs=1e-9)
    Q = np.maximum(L, threshold)
    Q = Q - Q.mean(1, keepdims=True) - Q.mean(0, keepdims=True) + Q.mean()
    expected = PCA(n_components=2, svd_solver="full").fit_transform(Q)
    got = _xy(store, snap)
    for name, row in zip(_names("m", 12), expected, strict=True):
        assert got[name] == pytest.approx(tuple(row), abs=1e-8)
    stored = maps.get_snapshot(store, snap.id)
    assert stored.params["solver"] == "exact" and stored.params["random_state"] == 42
    assert sum(stored.params["explained_variance_ratio"]) <= 1.0


def test_tsne_snapshot_is_stored_with_params_and_separates_clusters(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(24, N_TEXTS, seed=2)
    put_matrix(store, ts, _names("m", 24), L)
    snap = maps.refresh(store, settings, method="tsne").snapshot
    stored = maps.get_snapshot(store)
    assert stored.id == snap.id and stored.method == "tsne" and stored.n_models == 24
    params = stored.params
    assert params["perplexity"] == pytest.approx(23 / 3, abs=1e-6)
    assert params["initialization"] == "pca" and params["random_state"] == 42
    assert params["mode"] == "full" and params["requested"] == "tsne"
    assert "squared euclidean" in params["affinity"]
    json.dumps(params)  # the params column holds plain JSON
    xy = _xy(store, snap)
    names = _names("m", 24)
    pts = np.asarray([xy[n] for n in names])
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    assert all(names[i][:2] == names[j][:2] for i, j in enumerate(nearest))
    again = maps.refresh(store, settings, method="tsne", full=True).snapshot
    assert again.id != snap.id
    same = _xy(store, again)
    np.testing.assert_allclose([same[n] for n in names], pts, atol=1e-9)  # fixed seed


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_incremental_keeps_coordinates_and_places_new_models_near_their_cluster(
    tmp_path, settings, method
):
    from atlas.store import Store

    store = Store(f"sqlite:///{tmp_path / 'inc.db'}")
    ts = make_textset(store, N_TEXTS)
    L = clustered(26, N_TEXTS, seed=3)  # the last two rows arrive later
    put_matrix(store, ts, _names("m", 24), L[:24])
    first = maps.refresh(store, settings, method=method).snapshot
    before = _xy(store, first)
    put_matrix(store, ts, _names("m", 2, start=24), L[24:])
    done = maps.refresh(store, settings, method=method)
    snap = done.snapshot
    assert done.mode == "incremental" and snap.parent_id == first.id
    assert done.added == _names("m", 2, start=24)
    assert snap.clip_threshold == first.clip_threshold and snap.method == first.method
    assert snap.params["placed"] and snap.params["mode"] == "incremental"
    after = _xy(store, snap)
    assert {k: after[k] for k in before} == before  # exactly unchanged
    old = np.asarray(list(before.values()))
    labels = [k[:2] for k in before]
    for name in done.added:
        d = np.linalg.norm(old - np.asarray(after[name]), axis=1)
        near = [labels[i] for i in np.argsort(d)[:3]]
        assert near == [name[:2]] * 3, (name, near)
    unchanged = maps.refresh(store, settings, method=method)
    assert unchanged.mode == "unchanged" and unchanged.snapshot.id == snap.id
    store.close()


def test_pca_placement_equals_projection_on_the_stored_components(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(21, N_TEXTS, seed=4)
    put_matrix(store, ts, _names("m", 20), L[:20])
    from sklearn.decomposition import PCA

    maps.refresh(store, settings, method="pca")
    put_matrix(store, ts, _names("m", 1, start=20), L[20:])
    snap = maps.refresh(store, settings, method="pca").snapshot
    threshold = np.quantile(L[:20], 0.02)
    ref = vectors.double_center(vectors.clip(L[:20], threshold))
    pca = PCA(n_components=2, svd_solver="full").fit(ref)
    row = vectors.center(vectors.clip(L[20:], threshold)) - vectors.center(
        vectors.clip(L[:20], threshold)
    ).mean(0)
    expected = pca.transform(row)[0]
    assert _xy(store, snap)[_names("m", 1, start=20)[0]] == pytest.approx(tuple(expected))


def test_growth_by_the_set_fraction_triggers_a_full_refit(store, settings, monkeypatch):
    ts = make_textset(store, N_TEXTS)
    L = clustered(16, N_TEXTS, seed=5)
    put_matrix(store, ts, _names("m", 10), L[:10])
    first = maps.refresh(store, settings, method="pca").snapshot
    put_matrix(store, ts, _names("m", 2, start=10), L[10:12])  # 20% of 10: refit
    done = maps.refresh(store, settings, method="pca")
    assert done.mode == "full" and done.snapshot.parent_id is None
    assert "at least 20%" in done.note
    assert done.snapshot.clip_threshold == pytest.approx(np.quantile(L[:12], 0.02))
    monkeypatch.setenv("ATLAS_MAP_REFIT_FRACTION", "0.5")
    put_matrix(store, ts, _names("m", 4, start=12), L[12:16])  # 33% of 12: placed
    inc = maps.refresh(store, settings, method="pca")
    assert inc.mode == "incremental" and inc.snapshot.parent_id == done.snapshot.id
    assert first.id < done.snapshot.id < inc.snapshot.id
    # growth counts from the full map, across incremental snapshots
    put_matrix(store, ts, ["c0/late-1", "c1/late-2"], L[:2] + 0.5)
    assert maps.refresh(store, settings, method="pca").mode == "full"


def test_missing_fit_state_means_a_full_refit(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(21, N_TEXTS, seed=6)
    put_matrix(store, ts, _names("m", 20), L[:20])
    first = maps.refresh(store, settings, method="tsne").snapshot
    state_files = list((settings.home / "maps").rglob("*.npz"))
    assert len(state_files) == 1
    state_files[0].write_bytes(b"not an npz")  # corrupt derived data is rebuilt, never trusted
    put_matrix(store, ts, _names("m", 1, start=20), L[20:])
    done = maps.refresh(store, settings, method="tsne")
    assert done.mode == "full" and done.snapshot.id != first.id
    assert done.note == "the saved fit state is missing"
    assert len(list((settings.home / "maps").rglob("*.npz"))) == 1  # the old state is dropped


def test_small_maps_fall_back_to_pca_and_grow_into_tsne(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(4, N_TEXTS, seed=7)
    put_matrix(store, ts, ["a/one"], L[:1])
    one = maps.refresh(store, settings, method="tsne")
    assert one.snapshot.method == "pca" and "too few for t-SNE" in one.note
    assert _xy(store, one.snapshot) == {"a/one": (0.0, 0.0)}
    put_matrix(store, ts, ["a/two", "a/three"], L[1:3])
    three = maps.refresh(store, settings, method="tsne")
    assert three.mode == "full" and three.snapshot.method == "pca"
    assert three.snapshot.params["requested"] == "tsne"
    pts = np.asarray(list(_xy(store, three.snapshot).values()))
    assert np.isfinite(pts).all() and len(pts) == 3
    put_matrix(store, ts, ["a/four"], L[3:])
    four = maps.refresh(store, settings, method="tsne")
    assert four.mode == "full" and four.snapshot.method == "tsne"
    assert four.snapshot.params["perplexity"] == pytest.approx(1.0)


def test_pmi_and_unconditional_maps(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(8, N_TEXTS, seed=8)
    U = clustered(8, N_TEXTS, seed=9)
    put_matrix(store, ts, _names("m", 8), L)
    put_matrix(store, ts, _names("m", 8), U, kind="unconditional")
    snap = maps.refresh(store, settings, method="pca", kind="pmi").snapshot
    assert snap.kind == "pmi"
    assert snap.clip_threshold == pytest.approx(np.quantile(L - U, 0.02))
    unc = maps.refresh(store, settings, method="pca", kind="unconditional").snapshot
    assert unc.kind == "unconditional" and unc.id != snap.id
    assert [s.id for s in maps.snapshots(store)] == [unc.id, snap.id]


def test_refresh_all_refreshes_every_stored_series(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(21, N_TEXTS, seed=10)
    put_matrix(store, ts, _names("m", 20), L[:20])
    maps.refresh(store, settings, method="pca")
    maps.refresh(store, settings, method="tsne")
    put_matrix(store, ts, _names("m", 1, start=20), L[20:])
    done = maps.refresh_all(store, settings)
    assert sorted((d.snapshot.method, d.mode) for d in done) == [
        ("pca", "incremental"),
        ("tsne", "incremental"),
    ]


def test_cli_map_refresh_list_and_show(cli, store, db_url):
    ts = make_textset(store, N_TEXTS)
    put_matrix(store, ts, _names("m", 8), clustered(8, N_TEXTS, seed=11))
    r = cli("--db", db_url, "map", "refresh", "--method", "pca", "--json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["mode"] == "full" and row["n_models"] == 8 and row["method"] == "pca"
    r = cli("--db", db_url, "map", "refresh", "--method", "pca", "--textset", "synth")
    assert r.exit_code == 0 and "unchanged" in r.stdout
    r = cli("--db", db_url, "map", "list", "--json")
    assert [s["id"] for s in json.loads(r.stdout)] == [row["snapshot"]]
    r = cli("--db", db_url, "map", "show", str(row["snapshot"]), "--json")
    assert sorted(p["model"] for p in json.loads(r.stdout)) == sorted(_names("m", 8))
    assert cli("--db", db_url, "map", "list").exit_code == 0


def test_cli_map_errors(cli, store, db_url):
    r = cli("--db", db_url, "map", "refresh")
    assert r.exit_code == 4 and "no conditional vectors" in r.stderr
    r = cli("--db", db_url, "map", "refresh", "--method", "umap")
    assert r.exit_code == 2 and "tsne, pca" in r.stderr
    r = cli("--db", db_url, "map", "show", "99")
    assert r.exit_code == 4 and "atlas map refresh" in r.stderr


def test_cli_map_show_prints_names_as_text(cli, store, db_url):
    ts = make_textset(store, N_TEXTS)
    L = clustered(3, N_TEXTS, seed=12)
    put_matrix(store, ts, ["a/[bold]x[/bold]", "a/y", "a/z"], L, model_type="[red]t")
    assert cli("--db", db_url, "map", "refresh", "--method", "pca").exit_code == 0
    r = cli("--db", db_url, "map", "show")
    assert r.exit_code == 0 and "a/[bold]x[/bold]" in r.stdout and "[red]t" in r.stdout


def test_rescored_models_are_refitted_or_placed_again(store, settings):
    ts = make_textset(store, N_TEXTS)
    L = clustered(22, N_TEXTS, seed=13)
    names = _names("m", 22)
    put_matrix(store, ts, names[:20], L[:20])
    first = maps.refresh(store, settings, method="pca").snapshot
    put_matrix(store, ts, names[20:21], L[20:21])
    inc = maps.refresh(store, settings, method="pca")
    assert inc.mode == "incremental"
    # a placed model scored again (new revision, other values) is placed again
    put_matrix(store, ts, names[20:21], L[1:2], revision="r2")
    again = maps.refresh(store, settings, method="pca")
    assert again.mode == "incremental" and again.added == [names[20]]
    moved = _xy(store, again.snapshot)
    assert moved[names[20]] == pytest.approx(_xy(store, first)[names[1]], abs=1e-6)
    assert maps.refresh(store, settings, method="pca").mode == "unchanged"
    # a model of the full fit scored again means a full refit
    put_matrix(store, ts, names[:1], L[2:3], revision="r2")
    done = maps.refresh(store, settings, method="pca")
    assert done.mode == "full" and done.note == "a model of the full map was scored again"
