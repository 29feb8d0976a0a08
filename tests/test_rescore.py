"""Template provenance in the store, and `--rescore-outdated` for vectors of an older scorer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sqlmodel import select  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from atlas.api import Atlas  # noqa: E402
from atlas.scoring.engine import SCORER_VERSION, score_items  # noqa: E402
from atlas.scoring.templates import FINISHED_TURN, GENERATION_PROMPT  # noqa: E402
from atlas.store.tables import Vector  # noqa: E402
from atlas.testing import zoo  # noqa: E402
from atlas.testing.hub import LocalHub, RepoSpec  # noqa: E402
from atlas.textsets import import_items, load_items, read_items, sample_path  # noqa: E402

TEMPLATES = Path(__file__).parent / "data" / "templates"
# A think-opening template (DeepSeek-R1's official one) and a dated one (Llama 3.2's).
R1 = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text(encoding="utf-8")
LLAMA32 = (TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8")


@pytest.fixture
def atlas_db(db_url):
    """An Atlas on SQLite and on Postgres (the rescore queries), with a pair set `mini`."""
    with Atlas(db_url) as a:
        import_items(a.store, "mini", read_items(sample_path())[::50])
        yield a


@pytest.fixture
def atlas_sqlite(tmp_path):
    with Atlas(f"sqlite:///{tmp_path / 'store.db'}") as a:
        import_items(a.store, "mini", read_items(sample_path())[::50])
        yield a


def _with_template(source: Path, folder: Path, template: str) -> Path:
    """A copy of a zoo model whose chat_template.jinja is `template`."""
    shutil.copytree(source, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, indent=2))
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return folder


def _fresh(folder: Path, items, pieces):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return score_items(model, AutoTokenizer.from_pretrained(folder), items, pieces=pieces)


def _vectors(a: Atlas, repo_id: str) -> dict[tuple[str, str], Vector]:
    row = a.store.model(repo_id)
    textset = a.store.textset("mini")
    return {(v.variant, v.kind): v
            for v in a.store.vector_pieces(textset_id=textset.id, model_id=row.id)}  # fmt: skip


def _make_outdated(a: Atlas, repo_id: str, shift: float) -> None:
    """Turn a model's vectors into what scorer 1 left: no template fields, other numbers."""
    with a.store.session() as s:
        for vec in _vectors(a, repo_id).values():
            row = s.get(Vector, vec.id)
            row.values = (row.array() + np.float32(shift)).astype("<f4").tobytes()
            row.scorer_version = "atlas-scorer/1"
            row.template_mode = row.template_sha256 = row.template_clock = None
            s.add(row)


def test_vectors_record_the_template_mode_sha_and_clock(atlas_sqlite, zoo_by_name, tmp_path, cli):
    atlas_db = atlas_sqlite
    plain = zoo_by_name["atlas-zoo/llama-chat-a"].path
    r1 = _with_template(plain, tmp_path / "r1-style", R1)
    dated = _with_template(plain, tmp_path / "dated", LLAMA32)
    for folder in (plain, r1, dated):
        atlas_db.score(folder, "mini", variants="base")
    got = {name: _vectors(atlas_db, name) for name in ("llama-chat-a", "r1-style", "dated")}
    zoo_sha = hashlib.sha256(zoo.LLAMA3_TEMPLATE.encode()).hexdigest()
    for name, mode, sha, clock in (
        ("llama-chat-a", GENERATION_PROMPT, zoo_sha, None),
        ("r1-style", FINISHED_TURN, hashlib.sha256(R1.encode()).hexdigest(), None),
        ("dated", GENERATION_PROMPT, hashlib.sha256(LLAMA32.encode()).hexdigest(), "2024-07-26"),
    ):
        assert set(got[name]) == {("base", "conditional"), ("base", "unconditional")}
        for vec in got[name].values():
            stored = (vec.template_mode, vec.template_sha256, vec.template_clock)
            assert stored == (mode, sha, clock)
            assert vec.scorer_version == SCORER_VERSION
    listed = {r["model"]: r for r in json.loads(cli("--db", atlas_db.store.url, "models", "list",
                                                    "--json").stdout)}  # fmt: skip
    assert listed["r1-style"]["template_mode"] == FINISHED_TURN
    assert listed["llama-chat-a"]["template_mode"] == GENERATION_PROMPT
    assert listed["dated"]["template_clock"] == "2024-07-26"


