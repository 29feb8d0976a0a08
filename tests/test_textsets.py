"""Text sets: formats, canonical hashing, idempotent import, refusals, atomicity."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas.errors import TextSetError
from atlas.textsets import (
    Item,
    canonical_hash,
    ensure_sample,
    import_file,
    load_items,
    read_items,
    sample_path,
)

PAIRS = [
    {"prompt": "What is 2+2?", "response": "4."},
    {"prompt": "Say hi\u2028there", "response": "Hi, \"there\"!\nBye."},
    {"prompt": "", "response": "An answer to nothing."},
]


def _jsonl(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return path


def test_formats_agree(tmp_path):
    a = read_items(_jsonl(tmp_path / "a.jsonl", PAIRS))
    chat = [{"messages": [{"role": "system", "content": "be nice"},
                          {"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["response"]}]} for r in PAIRS]
    b = read_items(_jsonl(tmp_path / "b.jsonl", chat))
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "c.parquet")
    c = read_items(tmp_path / "c.parquet")
    import csv

    with (tmp_path / "d.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "response"])
        w.writeheader()
        w.writerows(PAIRS)
    d = read_items(tmp_path / "d.csv")
    assert a == b == c == d
    assert a[1].prompt == "Say hi\u2028there"  # U+2028 did not split the record


def test_canonical_hash_is_by_content_and_order():
    items = [Item(prompt="a", response="b"), Item(prompt="c", response="d")]
    assert canonical_hash("pairs", items) == canonical_hash("pairs", list(items))
    assert canonical_hash("pairs", items) != canonical_hash("pairs", items[::-1])
    assert canonical_hash("plain", [Item(text="x")]) != canonical_hash("plain", [Item(text="y")])


def test_import_is_idempotent_and_refuses_conflicts(store, tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", PAIRS)
    first = import_file(store, path, "demo")
    assert first.created and first.textset.size == 3 and first.textset.kind == "pairs"
    again = import_file(store, path, "demo")
    assert not again.created and again.textset.id == first.textset.id
    other = _jsonl(tmp_path / "b.jsonl", PAIRS[:2])
    with pytest.raises(TextSetError, match="already exists with different content"):
        import_file(store, other, "demo")
    ts, items = load_items(store, "demo")
    assert ts.sha256 == canonical_hash("pairs", items)
    assert [it.prompt for it in items] == [r["prompt"] for r in PAIRS]


def test_plain_set(store, tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"text": "one"}, {"text": "two"}])
    assert import_file(store, path, "plain").textset.kind == "plain"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a", "response": "b"}\nnot json\n', "p.jsonl:2: invalid JSON"),
        ('{"prompt": "a"}\n', "must both be strings"),
        ('{"foo": 1}\n', "needs 'prompt' and 'response'"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n', "one user and one assistant"),
        ('{"prompt": "a", "response": "b"}\n{"text": "c"}\n', "mixes"),
        ("\n\n", "no items"),
    ],
)
def test_malformed_files_store_nothing(store, tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(TextSetError, match=message):
        import_file(store, path, "bad")
    assert store.textsets() == []


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TextSetError, match="unsupported format"):
        read_items(tmp_path / "x.txt")
    with pytest.raises(TextSetError, match="no such file"):
        read_items(tmp_path / "missing.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(TextSetError, match="Parquet"):
        read_items(tmp_path / "bad.parquet")


def test_sample_ships_with_package(store):
    items = read_items(sample_path())
    assert len(items) >= 200
    assert len({it.prompt for it in items}) == len(items)
    t = ensure_sample(store)
    assert t.name == "sample" and t.size == len(items)
    assert ensure_sample(store).id == t.id
