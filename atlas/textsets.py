"""Text sets: reading files, canonical hashing, importing into the store."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from atlas.errors import NotFound, TextSetError
from atlas.store import Store, queries
from atlas.store.queries import SAMPLE_NAME
from atlas.store.tables import TextSet

# The longest item accepted at import, in characters (prompt + response, or the text): about
# 50,000 tokens, far beyond any model's context; scoring cuts to --max-tokens anyway.
MAX_ITEM_CHARS = 200_000


@dataclass(frozen=True)
class Item:
    """One text-set item: a prompt-response pair, or a plain text."""

    prompt: str | None = None
    response: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """What an import did: `created` is False when identical content was already stored."""

    textset: TextSet
    created: bool
    duplicates: int = 0  # items identical to an earlier item of the same set


def check_text(value: str, where: str, field: str) -> str:
    """Refuse text no store can hold as is: NUL characters, lone surrogates (not UTF-8)."""
    if "\x00" in value:
        raise TextSetError(f"{where}: {field!r} holds a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextSetError(
            f"{where}: {field!r} holds a lone surrogate (\\u{ord(value[exc.start]):04x}), "
            "which is not Unicode text"
        ) from None
    return value


def _checked(item: Item, where: str) -> Item:
    size = 0
    for field in ("prompt", "response", "text"):
        value = getattr(item, field)
        if value is not None:
            check_text(value, where, field)
            size += len(value)
    if size > MAX_ITEM_CHARS:
        raise TextSetError(
            f"{where}: the item has {size:,} characters, more than the {MAX_ITEM_CHARS:,} allowed"
        )
    return item


def sample_path() -> Path:
    """The sample text set shipped with the package."""
    return Path(str(resources.files("atlas") / "data" / "sample.jsonl"))


def canonical_hash(kind: str, items: Sequence[Item]) -> str:
    """sha256 over a canonical JSON serialisation of the kind and the items in order."""
    if kind == "pairs":
        rows: list[Any] = [[it.prompt, it.response] for it in items]
    else:
        rows = [it.text for it in items]
    payload = json.dumps(
        {"format": "atlas-textset/1", "kind": kind, "items": rows},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _record_to_item(record: Any, where: str) -> Item:
    return _checked(_to_item(record, where), where)


def _to_item(record: Any, where: str) -> Item:
    if not isinstance(record, dict):
        raise TextSetError(f"{where}: expected an object, got {type(record).__name__}")
    if "messages" in record:
        return _messages_to_item(record["messages"], where)
    if "prompt" in record or "response" in record:
        prompt, response = record.get("prompt"), record.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise TextSetError(f"{where}: 'prompt' and 'response' must both be strings")
        if not response:
            raise TextSetError(f"{where}: empty response")
        return Item(prompt=prompt, response=response)
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str) or not text:
            raise TextSetError(f"{where}: 'text' must be a non-empty string")
        return Item(text=text)
    raise TextSetError(f"{where}: needs 'prompt' and 'response', 'messages', or 'text'")


def _messages_to_item(messages: Any, where: str) -> Item:
    if not isinstance(messages, list):
        raise TextSetError(f"{where}: 'messages' must be a list")
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    roles = [m.get("role") for m in turns]
    if roles != ["user", "assistant"]:
        raise TextSetError(
            f"{where}: 'messages' must hold one user and one assistant turn, got {roles}"
        )
    prompt, response = turns[0].get("content"), turns[1].get("content")
    if not isinstance(prompt, str) or not isinstance(response, str) or not response:
        raise TextSetError(f"{where}: message contents must be strings (non-empty response)")
    return Item(prompt=prompt, response=response)


def _read_jsonl(path: Path) -> list[Item]:
    items = []
    raw = path.read_bytes().decode("utf-8-sig")
    # Split on "\n" only: U+2028 and friends may legally appear inside JSON strings.
    for lineno, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        if len(line) > 4 * MAX_ITEM_CHARS + 4096:  # before parsing: \uXXXX escapes are 6 chars
            raise TextSetError(
                f"{path.name}:{lineno}: a line of {len(line):,} characters; items may have at "
                f"most {MAX_ITEM_CHARS:,}"
            )
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextSetError(f"{path.name}:{lineno}: invalid JSON ({exc.msg})") from exc
        except RecursionError:
            raise TextSetError(f"{path.name}:{lineno}: JSON nested too deeply") from None
        items.append(_record_to_item(record, f"{path.name}:{lineno}"))
    return items


def _read_rows(rows: Iterable[dict[str, Any]], name: str) -> list[Item]:
    items = []
    for n, row in enumerate(rows, start=1):
        record = {k: v for k, v in row.items() if k in ("prompt", "response", "text", "messages")}
        if isinstance(record.get("messages"), str):
            try:
                record["messages"] = json.loads(record["messages"])
            except json.JSONDecodeError as exc:
                raise TextSetError(f"{name}: row {n}: 'messages' is not JSON") from exc
            except RecursionError:
                raise TextSetError(f"{name}: row {n}: 'messages' nested too deeply") from None
        items.append(_record_to_item(record, f"{name}: row {n}"))
    return items


def read_items(path: Path) -> list[Item]:
    """Read a JSONL, CSV or Parquet file of pairs or plain texts."""
    if not path.is_file():
        raise TextSetError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            items = _read_jsonl(path)
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                items = _read_rows(reader, path.name)
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            items = _read_rows(pq.read_table(path).to_pylist(), path.name)
        else:
            raise TextSetError(
                f"{path.name}: unsupported format {suffix!r} (use .jsonl, .csv or .parquet)"
            )
    except UnicodeDecodeError as exc:
        raise TextSetError(f"{path.name}: not UTF-8 text") from exc
    except (csv.Error, OSError) as exc:
        raise TextSetError(f"{path.name}: cannot read ({exc})") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):
            raise TextSetError(f"{path.name}: not a readable Parquet file ({exc})") from exc
        raise
    if not items:
        raise TextSetError(f"{path.name}: no items")
    return items


def kind_of(items: Sequence[Item], name: str = "text set") -> str:
    """'pairs' or 'plain'; a mix of the two is refused."""
    kinds = {"plain" if it.text is not None else "pairs" for it in items}
    if len(kinds) != 1:
        raise TextSetError(f"{name}: mixes prompt-response pairs and plain texts")
    return kinds.pop()


def import_items(
    store: Store, name: str, items: Sequence[Item], *, source: str | None = None
) -> ImportResult:
    """Store `items` as text set `name` in one transaction; identical content is a no-op."""
    if not name or len(name) > 128:
        raise TextSetError("a text set name must be 1-128 characters")
    check_text(name, "text set name", "name")
    if source is not None:
        check_text(source, "text set source", "source")
    for i, it in enumerate(items):
        _checked(it, f"{name}: item {i + 1}")
    kind = kind_of(items, name)
    digest = canonical_hash(kind, items)
    duplicates = len(items) - len({(it.prompt, it.response, it.text) for it in items})
    row = TextSet(name=name, kind=kind, sha256=digest, size=len(items), source=source)
    fields = ({"prompt": it.prompt, "response": it.response, "text": it.text} for it in items)
    textset, created = queries.insert_textset(store, row, fields)
    if not created and textset.sha256 != digest:
        raise TextSetError(
            f"text set {name!r} already exists with different content "
            f"(stored {textset.sha256[:12]}, file {digest[:12]}); choose another `name`"
        )
    return ImportResult(textset, created=created, duplicates=duplicates)


def import_file(
    store: Store, path: Path, name: str | None = None, *, source: str | None = None
) -> ImportResult:
    """Read `path` and store it as text set `name` (default: the file's stem)."""
    items = read_items(path)
    return import_items(store, name or path.stem, items, source=source or str(path.resolve()))


def ensure_sample(store: Store) -> TextSet:
    """Import the packaged sample text set as `sample` if it is not there."""
    return import_file(store, sample_path(), SAMPLE_NAME, source="atlas:sample").textset


def load_items(store: Store, name: str) -> tuple[TextSet, list[Item]]:
    """A stored text set and its items, in order."""
    textset = store.textset(name)
    rows = queries.textset_items(store, textset)
    items = [Item(prompt=r.prompt, response=r.response, text=r.text) for r in rows]
    if len(items) != textset.size:
        raise NotFound(f"text set {name!r} is incomplete ({len(items)}/{textset.size} items)")
    return textset, items