def test_rescore_outdated_recomputes_only_what_changes(
    atlas_db, zoo_by_name, tmp_path, monkeypatch
):
    plain = zoo_by_name["atlas-zoo/llama-chat-b"].path
    repos = {
        "org/plain": plain,
        "org/r1-style": _with_template(plain, tmp_path / "r1", R1),
        "org/dated": _with_template(plain, tmp_path / "dated", LLAMA32),
    }
    _, items = load_items(atlas_db.store, "mini")
    pieces = [("base", "conditional"), ("base", "unconditional")]
    with LocalHub([RepoSpec(r, f) for r, f in repos.items()]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        for repo in repos:
            atlas_db.score(repo, "mini", variants="base")
        atlas_db.score(zoo_by_name["atlas-zoo/llama-chat-a"].path, "mini", variants="base")
        for repo in [*repos, "llama-chat-a"]:
            _make_outdated(atlas_db, repo, shift=-1.0)
        before = {repo: _vectors(atlas_db, repo) for repo in [*repos, "llama-chat-a"]}
        shutil.rmtree(atlas_db.settings.weights_dir)  # as a sync leaves it: weights deleted
        earlier = len(hub.requests_to("*/resolve/*", "GET"))
        done = atlas_db.rescore_outdated()
        fetched = [r.path for r in hub.requests_to("*/resolve/*", "GET")][earlier:]
    assert set(done.rescored) == {"org/r1-style", "org/dated"}
    assert all(len(p) == len(pieces) for p in done.rescored.values())
    assert done.restamped == {"org/plain": len(pieces)}
    assert set(done.skipped) == {"llama-chat-a"} and not done.failed
    # The plain template's weights were not downloaded again: its template decided.
    assert not any("org/plain" in p and p.endswith(".safetensors") for p in fetched)
    assert any("org/dated" in p and p.endswith(".safetensors") for p in fetched)
    assert any("org/plain" in p and p.endswith("tokenizer_config.json") for p in fetched)
    for repo in ("org/r1-style", "org/dated"):
        want = _fresh(repos[repo], items, pieces)
        for key, vec in _vectors(atlas_db, repo).items():
            assert vec.scorer_version == SCORER_VERSION
            assert np.abs(vec.array() - want[key].values).max() <= 1e-4
            assert np.abs(vec.array() - before[repo][key].array()).max() > 0.5
    after = _vectors(atlas_db, "org/dated")
    assert {v.template_clock for v in after.values()} == {"2024-07-26"}
    assert {v.template_mode for v in _vectors(atlas_db, "org/r1-style").values()} == {FINISHED_TURN}
    for key, vec in _vectors(atlas_db, "org/plain").items():
        # Same numbers by the definition: kept bit for bit, provenance brought up to date.
        assert vec.values == before["org/plain"][key].values
        assert (vec.scorer_version, vec.template_mode) == (SCORER_VERSION, GENERATION_PROMPT)
    for vec in _vectors(atlas_db, "llama-chat-a").values():
        assert vec.scorer_version == "atlas-scorer/1"  # a local folder: reported, not touched
    # Nothing is outdated any more but the local folder's vectors.
    again = atlas_db.rescore_outdated()
    assert not again.rescored and not again.restamped and set(again.skipped) == {"llama-chat-a"}


def test_sync_rescore_outdated_from_the_cli(cli, tmp_path, zoo_by_name, monkeypatch):
    plain = zoo_by_name["atlas-zoo/llama-chat-b"].path
    r1 = _with_template(plain, tmp_path / "r1", R1)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with LocalHub([RepoSpec("org/r1-style", r1, downloads=5000)]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with Atlas(url) as a:
            import_items(a.store, "mini", read_items(sample_path())[::50])
            a.score("org/r1-style", "mini", variants="base")
            _make_outdated(a, "org/r1-style", shift=-1.0)
        result = cli("--db", url, "sync", "--textset", "mini", "--min-downloads", "0",
                     "--rescore-outdated", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert list(summary["rescore_outdated"]["rescored"]) == ["org/r1-style"]
    with Atlas(url) as a, a.store.session() as s:
        versions = {v.scorer_version for v in s.exec(select(Vector))}
    assert versions == {SCORER_VERSION}


def test_export_shows_the_template_mode(cli, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _vectorstore import clustered, make_textset, put_vector

    url = f"sqlite:///{tmp_path / 'map.db'}"
    with Atlas(url) as a:
        ts = make_textset(a.store, 40)
        L = clustered(6, 40, seed=3)
        modes = [GENERATION_PROMPT, FINISHED_TURN, None] * 2
        index = {put_vector(a.store, ts, f"org/m{i}", L[i]).id: i for i in range(len(modes))}
        with a.store.session() as s:
            for vec in s.exec(select(Vector)):
                i = index[vec.model_id]
                vec.template_mode = modes[i]
                vec.template_sha256 = "ab" * 32 if modes[i] else None
                s.add(vec)
    assert cli("--db", url, "map", "refresh", "--method", "pca").exit_code == 0
    out = tmp_path / "out"
    assert cli("--db", url, "export", str(out)).exit_code == 0
    record = json.loads((out / "snapshot.json").read_text())
    got = {m["repo_id"]: m["template"] for m in record["models"]}
    for i, mode in enumerate(modes):
        assert got[f"org/m{i}"]["mode"] == mode
        assert got[f"org/m{i}"]["sha256"] == ("ab" * 32 if mode else None)
    from atlas.export import snapshot as export

    assert ("template_mode", "template mode") in export.COLOUR_ATTRIBUTES
    page = (out / "map.html").read_text()
    for mode in (GENERATION_PROMPT, FINISHED_TURN, "not recorded"):
        assert f'"template_mode": "{mode}"' in page or f'"template_mode":"{mode}"' in page
