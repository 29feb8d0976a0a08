"""Export of map snapshots: files, shapes, contents, and escaping in the HTML page."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix, put_vector

from atlas.export import page as html
from atlas.export import snapshot as export
from atlas.space import vectors
from atlas.store import Store


@pytest.fixture
def db_url(tmp_path) -> str:
    """Backend-agnostic: SQLite only (the store, sync and queue tests cover Postgres)."""
    return f"sqlite:///{tmp_path / 'store.db'}"

N_TEXTS = 30
EVIL_NAME = "evil/<script>alert(1)</script>"
EVIL_TYPE = "</script><img src=x onerror=alert(2)>"
EVIL_BASE = "a&b</SCRIPT><!--"


def page_json(text: str) -> dict:
    """The data block of map.html, parsed as the page parses it."""
    m = re.search(r'<script type="application/json" id="atlas-data">(.*?)</script>', text, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def brute_force_neighbours(L: np.ndarray, threshold: float, k: int) -> list[list[tuple]]:
    """Top-k by KL(p_i || p_j) = ||xi_i - xi_j||^2 / (2N), computed pair by pair."""
    X = np.maximum(L.astype(np.float64), threshold)
    X = X - X.mean(axis=1, keepdims=True)
    out = []
    for i in range(len(X)):
        kl = [(j, float(((X[i] - X[j]) ** 2).sum() / (2 * X.shape[1]))) for j in range(len(X))]
        out.append(sorted((p for p in kl if p[0] != i), key=lambda p: (p[1], p[0]))[:k])
    return out


def _fill(store: Store, n_models: int = 14, seed: int = 0):
    ts = make_textset(store, N_TEXTS)
    L = clustered(n_models, N_TEXTS, seed=seed)
    U = L - 3.0 + clustered(n_models, N_TEXTS, seed=seed + 100) * 0.01
    names = [f"fam{i % 3}/model-{i:02d}" for i in range(n_models)]
    types = ["llama", "qwen2", "mistral"]
    for i, name in enumerate(names):
        put_vector(store, ts, name, L[i], model_type=types[i % 3], downloads=100 * i,
                   likes=i, architecture="LlamaForCausalLM", num_parameters=10**6 * (i + 1),
                   base_models=[f"fam{i % 3}/base"])  # fmt: skip
        put_vector(store, ts, name, U[i], kind="unconditional")
    return ts, names, L, U


def test_cli_refresh_then_export_writes_every_file(cli, db_url, tmp_path):
    store = Store(db_url)
    ts, names, L, U = _fill(store)
    put_vector(store, ts, "fam9/cond-only", L[0] + 1.0)  # no unconditional vector
    store.close()
    r = cli("--db", db_url, "map", "refresh", "--method", "tsne", "--json")
    assert r.exit_code == 0, r.stderr
    snap_id = json.loads(r.stdout)["snapshot"]
    out = tmp_path / "out"
    r = cli("--db", db_url, "export", str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(export.FILES)

    record = json.loads((out / "snapshot.json").read_text())
    snap = record["snapshot"]
    assert record["format"] == export.FORMAT and record["atlas_version"]
    assert (snap["id"], snap["method"], snap["kind"], snap["variant"]) == (
        snap_id, "tsne", "conditional", "base"
    )
    assert snap["params"]["perplexity"] == pytest.approx(14 / 3)
    assert snap["clip_threshold"] == pytest.approx(np.quantile(np.vstack([L, L[:1] + 1]), 0.02))
    assert record["textset"] == {"name": ts.name, "sha256": ts.sha256, "kind": "pairs",
                                 "size": N_TEXTS}  # fmt: skip
    models = record["models"]
    order = [m["repo_id"] for m in models]
    assert sorted(order) == sorted([*names, "fam9/cond-only"])
    first = next(m for m in models if m["repo_id"] == names[5])
    assert first["revision"] == "r1"
    assert first["metadata"] == {
        "type": "mistral", "architecture": "LlamaForCausalLM", "params": 6 * 10**6,
        "downloads": 500, "likes": 5, "base_models": ["fam2/base"], "status": "scored",
        "author": "fam2",
    }  # fmt: skip

    with open(out / "models.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["repo_id"] for r in rows] == order
    assert tuple(rows[0]) == export.CSV_FIELDS
    assert float(rows[3]["x"]) == models[3]["x"] and float(rows[3]["y"]) == models[3]["y"]

    with np.load(out / "loglik.npz", allow_pickle=False) as z:
        assert list(z["models"]) == order
        assert str(z["textset_sha256"]) == ts.sha256
        cond, uncond = z["conditional"], z["unconditional"]
    assert cond.dtype == np.float32 and cond.shape == uncond.shape == (15, N_TEXTS)
    rows_by_name = {n: i for i, n in enumerate(order)}
    for i, name in enumerate(names):
        np.testing.assert_array_equal(cond[rows_by_name[name]], L[i].astype(np.float32))
        np.testing.assert_array_equal(uncond[rows_by_name[name]], U[i].astype(np.float32))
    only = rows_by_name["fam9/cond-only"]
    np.testing.assert_array_equal(cond[only], (L[0] + 1.0).astype(np.float32))
    assert np.isnan(uncond[only]).all()

    png = (out / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    page = (out / "map.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page and " src=" not in page
    data = page_json(page)
    assert [m["name"] for m in data["models"]] == order
    full = np.vstack([L, L[:1] + 1.0])
    raw = full[[[*names, "fam9/cond-only"].index(n) for n in order]]
    expected = brute_force_neighbours(raw, snap["clip_threshold"], 10)
    for got, want in zip(data["neighbours"], expected, strict=True):
        assert [j for j, _ in got] == [j for j, _ in want]
        assert [kl for _, kl in got] == pytest.approx([kl for _, kl in want], rel=1e-6)


def test_export_a_chosen_snapshot_and_errors(cli, tmp_path):
    from atlas import Atlas

    with Atlas() as a:
        _fill(a.store, 8, seed=1)
        first = a.refresh_map("pca").snapshot
        put_matrix(a.store, a.textsets()[0], ["fam0/late"], clustered(1, N_TEXTS, seed=5))
        second = a.refresh_map("pca", full=True).snapshot
        assert second.id != first.id
        path = a.export(tmp_path / "first", first.id, neighbours=3)
    record = json.loads((path / "snapshot.json").read_text())
    assert record["snapshot"]["id"] == first.id and len(record["models"]) == 8
    assert all(len(n) == 3 for n in page_json((path / "map.html").read_text())["neighbours"])
    r = cli("export", str(tmp_path / "newest"))
    assert r.exit_code == 0
    newest = json.loads((tmp_path / "newest" / "snapshot.json").read_text())
    assert newest["snapshot"]["id"] == second.id and len(newest["models"]) == 9
    r = cli("export", str(tmp_path / "x"), "--snapshot", "999")
    assert r.exit_code == 4 and "no snapshot #999" in r.stderr
    (tmp_path / "file").write_text("")
    r = cli("export", str(tmp_path / "file"))
    assert r.exit_code == 2 and "not a folder" in r.stderr


def test_export_before_any_map_says_how_to_make_one(cli, tmp_path):
    r = cli("export", str(tmp_path / "out"))
    assert r.exit_code == 4 and "atlas map refresh" in r.stderr


def test_model_names_and_metadata_are_escaped_in_the_page(tmp_path):
    from atlas import Atlas

    with Atlas() as a:
        ts, _, L, _ = _fill(a.store, 6, seed=2)
        put_vector(a.store, ts, EVIL_NAME, L[0] + 0.5, model_type=EVIL_TYPE,
                   base_models=[EVIL_BASE], architecture="\u2028<!-- x -->")  # fmt: skip
        a.refresh_map("pca")
        out = a.export(tmp_path / "out")
    page = (out / "map.html").read_text()
    for raw in ("<script>alert", "</script><img", "<img", "onerror=alert(2)>", "<!--", "a&b"):
        assert raw not in page, raw
    assert page.lower().count("<script") == 2 and page.lower().count("</script>") == 2
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in page
    data = page_json(page)
    evil = next(m for m in data["models"] if m["name"] == EVIL_NAME)  # round-trips exactly
    assert evil["type"] == EVIL_TYPE and evil["base_models"] == [EVIL_BASE]
    assert "<title>atlas map #" in page
    script = page.split('id="atlas-data">', 1)[1].split("</script>", 2)[1]
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script
    # the other outputs carry the names as data
    assert EVIL_NAME in (out / "snapshot.json").read_text(encoding="utf-8")
    with np.load(out / "loglik.npz", allow_pickle=False) as z:
        assert EVIL_NAME in list(z["models"])


def test_render_map_escapes_the_title():
    page = html.render_map({"models": []}, "a </title><script>x</script>")
    assert "<title>a &lt;/title&gt;&lt;script&gt;x&lt;/script&gt;</title>" in page
    assert html.embed_json({"s": "</script>&\u2028"}) == (
        '{"s":"\\u003c/script\\u003e\\u0026\\u2028"}'
    )


def test_top_neighbours_match_the_kl_matrix():
    rng = np.random.default_rng(0)
    Xi = vectors.center(rng.normal(size=(40, 25)))
    K = vectors.kl_matrix(Xi)
    got = export.top_neighbours(Xi, 5, block=7)
    for i, near in enumerate(got):
        row = K[i].copy()
        row[i] = np.inf
        assert [j for j, _ in near] == list(np.argsort(row, kind="stable")[:5])
        assert [kl for _, kl in near] == pytest.approx(np.sort(row)[:5])
    assert export.top_neighbours(Xi[:1], 5) == [[]]


def test_png_labels_stay_readable_for_many_models(tmp_path):
    from atlas import Atlas

    with Atlas() as a:
        ts = make_textset(a.store, N_TEXTS)
        put_matrix(a.store, ts, [f"org/model-{i:03d}" for i in range(120)],
                   clustered(120, N_TEXTS, seed=4))  # fmt: skip
        a.refresh_map("pca")
        data = export.gather(a.store)
    export.write_png(Path(tmp_path / "map.png"), data, max_labels=20)
    assert (tmp_path / "map.png").stat().st_size > 10_000
