"""Resolve a model reference (a local folder or a Hub repo id) and load it for scoring.

Only safetensors weights and tokenizer/config files are ever downloaded or read; a repo or
folder without safetensors is refused (`no-safetensors`) and never unpickled. Remote code is off
unless the caller turns it on for one run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.errors import ModelFailure, UsageError
from atlas.hub import client
from atlas.scoring.engine import _is_oom as is_oom
from atlas.scoring.templates import has_chat_template

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bfloat16", "float16", "float32")
MAX_NAME = 256  # the store's limit for a model name (repo id)


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: its store name, source, revision, and files to fetch."""

    repo_id: str
    source: str
    revision: str
    path: Path | None = None
    files: tuple[str, ...] = ()


@dataclass
class LoadedModel:
    """A model and tokenizer ready to score, with what the store records about them."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    model_type: str | None
    architecture: str | None
    num_parameters: int
    has_chat_template: bool


def _wanted(name: str) -> bool:
    return "/" not in name and any(fnmatch.fnmatch(name, p) for p in client.ALLOW_PATTERNS)


def select_files(names: list[str]) -> list[str]:
    """The root-level files to fetch: safetensors weights (indexed shards only) and metadata."""
    chosen = sorted(n for n in names if _wanted(n))
    weights = [n for n in chosen if n.endswith(".safetensors")]
    if "model.safetensors.index.json" in chosen or any(n.startswith("model") for n in weights):
        # Repos often carry a second copy (consolidated.safetensors): keep the transformers one.
        drop = {n for n in weights if not n.startswith("model")}
        chosen = [n for n in chosen if n not in drop]
    return chosen


def local_revision(folder: Path) -> str:
    """A 40-hex content hash of a folder's weights, tokenizer and config files."""
    digest = hashlib.sha256()
    for name in select_files([p.name for p in folder.iterdir() if p.is_file()]):
        file_hash = hashlib.sha256()
        with (folder / name).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                file_hash.update(block)
        digest.update(f"{name}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()[:40]


def card_base_models(folder: Path) -> list[str]:
    """The `base_model` entries of a local folder's model card (README.md front matter), as on
    the Hub; [] without a card or that field."""
    card = folder / "README.md"
    if not card.is_file():
        return []
    from huggingface_hub import metadata_load

    try:
        meta = metadata_load(card) or {}
    except Exception:  # a malformed card is no reason to refuse a model
        return []
    bases = meta.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else bases
    return [str(b).strip() for b in bases if isinstance(b, str) and b.strip()]


def _has_safetensors(names: list[str]) -> bool:
    return any(n.endswith(".safetensors") for n in names if "/" not in n)


def _looks_local(reference: str) -> bool:
    return reference.startswith((".", "/", "~")) or reference.count("/") > 1


def resolve(
    reference: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ModelRef:
    """A local folder (store name: `name` or the folder name) or a Hub repo id at `revision`.

    Hub failures (missing repo, no safetensors, network) raise ModelFailure for `reference`.
    """
    if name is not None and not 0 < len(name) <= MAX_NAME:
        raise UsageError(f"`name` must be 1-{MAX_NAME} characters")
    folder = Path(reference).expanduser()
    try:
        is_dir, exists = folder.is_dir(), folder.exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL character
        is_dir = exists = False
    if is_dir:
        repo_id = name or folder.resolve().name
        return ModelRef(repo_id, "local", local_revision(folder), folder.resolve())
    if _looks_local(reference) or exists:
        raise UsageError(f"no such model folder: {reference}")
    if name is not None and name != reference:
        raise UsageError("`name` applies to local folders; a Hub model is named by its repo id")
    if len(reference) > MAX_NAME:
        raise UsageError(f"a Hub repo id has at most {MAX_NAME} characters")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(reference)
    except HFValidationError as exc:
        raise UsageError(f"{reference!r} is neither a folder nor a Hub repo id") from exc
    return _resolve_hub(reference, revision, log)


def _download_failure(what: str, exc: BaseException) -> ModelFailure:
    """The `download-error` a Hub failure (after the client's retries) records for a model."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        message = f"{what} is gated (accept its terms and set HF_TOKEN)"
    elif isinstance(exc, RepositoryNotFoundError):
        message = f"{what} was not found (or is private)"
    elif isinstance(exc, RevisionNotFoundError):
        message = f"{what} has no such revision"
    else:
        message = f"{what}: {client.short(exc)}"
    failure = ModelFailure("download-error", message)
    failure.__cause__ = exc
    return failure


def _resolve_hub(
    repo_id: str, revision: str | None, log: Callable[[str], None] | None = None
) -> ModelRef:
    try:
        sha, names = client.model_files(repo_id, revision, log)
    except Exception as exc:
        raise _download_failure(repo_id, exc) from exc
    if not _has_safetensors(names):
        raise ModelFailure("no-safetensors", f"{repo_id} has no .safetensors weights")
    if not sha:
        raise ModelFailure("download-error", f"{repo_id}: the Hub gave no revision sha")
    return ModelRef(repo_id, "hub", sha, None, tuple(select_files(names)))


def fetch(
    ref: ModelRef, cache_dir: Path | None = None, log: Callable[[str], None] | None = None
) -> Path:
    """The model's folder: local as is, or the Hub snapshot of exactly `ref.files`."""
    if ref.path is not None:
        return ref.path
    try:
        return client.download(ref.repo_id, ref.revision, list(ref.files), cache_dir, log)
    except Exception as exc:
        raise _download_failure(ref.repo_id, exc) from exc


def check_options(device: str | None = "auto", dtype: str | None = "auto") -> None:
    """Refuse an unknown device or dtype, or CUDA without a GPU, before anything is touched."""
    device = device or "auto"
    dtype = dtype or "auto"
    if "," in device:  # several devices: one model split across them (`placement`)
        from atlas.scoring import placement

        for one in placement.parse_devices(device):
            check_options(one, dtype)
        return
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} was asked for, but torch sees no CUDA device")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: torch sees {torch.cuda.device_count()} GPU(s)")


