"""Text sets from Hub datasets: sample N single-turn prompt-response pairs reproducibly.

Reads the dataset's Parquet or JSONL files (downloaded with huggingface_hub at a pinned
revision), keeps conversations with exactly one user turn followed by one assistant turn (an
optional leading system turn is dropped), in the `messages` format (role/content, as in
tulu-3-sft-mixture) or the `conversations` format (from/value, as in Infinity-Instruct), and
samples N of them with `random.Random(seed)`. The text set's source is `dataset@revision`.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError, HubError, NotFound, TextSetError, UsageError
from atlas.hub import client
from atlas.settings import Settings
from atlas.store import Store
from atlas.textsets import ImportResult, Item, import_items

DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".ndjson")
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "model", "bot", "chatgpt"})
SYSTEM_ROLES = frozenset({"system"})
COLUMNS = ("messages", "conversations")


@dataclass(frozen=True)
class DatasetFiles:
    """The data files chosen from a dataset repo at one revision."""

    dataset: str
    revision: str
    files: list[str]


def is_data_file(path: str, split: str | None) -> bool:
    """Parquet/JSONL data files, restricted to a split when one is named."""
    lower = path.lower()
    if not lower.endswith(DATA_SUFFIXES) or lower.rsplit("/", 1)[-1].startswith("."):
        return False
    if split is None:
        return True
    parts = lower.replace("\\", "/").split("/")
    name = parts[-1]
    split = split.lower()
    return split in parts[:-1] or any(
        fnmatch.fnmatchcase(name, pattern)
        for pattern in (f"{split}.*", f"{split}-*", f"{split}_*", f"*-{split}.*", f"*_{split}.*",
                        f"*-{split}-*")
    )  # fmt: skip


def pair_of(record: Any) -> Item | None:
    """The single-turn (prompt, response) of a record, or None when it has another shape."""
    if not isinstance(record, dict):
        return None
    turns = None
    for column in COLUMNS:
        if column in record:
            turns = record[column]
            break
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except ValueError:
            return None
    if not isinstance(turns, list):
        return None
    roles, texts = [], []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        role = turn.get("role", turn.get("from"))
        text = turn.get("content", turn.get("value"))
        if not isinstance(role, str) or not isinstance(text, str):
            return None
        roles.append(role.lower())
        texts.append(text)
    if roles and roles[0] in SYSTEM_ROLES:
        roles, texts = roles[1:], texts[1:]
    if len(roles) != 2 or roles[0] not in USER_ROLES or roles[1] not in ASSISTANT_ROLES:
        return None
    prompt, response = texts
    if not prompt.strip() or not response.strip():
        return None
    return Item(prompt=prompt, response=response)


def _jsonl_records(path: Path) -> Iterator[Any]:
    opener: Callable[..., Any] = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read().decode("utf-8-sig")
    stripped = raw.lstrip()
    if path.name.endswith(".json") and stripped.startswith("["):
        yield from json.loads(raw)
        return
    # Split on "\n" only: U+2028 and friends may legally appear inside JSON strings.
    for lineno, line in enumerate(raw.split("\n"), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise TextSetError(f"{path.name}:{lineno}: invalid JSON ({exc})") from exc


def _parquet_records(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise TextSetError(f"{path.name}: not a readable Parquet file ({exc})") from exc
    columns = [c for c in COLUMNS if c in pf.schema_arrow.names]
    if not columns:
        return
    for batch in pf.iter_batches(columns=columns[:1], batch_size=4096):
        yield from batch.to_pylist()


def records(path: Path) -> Iterator[Any]:
    """Every record of a data file, in order."""
    if path.name.lower().endswith(".parquet"):
        yield from _parquet_records(path)
    else:
        yield from _jsonl_records(path)


def sample_pairs(paths: list[Path], n: int, seed: int) -> tuple[list[Item], int]:
    """N single-turn pairs drawn without replacement with Random(seed), in dataset order.

    Returns the sample and how many eligible pairs there were. Two passes over the files keep
    memory to the positions of eligible rows, so large datasets fit.
    """
    eligible: list[tuple[int, int]] = []
    for f, path in enumerate(paths):
        for r, record in enumerate(records(path)):
            if pair_of(record) is not None:
                eligible.append((f, r))
    if n > len(eligible):
        raise TextSetError(
            f"only {len(eligible)} single-turn prompt-response pairs in the dataset; asked for {n}"
        )
    chosen = sorted(random.Random(seed).sample(range(len(eligible)), n))
    wanted: dict[int, set[int]] = {}
    for i in chosen:
        f, r = eligible[i]
        wanted.setdefault(f, set()).add(r)
    items: list[Item] = []
    for f, rows in sorted(wanted.items()):
        for r, record in enumerate(records(paths[f])):
            if r in rows:
                item = pair_of(record)
                assert item is not None
                items.append(item)
    return items, len(eligible)


def dataset_files(api: Any, dataset: str, revision: str | None, split: str | None) -> DatasetFiles:
    """Resolve the dataset's revision to a commit and choose its data files."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = client.with_retries(
            f"{dataset}: dataset info",
            lambda: api.dataset_info(dataset, revision=revision, files_metadata=False),
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise NotFound(f"no dataset {dataset!r} on {api.endpoint} (or no access)") from exc
    names = sorted(s.rfilename for s in (info.siblings or []))
    files = [n for n in names if is_data_file(n, split)]
    if not files:
        where = f" for split {split!r}" if split else ""
        raise TextSetError(f"dataset {dataset!r} has no Parquet or JSONL files{where}")
    return DatasetFiles(dataset, info.sha, files)


def build_textset(
    store: Store,
    dataset: str,
    *,
    n: int,
    seed: int = 0,
    name: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    settings: Settings | None = None,
    api: Any = None,
    progress: Callable[[str], None] | None = None,
) -> ImportResult:
    """Download a Hub dataset's data files and store N sampled pairs as a text set."""
    from huggingface_hub import snapshot_download

    if n < 1:
        raise UsageError("`n` must be at least 1")
    settings = settings or Settings.from_env()
    say = progress or (lambda _m: None)
    api = api or client.make_api()
    try:
        chosen = dataset_files(api, dataset, revision, split)
        dest = settings.home / "datasets" / dataset / chosen.revision
        say(f"downloading {len(chosen.files)} data file(s) of {dataset}@{chosen.revision[:12]}")
        with client.quiet_bars():
            client.with_retries(
                f"{dataset}: download",
                lambda: snapshot_download(
                    dataset,
                    repo_type="dataset",
                    revision=chosen.revision,
                    allow_patterns=chosen.files,
                    local_dir=dest,
                    endpoint=api.endpoint,
                    token=api.token,
                    etag_timeout=client.timeout(),
                ),
                say,
            )
    except AtlasError:
        raise
    except Exception as exc:  # the Hub's and the HTTP client's errors, after retries
        raise HubError(f"downloading dataset {dataset} from {api.endpoint} failed: {exc}") from exc
    paths = [dest / f for f in chosen.files]
    missing = [str(p.name) for p in paths if not p.is_file()]
    if missing:
        raise TextSetError(f"download of {dataset} is incomplete: {', '.join(missing)}")
    items, eligible = sample_pairs(paths, n, seed)
    say(f"sampled {n} of {eligible} single-turn pairs with seed {seed}")
    default = f"{dataset.rsplit('/', 1)[-1]}-{n}-seed{seed}"
    return import_items(store, name or default, items, source=f"{dataset}@{chosen.revision}")
