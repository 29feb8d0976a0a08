"""`atlas textset build`: sample single-turn pairs from Hub datasets (Parquet and JSONL)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from atlas.hub.datasets import is_data_file, pair_of, sample_pairs
from atlas.store import Store
from atlas.testing.demo_hub import INFINITY_LIKE, TULU_LIKE, dataset_repos
from atlas.testing.hub import LocalHub
from atlas.textsets import Item, canonical_hash


@pytest.fixture
def hub(tmp_path, monkeypatch):
    hub = LocalHub(dataset_repos(tmp_path / "datasets"))
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    yield hub
    hub.stop()


def _eligible_tulu(folder) -> list[Item]:
    """Single-turn pairs of the tulu-like files, by hand, in file order."""
    out = []
    for path in sorted((folder / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            turns = [m for m in row["messages"] if m["role"] != "system"]
            if [m["role"] for m in turns] == ["user", "assistant"]:
                out.append(Item(prompt=turns[0]["content"], response=turns[1]["content"]))
    return out


def test_build_from_parquet_messages(cli, db_url, hub, tmp_path) -> None:
    args = ("--db", db_url, "textset", "build", "--dataset", TULU_LIKE, "--n", "10")
    first = cli(*args, "--seed", "0", "--name", "tulu-10")
    assert first.exit_code == 0, first.stderr
    assert "built: tulu-10 (10 pairs" in first.stderr
    shown = json.loads(cli("--db", db_url, "textset", "show", "tulu-10", "--limit", "10",
                           "--json").stdout)  # fmt: skip
    sha = hub.sha(TULU_LIKE, repo_type="dataset")
    assert shown["source"] == f"{TULU_LIKE}@{sha}" and shown["size"] == 10
    eligible = _eligible_tulu(hub._get("dataset", TULU_LIKE).spec.folder)
    items = [Item(prompt=r["prompt"], response=r["response"]) for r in shown["items"]]
    assert all(item in eligible for item in items)
    assert items == sorted(items, key=eligible.index)  # dataset order
    # reproducible: same seed, same content hash; the same command again is a no-op
    again = cli(*args, "--seed", "0", "--name", "tulu-10")
    assert again.exit_code == 0 and "already stored" in again.stderr
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    cli("--db", other_db, "textset", "build", "--dataset", TULU_LIKE, "--n", "10",
        "--name", "copy")  # fmt: skip
    store, other = Store(db_url), Store(other_db)
    assert store.textset("tulu-10").sha256 == other.textset("copy").sha256
    assert store.textset("tulu-10").sha256 == canonical_hash("pairs", items)
    # another seed draws another sample
    assert cli(*args, "--seed", "1", "--name", "tulu-10-s1").exit_code == 0
    assert store.textset("tulu-10-s1").sha256 != store.textset("tulu-10").sha256
    store.close()
    other.close()
    # downloads land under ATLAS_HOME/datasets, pinned to the commit
    assert list((tmp_path / "atlas-home" / "datasets" / TULU_LIKE / sha).rglob("*.parquet"))


def test_build_from_jsonl_conversations(cli, hub) -> None:
    result = cli("textset", "build", "--dataset", INFINITY_LIKE, "--n", "6", "--seed", "3",
                 "--split", "train")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    name = "infinity-like-6-seed3"
    shown = json.loads(cli("textset", "show", name, "--limit", "6", "--json").stdout)
    folder = hub._get("dataset", INFINITY_LIKE).spec.folder
    lines = (folder / "train.jsonl").read_text().split("\n")
    pairs = {}
    for line in filter(None, lines):
        turns = json.loads(line)["conversations"]
        if len(turns) == 2:
            pairs[turns[0]["value"]] = turns[1]["value"]
    assert len(shown["items"]) == 6
    for item in shown["items"]:
        assert pairs[item["prompt"]] == item["response"]


def test_build_errors(cli, hub) -> None:
    too_many = cli("textset", "build", "--dataset", INFINITY_LIKE, "--n", "100000")
    assert too_many.exit_code == 5 and "single-turn" in too_many.stderr
    no_split = cli("textset", "build", "--dataset", TULU_LIKE, "--n", "2", "--split", "test")
    assert no_split.exit_code == 5 and "no Parquet or JSONL files" in no_split.stderr
    missing = cli("textset", "build", "--dataset", "nobody/nothing", "--n", "2")
    assert missing.exit_code == 4


def test_build_with_the_hub_down_is_one_line(cli, monkeypatch) -> None:

    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "0.01")
    with LocalHub() as down:  # started, then stopped: nothing listens on its port
        endpoint = down.endpoint
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    r = cli("textset", "build", "--dataset", TULU_LIKE, "--n", "2")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: downloading dataset") and "Traceback" not in r.stderr
    assert cli("textset", "list", "--json").stdout.strip() == "[]"


def test_pair_extraction_rules() -> None:
    user, bot = {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}
    system = {"role": "system", "content": "Be brief."}
    assert pair_of({"messages": [user, bot]}) == Item(prompt="Hi?", response="Hello.")
    assert pair_of({"messages": [system, user, bot]}) == Item(prompt="Hi?", response="Hello.")
    assert pair_of({"messages": json.dumps([user, bot])}) == Item(prompt="Hi?", response="Hello.")
    assert pair_of({"messages": [user, bot, user, bot]}) is None
    assert pair_of({"messages": [bot, user]}) is None
    assert pair_of({"messages": [user, {"role": "assistant", "content": "  "}]}) is None
    conv = [{"from": "system", "value": "x"}, {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"}]  # fmt: skip
    assert pair_of({"conversations": conv}) == Item(prompt="Q", response="A")
    assert pair_of({"text": "plain"}) is None


def test_split_file_selection() -> None:
    assert is_data_file("data/train-00000-of-00002.parquet", "train")
    assert is_data_file("train/part-0.jsonl", "train")
    assert is_data_file("data/sft_train.jsonl", "train")
    assert not is_data_file("data/test-00000-of-00001.parquet", "train")
    assert is_data_file("data/test-00000-of-00001.parquet", None)
    assert not is_data_file("README.md", None)


def test_sampling_is_uniform_without_replacement(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(50)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items, eligible = sample_pairs([path], 20, seed=7)
    assert eligible == 50 and len({it.prompt for it in items}) == 20
    assert items == sample_pairs([path], 20, seed=7)[0]
    assert [int(it.prompt[1:]) for it in items] == sorted(int(it.prompt[1:]) for it in items)
