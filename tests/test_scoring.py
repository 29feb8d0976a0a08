"""Scoring into the store: the CLI end to end, provenance, resume, failures, the Hub path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from atlas.api import Atlas  # noqa: E402
from atlas.errors import ModelFailure, UsageError  # noqa: E402
from atlas.scoring.engine import SCORER_VERSION, score_items  # noqa: E402
from atlas.scoring.loading import local_revision  # noqa: E402
from atlas.testing.hub import LocalHub, RepoSpec  # noqa: E402
from atlas.textsets import Item, import_items, load_items, read_items, sample_path  # noqa: E402


@pytest.fixture
def db_url(tmp_path) -> str:
    """Backend-agnostic: SQLite only (the store, sync and queue tests cover Postgres)."""
    return f"sqlite:///{tmp_path / 'store.db'}"

ALL_PIECES = {
    ("base", "conditional"), ("cot", "conditional"), ("repeat", "conditional"),
    ("repeat+cot", "conditional"), ("base", "unconditional"),
}  # fmt: skip


@pytest.fixture
def atlas_db(db_url):
    """An Atlas on the parametrized database, with a small pair set `mini` imported."""
    with Atlas(db_url) as a:
        import_items(a.store, "mini", read_items(sample_path())[::30])
        yield a


def _reference(zoo_model, items, variants=("base", "cot", "repeat", "repeat+cot")):
    model = AutoModelForCausalLM.from_pretrained(zoo_model.path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(zoo_model.path)
    return score_items(model, tok, items, variants)


def _pieces(a: Atlas, repo_id: str, textset_name: str) -> dict[tuple[str, str], object]:
    model = a.store.model(repo_id)
    textset = a.store.textset(textset_name)
    return {
        (v.variant, v.kind): v
        for v in a.store.vector_pieces(textset_id=textset.id, model_id=model.id)
    }


def test_cli_scores_a_zoo_folder(cli, db_url, zoo_by_name, tmp_path):
    # The full 300-pair sample on SQLite; a 10-pair set imported by the CLI on Postgres.
    zoo_model = zoo_by_name["atlas-zoo/qwen-chat-a"]
    name, size = "sample", 300
    if db_url.startswith("postgresql"):
        name, size = "ten", 10
        path = tmp_path / "ten.jsonl"
        path.write_text("".join(
            json.dumps({"prompt": it.prompt, "response": it.response}) + "\n"
            for it in read_items(sample_path())[::30]
        ))  # fmt: skip
        assert cli("--db", db_url, "textset", "import", str(path)).exit_code == 0
    r = cli("--db", db_url, "score", str(zoo_model.path), "--textset", name, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert {tuple(p) for p in summary["computed"]} == ALL_PIECES and summary["items"] == size
    assert "scored qwen-chat-a@" in r.stderr  # the one-line summary
    with Atlas(db_url) as a:
        row = a.store.model("qwen-chat-a")
        assert (row.status, row.reason, row.source) == ("scored", None, "local")
        assert row.revision == local_revision(zoo_model.path) and len(row.revision) == 40
        assert (row.model_type, row.architecture) == ("qwen2", "Qwen2ForCausalLM")
        assert row.has_chat_template is True and row.num_parameters > 100_000
        pieces = _pieces(a, "qwen-chat-a", name)
        assert set(pieces) == ALL_PIECES
        textset, items = load_items(a.store, name)
    check = list(range(0, size, max(1, size // 10)))  # recompute a tenth directly
    want = _reference(zoo_model, [items[i] for i in check])
    for key, vec in pieces.items():
        assert vec.n == size and vec.revision == row.revision
        assert vec.textset_sha256 == textset.sha256
        assert (vec.dtype, vec.device, vec.scorer_version) == ("float32", "cpu", SCORER_VERSION)
        assert vec.truncated == 0
        assert np.array_equal(vec.token_array()[check], want[key].token_counts)
        assert np.abs(vec.array()[check] - want[key].values).max() <= 1e-3  # float32 storage
    # A second run finds every piece stored and computes nothing.
    r = cli("--db", db_url, "score", str(zoo_model.path), "--textset", name, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["computed"] == []
    assert "already stored" in r.stderr


def test_resume_keeps_stored_pieces(atlas_db, zoo_by_name):
    path = zoo_by_name["atlas-zoo/llama-chat-a"].path
    first = atlas_db.score(path, "mini", variants="base")
    assert set(first.computed) == {("base", "conditional"), ("base", "unconditional")}
    textset = atlas_db.store.textset("mini")
    model = atlas_db.store.model("llama-chat-a")
    before = {
        (v.variant, v.kind): (v.id, v.created_at)
        for v in atlas_db.store.vector_pieces(textset_id=textset.id, model_id=model.id)
    }
    seen: list[int] = []
    second = atlas_db.score(path, "mini", progress=lambda n, total: seen.append(n))
    assert set(second.reused) == set(before)
    assert set(second.computed) == ALL_PIECES - set(before)
    assert sum(seen) == 3 * textset.size  # only the three new pieces went through the model
    after = {
        (v.variant, v.kind): (v.id, v.created_at)
        for v in atlas_db.store.vector_pieces(textset_id=textset.id, model_id=model.id)
    }
    assert set(after) == ALL_PIECES
    for key, stamp in before.items():
        assert after[key] == stamp  # not rewritten
    forced = atlas_db.score(path, "mini", variants=["base"], force=True)
    assert set(forced.computed) == set(before) and forced.reused == []


def _bin_only_folder(zoo_model, tmp_path):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    for item in zoo_model.path.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy2(item, folder / item.name)
    # Never unpickled: these bytes would make torch.load fail loudly if anyone tried.
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle; must never be loaded")
    return folder


@pytest.mark.parametrize(
    ("name", "reason"),
    [("no-template", "no-chat-template"), ("broken-template", "template-mismatch"),
     ("nan", "non-finite"), ("bin-only", "no-safetensors")],
)  # fmt: skip
def test_a_failed_model_records_its_reason_and_stores_nothing(
    atlas_db, zoo_by_name, tmp_path, name, reason
):
    if name == "bin-only":
        path = _bin_only_folder(zoo_by_name["atlas-zoo/llama-base"], tmp_path)
    else:
        path = zoo_by_name[f"atlas-zoo/{name}"].path
    with pytest.raises(ModelFailure) as info:
        atlas_db.score(path, "mini")
    assert info.value.reason == reason
    row = atlas_db.store.model(name)
    assert (row.status, row.reason) == ("failed", reason) and row.detail
    textset = atlas_db.store.textset("mini")
    assert atlas_db.store.vector_pieces(textset_id=textset.id, model_id=row.id) == []


def test_a_failure_after_some_pieces_removes_them(atlas_db, zoo_by_name, monkeypatch):
    path = zoo_by_name["atlas-zoo/qwen-chat-b"].path
    textset = atlas_db.store.textset("mini")
    store = atlas_db.store
    put = store.put_vectors
    stored = {"pieces": 0}

    # The pieces share prefixes, so they are scored together and stored one after another:
    # the second write fails (after the first piece is really in the store).
    def fail_in_the_second_piece(pieces, **options):
        if stored["pieces"] == 1:
            model = store.model("qwen-chat-b")
            assert store.vector_pieces(textset_id=textset.id, model_id=model.id)
            raise ModelFailure("out-of-memory", "injected after the first piece")
        put(pieces, **options)
        stored["pieces"] += 1

    monkeypatch.setattr(store, "put_vectors", fail_in_the_second_piece)
    with pytest.raises(ModelFailure):
        atlas_db.score(path, "mini")
    row = store.model("qwen-chat-b")
    assert (row.status, row.reason) == ("failed", "out-of-memory")
    assert store.vector_pieces(textset_id=textset.id, model_id=row.id) == []


def test_plain_sets_give_one_unconditional_vector(atlas_db, zoo_by_name):
    import_items(atlas_db.store, "prose", [Item(text=t) for t in ("A cat sat.", "Rain fell.")])
    path = zoo_by_name["atlas-zoo/no-template"].path  # a base model without a template is fine
    summary = atlas_db.score(path, "prose", name="my/base")
    assert summary.computed == [("base", "unconditional")] and summary.model == "my/base"
    with pytest.raises(UsageError):
        atlas_db.score(path, "prose", variants="cot", name="my/base")


def test_bad_references_are_usage_errors(cli, tmp_path):
    r = cli("score", str(tmp_path / "missing-folder"))
    assert r.exit_code == 2 and "no such model folder" in r.stderr
    r = cli("score", "./nowhere", "--variants", "base,sideways")
    assert r.exit_code == 2


def test_scores_a_hub_model_by_repo_id(atlas_db, zoo_by_name, monkeypatch):
    zoo_model = zoo_by_name["atlas-zoo/llama-chat-b"]
    with LocalHub([RepoSpec("atlas-zoo/llama-chat-b", zoo_model.path)]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        # Transient server errors on the repo info and on the weights are retried.
        info_fault = hub.faults.add("/api/models/atlas-zoo/llama-chat-b*", 503)
        body_fault = hub.faults.add("*/resolve/*/model.safetensors", 500, method="GET")
        summary = atlas_db.score("atlas-zoo/llama-chat-b", "mini", variants="base")
        sha = hub.sha("atlas-zoo/llama-chat-b")
        fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests_to("*/resolve/*", "GET")}
    assert info_fault.fired == 1 and body_fault.fired == 1
    assert summary.source == "hub" and summary.revision == sha
    assert "model.safetensors" in fetched and "README.md" not in fetched
    row = atlas_db.store.model("atlas-zoo/llama-chat-b")
    assert (row.status, row.revision, row.source, row.author) == ("scored", sha, "hub", "atlas-zoo")
    _, items = load_items(atlas_db.store, "mini")
    want = _reference(zoo_model, items, ("base",))
    textset = atlas_db.store.textset("mini")
    for vec in atlas_db.store.vector_pieces(textset_id=textset.id, model_id=row.id):
        assert np.abs(vec.array() - want[(vec.variant, vec.kind)].values).max() <= 1e-3


def test_an_unreachable_hub_fails_the_model_with_download_error(cli, monkeypatch):

    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "0,0")
    with LocalHub() as down:  # started, then stopped: nothing listens on its port
        endpoint = down.endpoint
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    r = cli("score", "org/model", "--textset", "sample")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: download-error: org/model:")
    assert "retrying" in r.stderr  # the Hub client says when it retries
    rows = json.loads(cli("models", "list", "--json").stdout)
    assert [(m["model"], m["status"], m["reason"]) for m in rows] == [
        ("org/model", "failed", "download-error")
    ]


def test_a_hub_repo_without_safetensors_is_refused(atlas_db, zoo_by_name, tmp_path, monkeypatch):
    folder = _bin_only_folder(zoo_by_name["atlas-zoo/llama-base"], tmp_path)
    with LocalHub([RepoSpec("someone/pickled", folder)]) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(ModelFailure) as info:
            atlas_db.score("someone/pickled", "mini")
        with pytest.raises(ModelFailure) as missing:
            atlas_db.score("someone/absent", "mini")
        downloads = hub.requests_to("*/resolve/*")
    assert info.value.reason == "no-safetensors" and downloads == []
    assert atlas_db.store.model("someone/pickled").reason == "no-safetensors"
    assert missing.value.reason == "download-error"
    assert atlas_db.store.model("someone/absent").status == "failed"
