"""Repos served by the local Hub: specs, snapshots of folders, and the JSON the Hub answers."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO_TYPES = ("model", "dataset")
FAULT_KINDS = ("500", "502", "503", "429", "slow", "truncate", "drop")
LFS_SUFFIXES = frozenset(
    {
        ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx",
        ".model", ".parquet", ".arrow", ".npy", ".npz", ".pkl", ".zip", ".gz", ".tar", ".zst"
    }
)  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024
META_FILE = ".hub-meta.json"  # optional RepoSpec overrides read by discover(); never served
SKIPPED_DIRS = frozenset({".git", ".cache"})
TOKEN_CONFIG_KEYS = (
    "bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token",
    "chat_template", "use_default_system_prompt",
)  # fmt: skip
MODEL_EXPAND = frozenset(
    {
        "author", "baseModels", "cardData", "childrenModelCount", "config", "createdAt", "disabled",
        "downloads", "downloadsAllTime", "evalResults", "gated", "gguf", "inference",
        "inferenceProviderMapping", "lastModified", "library_name", "likes", "mask_token",
        "model-index", "pipeline_tag", "private", "resourceGroup", "safetensors", "sha", "siblings",
        "spaces", "tags", "transformersInfo", "trendingScore", "usedStorage", "widgetData"
    }
)  # fmt: skip
DATASET_EXPAND = frozenset(
    {
        "author", "cardData", "citation", "createdAt", "description", "disabled", "downloads",
        "downloadsAllTime", "gated", "lastModified", "likes", "mainSize", "paperswithcode_id",
        "private", "resourceGroup", "sha", "siblings", "tags", "trendingScore", "usedStorage"
    }
)  # fmt: skip
MODEL_LIST_FIELDS = (
    "_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag",
    "library_name", "createdAt", "modelId",
)  # fmt: skip
DATASET_LIST_FIELDS = (
    "_id", "id", "author", "sha", "lastModified", "private", "gated", "disabled", "downloads",
    "likes", "tags", "createdAt", "trendingScore",
)  # fmt: skip
FULL_FIELDS = ("author", "sha", "lastModified", "gated", "disabled", "siblings")
SORT_KEYS = {
    "createdAt": "createdAt", "created_at": "createdAt", "downloads": "downloads",
    "lastModified": "lastModified", "last_modified": "lastModified", "likes": "likes",
    "trendingScore": "trendingScore", "trending_score": "trendingScore",
}  # fmt: skip
PARAM_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}



class HubServerError(Exception):
    """A request the local Hub cannot answer; carries the HTTP status and Hub error code."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str = ""):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass
class RepoSpec:
    """A repo to serve: its id, the folder holding its files, and Hub-side metadata."""

    repo_id: str
    folder: Path
    repo_type: str = "model"
    downloads: int = 0
    likes: int = 0
    trending_score: int = 0
    created_at: datetime | None = None
    last_modified: datetime | None = None
    gated: str | bool = False
    pipeline_tag: str | None = "text-generation"
    library_name: str | None = "transformers"
    tags: list[str] = field(default_factory=list)
    private: bool = False


@dataclass(frozen=True)
class _Blob:
    """A served file: where it lives on disk and its Hub identities."""

    path: str
    source: Path
    size: int
    sha256: str
    git_sha1: str
    mtime_ns: int
    lfs: bool

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer file the Hub would store in git."""
        spec = "version https://git-lfs.github.com/spec/v1"
        return f"{spec}\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """Git blob id (of the pointer for LFS files)."""
        return _git_blob_sha1(self.pointer) if self.lfs else self.git_sha1

    @property
    def etag(self) -> str:
        """ETag as the Hub sends it: sha256 for LFS files, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1


@dataclass(frozen=True)
class _Snapshot:
    """One revision of a repo: its files and what the Hub derives from them."""

    sha: str
    files: dict[str, _Blob]
    card: dict[str, Any]
    config: dict[str, Any] | None
    safetensors: dict[str, Any] | None
    base_models: list[str]
    relation: str | None
    has_template: bool


@dataclass(frozen=True)
class _Repo:
    """A served repo: spec, current snapshot, every snapshot by sha, and dates."""

    spec: RepoSpec
    head: _Snapshot
    revisions: dict[str, _Snapshot]
    created_at: datetime
    last_modified: datetime


def _scan(folder: Path, repo_type: str) -> _Snapshot:
    """Hash every file of a repo folder and derive card, config and parameter counts."""
    if not folder.is_dir():
        raise FileNotFoundError(f"repo folder {folder} does not exist")
    files: dict[str, _Blob] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (Path(root) == folder and d in SKIPPED_DIRS))
        for name in sorted(names):
            source = Path(root) / name
            rel = source.relative_to(folder).as_posix()
            if rel != META_FILE:
                files[rel] = _blob(rel, source)
    sha = hashlib.sha1(b"".join(f"{p}\0{b.sha256}\n".encode() for p, b in files.items()))
    card = _front_matter(_read_text(files.get("README.md")))
    config = _model_config(files) if repo_type == "model" else None
    bases = card.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else [str(b) for b in bases]
    return _Snapshot(
        sha=sha.hexdigest(),
        files=files,
        card=card,
        config=config,
        safetensors=_safetensors_info(files) if repo_type == "model" else None,
        base_models=bases,
        relation=_relation(card, files, config, bases) if bases else None,
        has_template=_has_template(config),
    )