def pick_device(device: str = "auto") -> str:
    """cuda when asked or available (auto), else cpu."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for, but torch sees no CUDA device")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    """bfloat16 on GPU (float16 where bf16 is unsupported) and float32 on CPU, unless asked."""
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def _config_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def load(
    folder: Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    placement: Any = None,
) -> LoadedModel:
    """Load tokenizer and causal LM from a folder: safetensors only, SDPA attention.

    `device` may list several GPUs (`cuda:0,cuda:1`): a model too large for one is split across
    them (`atlas.scoring.placement`); `placement` forces a given `Placement` (tests use cpu + disk).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging


    names = [p.name for p in folder.iterdir() if p.is_file()]
    if not _has_safetensors(names):
        raise ModelFailure("no-safetensors", f"{folder} holds no .safetensors weights")
    if placement is None and "," in device:
        placement = _plan(folder, names, device, dtype)
    dev = pick_device(placement.devices[0] if placement is not None else device)
    torch_dtype = pick_dtype(dtype, dev)
    hint = ""
    if "auto_map" in _config_info(folder) and not trust_remote_code:
        hint = " (the model ships its own code: rerun with `trust_remote_code` if you trust it)"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelFailure("load-error", f"cannot load the tokenizer: {exc}{hint}") from exc
    kwargs: dict[str, Any] = dict(
        dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    if placement is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("loading across devices needs accelerate (pip install accelerate)")
        kwargs.update(placement.from_pretrained_kwargs())
    elif dev.startswith("cuda") and importlib.util.find_spec("accelerate") is not None:
        kwargs["device_map"] = dev  # straight onto the GPU; without accelerate: CPU, then .to()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # atlas shows its own progress
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, attn_implementation="sdpa", **kwargs
            )
        except ValueError as exc:  # architectures without SDPA support
            if "sdpa" not in str(exc).lower():
                raise
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except Exception as exc:
        if _is_oom(exc):
            raise ModelFailure("out-of-memory", f"the weights do not fit on {dev}") from exc
        raise ModelFailure("load-error", f"cannot load the model: {exc}{hint}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if "device_map" not in kwargs:
        try:
            model = model.to(dev)
        except Exception as exc:
            if _is_oom(exc):
                raise ModelFailure("out-of-memory", f"the weights do not fit on {dev}") from exc
            raise
    model.eval()
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=",".join(placement.devices) if placement is not None and placement.split
        else str(next(model.parameters()).device),
        dtype=str(torch_dtype).removeprefix("torch."),
        model_type=getattr(config, "model_type", None),
        architecture=architectures[0],
        num_parameters=sum(p.numel() for p in model.parameters()),
        has_chat_template=has_chat_template(tokenizer),
    )


def _plan(folder: Path, names: list[str], device: str, dtype: str) -> Any:
    """The placement of a folder's weights on the listed devices; out-of-memory if none."""
    from atlas.scoring import placement

    devices = placement.parse_devices(device)
    for dev in devices:
        pick_device(dev)
    dtype_name = str(pick_dtype(dtype, devices[0])).removeprefix("torch.")
    files = [folder / n for n in names if n.endswith(".safetensors")]
    params = placement.count_parameters(files)
    free = placement.free_memory(devices)
    chosen = placement.plan(params, free, dtype_name)
    if chosen is None:
        need = placement.weight_bytes(params, dtype_name) / placement.GIB
        room = sum(placement.usable(f) for f in free.values()) / placement.GIB
        raise ModelFailure(
            "out-of-memory", f"the weights need {need:.1f} GiB; {device} hold {room:.1f} GiB"
        )
    return chosen


def _is_oom(exc: BaseException) -> bool:

    return is_oom(exc)
