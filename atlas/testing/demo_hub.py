"""A local Hub for the demo and the sync tests: the zoo, plus repos that earn every skip reason.

`demo_repos(root)` builds the zoo (cached) and a few small synthetic repos, and returns
`RepoSpec`s with realistic downloads and creation dates; `start_demo_hub(root)` serves them (and
two small chat datasets, tulu-like Parquet and Infinity-Instruct-like JSONL) on 127.0.0.1 in one
call. `EXPECTED` says what `atlas sync` with default filters and no token decides for each repo.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from atlas.testing import zoo
from atlas.testing.hub import LocalHub, RepoSpec

DAY0 = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
TULU_LIKE = "atlas-data/tulu-like"
INFINITY_LIKE = "atlas-data/infinity-like"

# repo id -> (status, reason) after `atlas sync` with default filters and no HF_TOKEN.
EXPECTED: dict[str, tuple[str, str | None]] = {
    "atlas-zoo/llama-base": ("scored", None),
    "atlas-zoo/llama-chat-a": ("scored", None),
    "atlas-zoo/llama-chat-b": ("scored", None),
    "atlas-zoo/qwen-base": ("scored", None),
    "atlas-zoo/qwen-chat-a": ("scored", None),
    "atlas-zoo/qwen-chat-b": ("scored", None),
    "atlas-zoo/no-template": ("skipped", "no-chat-template"),
    "atlas-zoo/broken-template": ("failed", "template-mismatch"),
    "atlas-zoo/nan": ("failed", "non-finite"),
    "community/llama-chat-a-unpopular": ("skipped", "low-downloads"),
    "community/giant-72b": ("skipped", "too-large"),
    "community/qwen-chat-a-awq": ("skipped", "quantized"),
    "community/llama-chat-b-pt": ("skipped", "no-safetensors"),
    "community/qwen-chat-a-mlx": ("skipped", "not-transformers"),
    "gated-org/qwen-chat-b-gated": ("skipped", "gated"),
}

_ZOO_META: dict[str, tuple[int, int]] = {  # name -> (downloads in 30 days, day created)
    "llama-base": (250_000, 0),
    "qwen-base": (180_000, 1),
    "llama-chat-a": (41_000, 5),
    "llama-chat-b": (9_500, 8),
    "qwen-chat-a": (23_000, 9),
    "qwen-chat-b": (3_100, 12),
    "no-template": (7_400, 14),
    "broken-template": (2_600, 16),
    "nan": (1_200, 17),
}


def _zoo_specs(models: Sequence[zoo.ZooModel]) -> list[RepoSpec]:
    specs = []
    for m in models:
        short = m.name.split("/", 1)[1]
        downloads, day = _ZOO_META.get(short, (5_000, 20))
        created = DAY0 + timedelta(days=day)
        specs.append(
            RepoSpec(m.name, m.path, downloads=downloads, likes=downloads // 500,
                     created_at=created, last_modified=created + timedelta(hours=3))
        )  # fmt: skip
    return specs


def _copy_repo(source: Path, dest: Path, *, skip: Sequence[str] = ()) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*skip) if skip else None)
    return dest


def _header_only_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file whose header declares `tensors`; the data is left out (never read)."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _card(folder: Path, title: str, lines: Sequence[str] = ()) -> None:
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", *lines, "---"]
    (folder / "README.md").write_text("\n".join([*front, "", f"# {title}", ""]))


def extra_repos(root: Path, models: Sequence[zoo.ZooModel]) -> list[RepoSpec]:
    """Small repos beside the zoo, each earning one skip reason with default filters."""
    root = Path(root)
    by_name = {m.name: m for m in models}
    llama_a = by_name["atlas-zoo/llama-chat-a"].path
    llama_b = by_name["atlas-zoo/llama-chat-b"].path
    qwen_a = by_name["atlas-zoo/qwen-chat-a"].path
    qwen_b = by_name["atlas-zoo/qwen-chat-b"].path
    day = DAY0 + timedelta(days=20)
    specs: list[RepoSpec] = []

    def add(repo_id: str, folder: Path, offset: int, **meta: Any) -> None:
        created = day + timedelta(days=offset)
        meta.setdefault("downloads", 15_000)
        specs.append(RepoSpec(repo_id, folder, created_at=created, last_modified=created, **meta))

    # A copy of a good model that almost nobody downloads.
    add("community/llama-chat-a-unpopular", llama_a, 0, downloads=12)
    # 72B parameters by its safetensors header (the body is never downloaded).
    giant = root / "community" / "giant-72b"
    _copy_repo(llama_a, giant, skip=("*.safetensors",))
    _header_only_safetensors(
        giant / "model.safetensors",
        {"model.embed_tokens.weight": ("BF16", [131072, 8192]),
         "model.layers.weight": ("BF16", [80, 8192, 108_000])},
    )  # fmt: skip
    _card(giant, "giant-72b")
    add("community/giant-72b", giant, 1, downloads=88_000)
    # AWQ-style packed int32 weights and a quantization_config.
    awq = root / "community" / "qwen-chat-a-awq"
    _copy_repo(qwen_a, awq, skip=("*.safetensors",))
    _header_only_safetensors(
        awq / "model.safetensors",
        {"model.layers.0.qweight": ("I32", [64, 22]), "model.layers.0.scales": ("F16", [1, 176])},
    )
    config = json.loads((awq / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (awq / "config.json").write_text(json.dumps(config, indent=2))
    _card(awq, "qwen-chat-a-awq", ["base_model: atlas-zoo/qwen-chat-a",
                                   "base_model_relation: quantized"])  # fmt: skip
    add("community/qwen-chat-a-awq", awq, 2, downloads=6_000)
    # Pickled weights only: never downloaded, never unpickled.
    pt = root / "community" / "llama-chat-b-pt"
    _copy_repo(llama_b, pt, skip=("*.safetensors",))
    (pt / "pytorch_model.bin").write_bytes(b"not a real pickle; atlas never reads .bin files")
    add("community/llama-chat-b-pt", pt, 3, downloads=4_000)
    # An MLX conversion: safetensors, but not a transformers model.
    add("community/qwen-chat-a-mlx", qwen_a, 4, downloads=2_500, library_name="mlx")
    # Gated: skipped unless HF_TOKEN opens it.
    add("gated-org/qwen-chat-b-gated", qwen_b, 5, downloads=30_000, gated="manual")
    return specs


def demo_repos(root: Path, models: Sequence[zoo.ZooModel] | None = None) -> list[RepoSpec]:
    """The zoo (built or reused under root/zoo) and the extra repos, as RepoSpecs."""
    root = Path(root)
    models = list(models) if models is not None else zoo.build_zoo_cached(root / "zoo")
    return _zoo_specs(models) + extra_repos(root / "extra", models)


# --- datasets -----------------------------------------------------------------------------------


def _chat_rows() -> list[tuple[str, str]]:
    pairs = list(zoo.CHAT_PAIRS)
    for i, sentence in enumerate(zoo.generated_sentences()):
        pairs.append((f"Rewrite in the past tense: {sentence}", f"Rewritten ({i}): {sentence}"))
    return pairs


def write_tulu_like(folder: Path) -> Path:
    """A Parquet dataset with `messages` (role/content), some multi-turn or with a system turn."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (q, a) in enumerate(_chat_rows()):
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 5 == 1:
            messages.insert(0, {"role": "system", "content": "You are concise."})
        if i % 7 == 3:  # multi-turn: not eligible
            messages += [
                {"role": "user", "content": "More?"},
                {"role": "assistant", "content": "No."},
            ]
        rows.append({"id": f"tulu-{i}", "messages": messages, "source": "atlas"})
    half = len(rows) // 2
    for part, chunk in enumerate((rows[:half], rows[half:])):
        name = f"train-{part:05d}-of-00002.parquet"
        pq.write_table(pa.Table.from_pylist(chunk), folder / "data" / name)
    (folder / "README.md").write_text("---\nlicense: odc-by\ntask_categories: [text-generation]\n"
                                      "---\n# tulu-like\n")  # fmt: skip
    return folder