def _blob(rel: str, source: Path) -> _Blob:
    stat = source.stat()
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % stat.st_size)
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    lfs = Path(rel).suffix in LFS_SUFFIXES or stat.st_size >= LFS_MIN_SIZE
    return _Blob(
        rel, source, stat.st_size, sha256.hexdigest(), sha1.hexdigest(), stat.st_mtime_ns, lfs
    )


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read_text(blob: _Blob | None) -> str:
    return blob.source.read_text(encoding="utf-8", errors="replace") if blob else ""


def _read_json(blob: _Blob | None) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(blob)) if blob else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _front_matter(text: str) -> dict[str, Any]:
    """YAML front matter of a model card, or {}."""
    match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return json.loads(json.dumps(data, default=str)) if isinstance(data, dict) else {}


def _model_config(files: dict[str, _Blob]) -> dict[str, Any] | None:
    """The Hub's ``config`` summary from config.json, tokenizer_config.json and templates."""
    out: dict[str, Any] = {}
    config = _read_json(files.get("config.json"))
    for key in ("architectures", "model_type", "quantization_config"):
        if key in config:
            out[key] = config[key]
    tokenizer = _read_json(files.get("tokenizer_config.json"))
    summary = {k: _token_text(tokenizer[k]) for k in TOKEN_CONFIG_KEYS if k in tokenizer}
    if summary:
        out["tokenizer_config"] = summary
    if "chat_template.jinja" in files:
        out["chat_template_jinja"] = _read_text(files["chat_template.jinja"])
    processor = _read_json(files.get("chat_template.json"))
    if "chat_template" in processor:
        out["processor_config"] = {"chat_template": processor["chat_template"]}
    adapter = _read_json(files.get("adapter_config.json"))
    if adapter:
        keys = ("base_model_name_or_path", "task_type")
        out["peft"] = {k: adapter[k] for k in keys if k in adapter}
    return out or None


def _token_text(value: Any) -> Any:
    return value.get("content", value) if isinstance(value, dict) else value


def _has_template(config: dict[str, Any] | None) -> bool:
    """The Hub's chat-template test on the config summary."""
    config = config or {}
    return bool(
        config.get("tokenizer_config", {}).get("chat_template")
        or config.get("processor_config", {}).get("chat_template")
        or config.get("chat_template_jinja")
    )


