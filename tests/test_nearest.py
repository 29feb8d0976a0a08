"""`atlas nearest` end to end, on SQLite and Postgres, against brute-force KL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix, put_vector

from atlas.api import Atlas
from atlas.errors import NotFound, UsageError
from atlas.space import matrices, vectors
from atlas.space.neighbours import Placed, default_textset, place
from atlas.store import Store


@pytest.fixture
def db_url(tmp_path) -> str:
    """Backend-agnostic: SQLite only (the store, sync and queue tests cover Postgres)."""
    return f"sqlite:///{tmp_path / 'store.db'}"

N = 64
NAMES = [f"org-{i % 3}/model-{i:02d}" for i in range(18)]


@pytest.fixture
def filled(db_url):
    """A store with 18 clustered synthetic models (3 clusters) on text set `synth`."""
    raw = clustered(len(NAMES), N, clusters=3, seed=11)
    tokens = np.full(N, 8)
    s = Store(db_url)
    ts = make_textset(s, N)
    for i, (name, row) in enumerate(zip(NAMES, raw, strict=True)):
        put_vector(s, ts, name, row, tokens=tokens + (i % 2), model_type=f"type{i % 3}",
                   num_parameters=1_500_000 * (i + 1), downloads=10 * i)  # fmt: skip
    put_matrix(s, ts, NAMES, raw - 3.0 - np.linspace(0, 1, N), kind="unconditional")
    s.upsert_model("org-0/failed", status="failed", reason="no-chat-template")
    s.close()
    return db_url, raw


def brute(raw: np.ndarray, q: int, k: int) -> tuple[list[str], np.ndarray]:
    xi, _ = vectors.prepare(raw)
    kl = vectors.kl_to(xi[q], xi)
    kl[q] = np.inf
    order = np.lexsort((np.arange(len(kl)), kl))[:k]
    return [NAMES[i] for i in order], kl[order]


def test_nearest_json_equals_brute_force(filled, cli):
    url, raw = filled
    for q in (0, 7, 17):
        r = cli("--db", url, "nearest", NAMES[q], "-k", "5", "--textset", "synth", "--json")
        assert r.exit_code == 0, r.stderr
        got = json.loads(r.stdout)
        names, kl = brute(raw, q, 5)
        assert [g["model"] for g in got] == names
        np.testing.assert_allclose([g["kl"] for g in got], kl, rtol=1e-5)
        assert [g["rank"] for g in got] == [1, 2, 3, 4, 5]
        assert NAMES[q] not in names
        # Neighbours share the cluster (i % 3) of the query.
        assert all(int(n[-2:]) % 3 == q % 3 for n in names)
        mean_tokens = 8 + (q % 2)
        np.testing.assert_allclose([g["kl_per_token"] for g in got], kl / mean_tokens, rtol=1e-5)
        first = got[0]
        assert set(first) >= {"rank", "model", "kl", "kl_per_token", "model_type",
                              "num_parameters", "downloads"}  # fmt: skip
        i = NAMES.index(first["model"])
        assert (first["model_type"], first["downloads"]) == (f"type{i % 3}", 10 * i)


def test_nearest_table_and_defaults(filled, cli):
    url, raw = filled
    r = cli("--db", url, "nearest", NAMES[4])  # default text set: the only one with vectors
    assert r.exit_code == 0, r.stderr
    names, kl = brute(raw, 4, 10)
    lines = [ln for ln in r.stdout.splitlines() if "model-" in ln]
    assert len(lines) == 10
    for line, name, value in zip(lines, names, kl, strict=True):
        assert name in line and f"{value:.4f}" in line
    assert "KL (nats)" in r.stdout and "type1" in r.stdout and "M" in r.stdout
    # -k beyond the number of models: every other model.
    r = cli("--db", url, "nearest", NAMES[4], "-k", "100", "--json")
    assert len(json.loads(r.stdout)) == len(NAMES) - 1


def test_nearest_kinds(filled, cli):
    url, raw = filled
    unc = raw - 3.0 - np.linspace(0, 1, N)
    r = cli("--db", url, "nearest", NAMES[2], "-k", "4", "--kind", "unconditional", "--json")
    xi, _ = vectors.prepare(unc)
    kl = vectors.kl_to(xi[2], xi)
    kl[2] = np.inf
    assert [g["model"] for g in json.loads(r.stdout)] == [NAMES[i] for i in np.argsort(kl)[:4]]
    # pmi = conditional - unconditional = 3 + linspace: identical for all, KL 0 everywhere.
    r = cli("--db", url, "nearest", NAMES[2], "-k", "3", "--kind", "pmi", "--json")
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose([g["kl"] for g in json.loads(r.stdout)], 0.0, atol=1e-9)
    r = cli("--db", url, "nearest", NAMES[2], "--kind", "bogus")
    assert r.exit_code == 2 and "unknown kind" in r.stderr
    r = cli("--db", url, "nearest", NAMES[2], "-k", "0")
    assert r.exit_code == 2


def test_unknown_model_errors(filled, cli, monkeypatch):
    url, _ = filled
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: fails fast
    r = cli("--db", url, "nearest", "org-9/never-seen", "--textset", "synth")
    assert r.exit_code == 4
    assert "atlas score org-9/never-seen --textset synth" in r.stderr
    assert r.stdout == ""
    r = cli("--db", url, "nearest", "not a model!", "--textset", "synth")
    assert r.exit_code == 4 and "not in the store" in r.stderr
    r = cli("--db", url, "nearest", "org-0/failed", "--textset", "synth")
    assert r.exit_code == 4
    assert "failed: no-chat-template" in r.stderr and "atlas score org-0/failed" in r.stderr
    r = cli("--db", url, "nearest", NAMES[0], "--textset", "nope")
    assert r.exit_code == 4 and "no text set named 'nope'" in r.stderr
    r = cli("--db", url, "nearest", NAMES[0], "--variant", "cot", "--textset", "synth")
    assert r.exit_code == 4 and "atlas score" in r.stderr


def test_api_place_and_default_textset(filled):
    url, raw = filled
    with Atlas(url) as a:
        got = a.nearest(NAMES[1], 3, textset="synth")
        assert [n.model for n in got] == brute(raw, 1, 3)[0]
        a.ensure_sample()  # sample holds no vectors: synth stays the default
        assert default_textset(a.store).name == "synth"
        # A vector that is not stored, placed with the index's threshold.
        probe = raw[5] + np.random.default_rng(2).normal(scale=0.5, size=N)
        placed = place(a.store, a.settings, Placed("probe", probe, 10.0), 4, textset="synth")
        index_threshold = vectors.clip_threshold(raw.astype(np.float32))
        xi, _ = vectors.prepare(raw, index_threshold)
        kl = vectors.kl_to(vectors.center(vectors.clip(probe, index_threshold)), xi)
        assert [n.model for n in placed] == [NAMES[i] for i in np.argsort(kl)[:4]]
        np.testing.assert_allclose([n.kl for n in placed], np.sort(kl)[:4], rtol=1e-5)
        np.testing.assert_allclose([n.kl_per_token for n in placed], np.sort(kl)[:4] / 10)
        assert a.store.model("probe") is None
        with pytest.raises(UsageError):
            place(a.store, a.settings, Placed("short", probe[:5]), textset="synth")
        with pytest.raises(UsageError):
            a.nearest(NAMES[1], 3, variant="sideways")
        assert set(a.refresh_indexes("synth")) == {"synth/base/conditional"}


def test_no_textsets(db_url):
    with Atlas(db_url) as a, pytest.raises(NotFound, match="no text sets"):
        a.nearest("x/y")


# --- real tiny models from the zoo -------------------------------------------------------------

FAMILY_MEMBERS = ("base", "chat-a", "chat-b")


@pytest.fixture
def zoo_atlas(tmp_path, zoo_by_name):
    """An SQLite store with the zoo's llama and qwen families scored on 40 sample pairs."""
    from atlas.textsets import import_items, read_items, sample_path

    a = Atlas(f"sqlite:///{tmp_path / 'zoo.db'}")
    import_items(a.store, "pairs40", read_items(sample_path())[::7][:40])
    for family in ("llama", "qwen"):
        for member in FAMILY_MEMBERS:
            if (family, member) == ("qwen", "chat-b"):
                continue  # kept out of the store: placed on the fly below
            name = f"atlas-zoo/{family}-{member}"
            a.score(zoo_by_name[name].path, "pairs40", variants="base", name=name)
    yield a
    a.close()