def write_infinity_like(folder: Path) -> Path:
    """A JSONL dataset with `conversations` (from/value: human/gpt), some multi-turn."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (q, a) in enumerate(_chat_rows()):
        turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        if i % 6 == 2:
            turns += [{"from": "human", "value": "And?"}, {"from": "gpt", "value": "Done."}]
        lines.append(json.dumps({"id": i, "conversations": turns}, ensure_ascii=False))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "README.md").write_text("---\nlicense: cc-by-sa-4.0\n---\n# infinity-like\n")
    return folder


def dataset_repos(root: Path) -> list[RepoSpec]:
    """The two chat datasets as RepoSpecs."""
    root = Path(root)
    common: dict[str, Any] = {"repo_type": "dataset", "pipeline_tag": None, "library_name": None}
    return [
        RepoSpec(TULU_LIKE, write_tulu_like(root / "tulu-like"), created_at=DAY0, **common),
        RepoSpec(INFINITY_LIKE, write_infinity_like(root / "infinity-like"), created_at=DAY0,
                 **common),
    ]  # fmt: skip


def start_demo_hub(
    root: Path, *, port: int = 0, token: str | None = None, page_size: int = 1000
) -> LocalHub:
    """Build everything under `root` and serve it; set HF_ENDPOINT to `hub.endpoint`."""
    root = Path(root)
    hub = LocalHub(
        demo_repos(root) + dataset_repos(root / "datasets"), token=token, page_size=page_size
    )
    hub.start(port)
    return hub