def _safetensors_info(files: dict[str, _Blob]) -> dict[str, Any] | None:
    """Parameter counts by dtype over the root safetensors files (packed ints count as is)."""
    counts: dict[str, int] = {}
    for name, blob in files.items():
        if "/" in name or not name.endswith(".safetensors"):
            continue
        try:
            with open(blob.source, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            continue
        for tensor, info in header.items():
            if tensor != "__metadata__":
                counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return {"parameters": counts, "total": sum(counts.values())} if counts else None


def _relation(card: dict, files: dict, config: dict | None, bases: list[str]) -> str:
    """How a model derives from its base models, as the Hub infers it."""
    if card.get("base_model_relation"):
        return str(card["base_model_relation"])
    if "adapter_config.json" in files:
        return "adapter"
    if (config or {}).get("quantization_config") or any(n.endswith(".gguf") for n in files):
        return "quantized"
    return "merge" if len(bases) > 1 else "finetune"


# -- Hub JSON ------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(value: datetime) -> str:
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _object_id(repo: _Repo) -> str:
    return hashlib.sha1(f"{repo.spec.repo_type}:{repo.spec.repo_id}".encode()).hexdigest()[:24]


def _gated(spec: RepoSpec) -> str | bool:
    return "auto" if spec.gated is True else spec.gated


def _tags(repo: _Repo, snap: _Snapshot) -> list[str]:
    """Card tags, spec tags and the tags the Hub adds itself."""
    spec, card = repo.spec, snap.card
    tags: list[str] = []
    if spec.repo_type == "model":
        tags += [spec.library_name] if spec.library_name else []
        tags += ["safetensors"] if snap.safetensors else []
        tags += [snap.config["model_type"]] if (snap.config or {}).get("model_type") else []
    tags += [str(t) for t in _as_list(card.get("tags"))] + list(spec.tags)
    if spec.repo_type == "model":
        tags += ["conversational"] if snap.has_template else []
        tags += [spec.pipeline_tag] if spec.pipeline_tag else []
        for base in snap.base_models:
            tags += [f"base_model:{base}", f"base_model:{snap.relation}:{base}"]
        tags += [f"dataset:{d}" for d in _as_list(card.get("datasets"))]
    tags += [str(lang) for lang in _as_list(card.get("language"))]
    tags += [f"license:{lic}" for lic in _as_list(card.get("license"))]
    return list(dict.fromkeys([*tags, "region:us"]))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _siblings(snap: _Snapshot, blobs: bool) -> list[dict[str, Any]]:
    out = []
    for blob in snap.files.values():
        item: dict[str, Any] = {"rfilename": blob.path}
        if blobs:
            item.update(size=blob.size, blobId=blob.oid)
            if blob.lfs:
                item["lfs"] = {
                    "size": blob.size,
                    "sha256": blob.sha256,
                    "pointerSize": len(blob.pointer),
                }
        out.append(item)
    return out


def _repo_fields(repo: _Repo, snap: _Snapshot, children: int, blobs: bool) -> dict[str, Any]:
    """Every field this Hub knows for a repo, keyed as in the Hub's JSON."""
    spec = repo.spec
    data: dict[str, Any] = {
        "_id": _object_id(repo),
        "id": spec.repo_id,
        "author": spec.repo_id.split("/")[0] if "/" in spec.repo_id else None,
        "sha": snap.sha,
        "lastModified": _iso(repo.last_modified),
        "createdAt": _iso(repo.created_at),
        "private": spec.private,
        "gated": _gated(spec),
        "disabled": False,
        "downloads": spec.downloads,
        "downloadsAllTime": spec.downloads,
        "likes": spec.likes,
        "trendingScore": spec.trending_score,
        "tags": _tags(repo, snap),
        "cardData": snap.card or None,
        "siblings": _siblings(snap, blobs),
        "usedStorage": sum(b.size for b in snap.files.values()),
    }
    if spec.repo_type == "dataset":
        data["description"] = None
        return data
    data.update(
        modelId=spec.repo_id,
        pipeline_tag=spec.pipeline_tag,
        library_name=spec.library_name,
        config=snap.config,
        safetensors=snap.safetensors,
        spaces=[],
        childrenModelCount=children,
    )
    if snap.base_models:
        data["baseModels"] = {
            "relation": snap.relation,
            "models": [{"id": b} for b in snap.base_models],
        }
    if spec.library_name == "transformers" and spec.pipeline_tag == "text-generation":
        data["transformersInfo"] = {
            "auto_model": "AutoModelForCausalLM",
            "pipeline_tag": "text-generation",
            "processor": "AutoTokenizer",
        }
    return data


def _select(data: dict[str, Any], keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    out = {"_id": data["_id"], "id": data["id"]}
    out.update((k, data[k]) for k in keys if data.get(k) is not None)
    return out


def _parse_count(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([KMBT]?)\s*", text, re.I)
    if not match:
        raise HubServerError(400, f"invalid parameter count {text!r}")
    return float(match.group(1)) * PARAM_UNITS[match.group(2).upper()]


def _param_range(spec: str) -> tuple[float, float]:
    """Parse ``min:1B,max:70B`` (either bound optional) into inclusive bounds."""
    low, high = 0.0, math.inf
    for part in filter(None, (p.strip() for p in spec.split(","))):
        bound, _, value = part.partition(":")
        if bound == "min":
            low = _parse_count(value)
        elif bound == "max":
            high = _parse_count(value)
        else:
            raise HubServerError(400, f"invalid num_parameters {spec!r}")
    return low, high


def _encode_cursor(key: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[float, str]:
    try:
        value, repo_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return float(value), str(repo_id)
    except (ValueError, TypeError) as error:
        raise HubServerError(400, "invalid cursor") from error


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Single ``bytes=a-b`` range as inclusive bounds; None when unsatisfiable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or match.groups() == ("", "") or size == 0:
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else None


# -- HTTP ----------------------------------------------------------------------------------------


def _unchanged(blob: _Blob) -> bool:
    """The file on disk is still the one that was scanned (same size and mtime)."""
    try:
        stat = blob.source.stat()
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (blob.size, blob.mtime_ns)


def _tree_file(blob: _Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": blob.path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
    return entry


def _tree_oid(snap: _Snapshot, folder: str) -> str:
    members = [f"{b.path}:{b.oid}" for n, b in snap.files.items() if n.startswith(f"{folder}/")]
    return hashlib.sha1("\n".join(members).encode()).hexdigest()


# -- folders of repos and the command line -------------------------------------------------------


def discover(root: Path, repo_type: str = "model") -> list[RepoSpec]:
    """Specs for every ``root/<org>/<name>`` folder, with overrides from its .hub-meta.json."""
    specs = []
    for org in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder in sorted(p for p in org.iterdir() if p.is_dir() and not p.name.startswith(".")):
            meta = (
                json.loads((folder / META_FILE).read_text())
                if (folder / META_FILE).exists()
                else {}
            )
            for key in ("created_at", "last_modified"):
                if meta.get(key):
                    meta[key] = _parse_iso(meta[key])
            if repo_type == "dataset":
                meta = {"pipeline_tag": None, "library_name": None, **meta}
            specs.append(RepoSpec(f"{org.name}/{folder.name}", folder, repo_type, **meta))
    return specs