def test_zoo_families_find_each_other_first(zoo_atlas, zoo_by_name, cli):
    a = zoo_atlas
    loaded = matrices.load(a.store, "pairs40")
    models = loaded.models
    raw = loaded.values
    names = [m.repo_id for m in models]
    assert len(names) == 5
    xi, _ = vectors.prepare(raw)
    kl = vectors.kl_matrix(xi)
    for i, name in enumerate(names):
        got = a.nearest(name, 4, textset="pairs40")
        family = name.split("/")[1].split("-")[0]
        kin = sum(1 for n in names if n != name and family in n)
        assert {n.model.split("/")[1].split("-")[0] for n in got[:kin]} == {family}, got
        # Brute force: the same order and values (nats per text).
        row = kl[i].copy()
        row[i] = np.inf
        order = np.argsort(row)[:4]
        assert [n.model for n in got] == [names[j] for j in order]
        np.testing.assert_allclose([n.kl for n in got], row[order], rtol=1e-5)
        assert all(n.kl_per_token and n.kl_per_token < n.kl for n in got)
        assert got[0].model_type in ("llama", "qwen2")

    # A folder not in the store: scored on the fly, placed, not stored.
    path = str(zoo_by_name["atlas-zoo/qwen-chat-b"].path)
    url = a.store.url
    r = cli("--db", url, "nearest", path, "-k", "3", "--textset", "pairs40", "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert [g["model"].split("/")[1].split("-")[0] for g in got[:2]] == ["qwen", "qwen"]
    assert "not stored" in r.stderr
    assert a.store.model("qwen-chat-b") is None and len(a.models()) == 5
    # --add stores it (under its folder name) and indexes it.
    r = cli("--db", url, "nearest", path, "-k", "2", "--textset", "pairs40", "--add", "--json")
    assert r.exit_code == 0, r.stderr
    assert [g["model"] for g in json.loads(r.stdout)] == [g["model"] for g in got[:2]]
    assert a.store.model("qwen-chat-b").status == "scored"
    r = cli("--db", url, "nearest", "atlas-zoo/qwen-base", "-k", "2", "--textset", "pairs40",
            "--json")  # fmt: skip
    assert "qwen-chat-b" in [g["model"] for g in json.loads(r.stdout)]
