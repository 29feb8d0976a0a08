"""What keeps a large atlas fast, on small real stores: cheap staleness checks, the index's delta
part and process cache, the fits and neighbour lists used at scale (switched on early here),
bounded figures, paged model lists and crash reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix, put_vector

from atlas.analyses import lineage, plots
from atlas.settings import Settings
from atlas.space import index as kl_index
from atlas.space import maps, matrices
from atlas.space.index import KLIndex, all_neighbours, open_index

N_TEXTS = 40


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env()


def _names(count: int, start: int = 0) -> list[str]:
    return [f"f{i // 4}/m-{i:03d}" for i in range(start, start + count)]


# --- staleness without reading vectors --------------------------------------------------------


def test_key_mark_changes_only_with_its_key(store):
    ts = make_textset(store, N_TEXTS)
    raw = clustered(6, N_TEXTS, seed=1)
    put_matrix(store, ts, _names(4), raw[:4])
    first = matrices.key_mark(store, ts, "base", "conditional")
    assert first[0] == 4
    put_vector(store, ts, "other/x", raw[4], kind="unconditional")
    assert matrices.key_mark(store, ts, "base", "conditional") == first
    put_vector(store, ts, "other/y", raw[5])
    later = matrices.key_mark(store, ts, "base", "conditional")
    assert later[0] == 5 and later[1] > first[1]
    assert len(matrices.key_mark(store, ts, "base", "pmi")) == 4


def test_unchanged_map_refresh_reads_no_vectors(store, settings, monkeypatch):
    ts = make_textset(store, N_TEXTS)
    put_matrix(store, ts, _names(12), clustered(12, N_TEXTS, seed=2))
    maps.refresh(store, settings, method="pca")

    def no_load(*_a, **_k):
        raise AssertionError("an unchanged refresh must not load the matrix")

    monkeypatch.setattr(maps.matrices, "load", no_load)
    assert maps.refresh(store, settings, method="pca").mode == "unchanged"


def test_map_state_follows_the_database_not_the_spelling_of_its_url(tmp_path, monkeypatch):
    from atlas.store import Store

    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env()
    absolute = Store(f"sqlite:///{tmp_path / 'atlas.db'}")
    ts = make_textset(absolute, N_TEXTS)
    raw = clustered(14, N_TEXTS, seed=3)
    put_matrix(absolute, ts, _names(12), raw[:12])
    maps.refresh(absolute, settings, method="pca")
    absolute.close()
    relative = Store("sqlite:///./sub/../atlas.db")
    put_matrix(relative, ts, _names(2, 12), raw[12:])
    done = maps.refresh(relative, settings, method="pca")
    relative.close()
    assert done.mode == "incremental" and len(done.added) == 2
    assert maps.database_identity("sqlite:///./atlas.db") == f"sqlite:{tmp_path / 'atlas.db'}"
    assert "secret" not in maps.database_identity("postgresql+psycopg://u:secret@h:5/db")


# --- the index: delta part, memory map, process cache -----------------------------------------


def test_added_models_go_to_a_delta_file_and_search_stays_exact(store, settings):
    ts = make_textset(store, N_TEXTS)
    raw = clustered(30, N_TEXTS, seed=4)
    models = put_matrix(store, ts, _names(24), raw[:24])
    index, what = open_index(store, settings, ts)
    stem = kl_index.index_stem(settings, ts, "base", "conditional")
    main = stem.with_suffix(".faiss").stat()
    assert what.action == "built" and not stem.with_suffix(".delta.faiss").exists()
    assert open_index(store, settings, ts)[0] is index  # same process, files unchanged

    more = put_matrix(store, ts, _names(6, 24), raw[24:])
    index, what = open_index(store, settings, ts)
    assert (what.action, what.added) == ("added", 6)
    after = stem.with_suffix(".faiss").stat()
    assert (after.st_ino, after.st_mtime_ns) == (main.st_ino, main.st_mtime_ns)
    assert stem.with_suffix(".delta.faiss").exists()
    manifest = json.loads(stem.with_suffix(".json").read_text())
    assert manifest["delta_models"] == 6 and manifest["n_models"] == 30

    ids = [m.id for m in models + more]
    reloaded = KLIndex.load(stem)
    assert reloaded.ids() == ids
    centred = index.centre(raw)
    for q in (0, 25, 29):
        sq = ((centred - centred[q]) ** 2).sum(axis=1)
        sq[q] = np.inf
        want = [ids[j] for j in np.lexsort((np.arange(30), sq))[:7]]
        for idx in (index, reloaded):
            hits = idx.search(idx.vector(ids[q]), 7, exclude=[ids[q]])
            assert [h[0] for h in hits] == want
            np.testing.assert_allclose([h[1] for h in hits], np.sort(sq)[:7], rtol=1e-5)

    stem.with_suffix(".delta.faiss").unlink()  # a lost delta file: rebuilt from the store
    assert open_index(store, settings, ts)[1].action == "built"


# --- neighbours and fits at scale --------------------------------------------------------------


def test_all_neighbours_at_scale_match_every_pair(monkeypatch):
    rng = np.random.default_rng(5)
    X = clustered(400, 120, clusters=8, seed=5)
    X = X - X.mean(axis=1, keepdims=True) + rng.normal(scale=0.01, size=X.shape)
    exact_idx, exact_sq = all_neighbours(X, 10)
    monkeypatch.setattr(kl_index, "ALL_PAIRS_UP_TO", 50)
    idx, sq = all_neighbours(X.astype(np.float32), 10)
    assert (idx == exact_idx).mean() > 0.99
    np.testing.assert_allclose(sq[idx == exact_idx], exact_sq[idx == exact_idx], rtol=1e-3)


def test_approximate_fits_and_placement(store, settings, monkeypatch):
    ts = make_textset(store, N_TEXTS)
    raw = clustered(64, N_TEXTS, clusters=4, seed=6)
    put_matrix(store, ts, _names(60), raw[:60])
    exact = maps.refresh(store, settings, method="pca").snapshot
    monkeypatch.setattr(maps, "APPROXIMATE_FROM", 10)
    approx = maps.refresh(store, settings, method="pca", full=True).snapshot
    assert approx.params["solver"] == "randomized"
    a = np.asarray([(p.x, p.y) for p, _ in maps.snapshot_points(store, approx.id)])
    e = np.asarray([(p.x, p.y) for p, _ in maps.snapshot_points(store, exact.id)])
    np.testing.assert_allclose(a, e, atol=1e-3 * np.abs(e).max())

    tsne = maps.refresh(store, settings, method="tsne")
    assert tsne.mode == "full" and tsne.snapshot.params["negative_gradient_method"] == "bh"
    assert "faiss" in tsne.snapshot.params["neighbors"]
    put_matrix(store, ts, _names(4, 60), raw[60:])
    placed = maps.refresh(store, settings, method="tsne")
    assert placed.mode == "incremental" and len(placed.added) == 4
    xy = np.asarray([(p.x, p.y) for p, _ in maps.snapshot_points(store, placed.snapshot.id)])
    assert np.isfinite(xy).all() and len(xy) == 64


def test_lineage_from_neighbours_equals_the_matrix_version():
    from atlas.space import vectors

    L = clustered(40, 60, clusters=5, seed=7)
    names = [f"f{i % 5}/m{i}" for i in range(40)]
    bases = {n: [names[i % 5]] for i, n in enumerate(names) if i >= 5}
    Xi = vectors.center(L)
    kl = vectors.kl_matrix(Xi)
    want = lineage.evaluate(kl, names, bases)
    near, sq = all_neighbours(Xi, 39)
    got = lineage.evaluate_knn(near, sq / (2 * 60), lambda i, j: kl[i, j], names, bases)
    assert got.precision == pytest.approx(want.precision)
    assert got.hit == pytest.approx(want.hit)
    assert [r.base_rank for r in got.rows] == [r.base_rank for r in want.rows]
    assert [r.kl_nearest_other for r in got.rows] == pytest.approx(
        [r.kl_nearest_other for r in want.rows])  # fmt: skip


def test_lineage_and_export_neighbours_at_scale_match_the_exact_path(store, settings, monkeypatch):
    """On a store: `analyze lineage` and the export's neighbour lists agree between the exact
    path (every pair, float64) and the one used at scale (kNN, float32), switched on early."""
    from atlas.export import snapshot

    ts = make_textset(store, N_TEXTS)
    raw = clustered(48, N_TEXTS, clusters=6, seed=8)
    names = [f"f{i % 6}/m{i}" for i in range(48)]
    for i, (name, row) in enumerate(zip(names, raw, strict=True)):
        put_vector(store, ts, name, row, base_models=[names[i % 6]] if i >= 6 else [])
    maps.refresh(store, settings, method="pca")
    want, want_near = lineage.analyze(store, "synth"), snapshot.gather(store).neighbours
    for module in (lineage, kl_index, snapshot):
        monkeypatch.setattr(module, "ALL_PAIRS_UP_TO", 10)
    got, got_near = lineage.analyze(store, "synth"), snapshot.gather(store).neighbours
    assert got.precision == pytest.approx(want.precision)
    assert [(r.model, r.neighbours, r.base_rank, r.first_relative_rank) for r in got.rows] == [
        (r.model, r.neighbours, r.base_rank, r.first_relative_rank) for r in want.rows]
    assert [r.kl_base for r in got.rows] == pytest.approx([r.kl_base for r in want.rows], rel=1e-4)
    assert [[j for j, _ in row] for row in got_near] == [[j for j, _ in row] for row in want_near]
    assert [kl for row in got_near for _, kl in row] == pytest.approx(
        [kl for row in want_near for _, kl in row], rel=1e-4)  # fmt: skip


def test_lineage_figure_is_bounded_for_many_models(tmp_path):
    from PIL import Image

    rows = [lineage.LineageRow(f"f{i}/m", ["b"], 2, [], [], 1, 1, 0.1 + i / 1000, 0.5)
            for i in range(plots.MAX_BARS * 10)]  # fmt: skip
    result = lineage.LineageResult("synth", len(rows), rows, {1: 0.5}, {1: 0.5}, 0.01)
    path = lineage.plot(result, tmp_path / "lineage.png")
    with Image.open(path) as image:
        assert image.size[1] < 1000
    assert path.stat().st_size < 200_000


# --- the CLI ------------------------------------------------------------------------------------


def test_models_list_pages_and_streams(store, cli, monkeypatch):
    monkeypatch.setenv("ATLAS_DATABASE_URL", store.url)
    ts = make_textset(store, N_TEXTS)
    put_matrix(store, ts, _names(9), clustered(9, N_TEXTS, seed=8))
    page = cli("models", "list", "--json", "--limit", "3", "--offset", "2")
    assert page.exit_code == 0
    assert [r["model"] for r in json.loads(page.stdout)] == sorted(_names(9))[2:5]
    from atlas.cli import models as models_cli

    monkeypatch.setattr(models_cli, "TABLE_ROWS", 4)
    plain = cli("models", "list")
    lines = plain.stdout.splitlines()
    assert plain.exit_code == 0 and lines[0].split()[:2] == ["model", "status"]
    assert len(lines) == 10 and all(name in plain.stdout for name in _names(9))
    bad = cli("models", "list", "--limit", "0")
    assert bad.exit_code != 0 and "Traceback" not in bad.stderr


def test_a_native_crash_is_reported_not_silent():
    code = ("from atlas.cli.common import _crash_report; _crash_report(); "
            "import ctypes; ctypes.string_at(0)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "<string>" in done.stderr  # where it happened
