"""A zoo of tiny real Hugging Face causal LMs, built offline for tests and the demo.

Two architectures (Llama, Qwen2), each with its own byte-level BPE tokenizer trained here and a
chat template in one of the two places real repos keep it; per architecture a base model and two
fine-tuned children; and three special members: no chat template, a template that breaks the
prefix property, and weights that produce NaN. Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import (
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

ORG = "atlas-zoo"
MANIFEST = "zoo.json"
KINDS = ("ok", "no-template", "broken-template", "nan")
TEMPLATE_LOCATIONS = ("tokenizer_config.json", "chat_template.jinja")

# --------------------------------------------------------------------------------------------
# Built-in text: prose and instructions, code, chat pairs.
# --------------------------------------------------------------------------------------------

PROSE: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A language model assigns a probability to every sequence of tokens.",
    "Rivers carry sediment from the mountains to the sea, building deltas over centuries.",
    "She opened the window, and the smell of rain filled the small kitchen.",
    "In 1969, two astronauts walked on the Moon while a third orbited above them.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The committee will meet on Tuesday at 10:30 to review the budget for 2025.",
    "Please summarise the following paragraph in one sentence.",
    "Write a short poem about autumn leaves falling in a quiet park.",
    "Translate the sentence 'good morning' into French and Spanish.",
    "Explain why the sky is blue to a ten-year-old child.",
    "List three advantages of using version control for a software project.",
    "What is the capital of Japan? The capital of Japan is Tokyo.",
    "Mix the flour and the sugar, then add two eggs and a cup of milk.",
    "The train to Edinburgh leaves platform 4 at 7:15 every weekday morning.",
    "He said, \"I don't think we're ready yet,\" and closed the notebook.",
    "Prime numbers such as 2, 3, 5, 7, 11 and 13 have exactly two divisors.",
    "The museum's new exhibition shows maps drawn by sailors in the 16th century.",
    "Water boils at 100 degrees Celsius at sea level, but at lower temperatures on mountains.",
    "Good documentation explains what a function does and why it exists.",
    "The café on the corner serves crème brûlée and a naïve little espresso.",
    "Tests should be fast, isolated and deterministic, so that failures are easy to read.",
    "Our hike started at dawn; by noon we had reached the ridge above the lake.",
    "An index maps each key to the position of its record, so lookups stay fast.",
    "Q: How many legs does a spider have?\nA: A spider has eight legs.",
    "Step 1: read the question. Step 2: think about it. Step 3: answer clearly.",
    "The weather today is sunny with a light breeze from the west.",
    "Dear team,\n\nThank you for your hard work this quarter.\n\nBest regards,\nAnna",
)

CODE: tuple[str, ...] = (
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "import numpy as np\n\nx = np.linspace(0.0, 1.0, num=50)\ny = np.sin(2 * np.pi * x)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n",
    "SELECT name, COUNT(*) FROM models GROUP BY family ORDER BY 2 DESC;",
    "if (x > 0) {\n  return x;\n} else {\n  return -x;\n}\n",
    '{"name": "atlas", "version": "0.1.0", "tags": ["maps", "models"]}',
    'git commit -m "Fix the tokenizer offsets" && git push origin main',
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    'with open("data.txt") as handle:\n    lines = [line.strip() for line in handle]\n',
    "const total = items.reduce((sum, item) => sum + item.price, 0);\nconsole.log(total);\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
    '#include <stdio.h>\n\nint main(void) {\n    printf("hello\\n");\n    return 0;\n}\n',
    "def clip(values, low):\n    return [max(v, low) for v in values]\n",
    "CREATE TABLE texts (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    'fn main() {\n    let xs = vec![1, 2, 3];\n    println!("{:?}", xs);\n}\n',
    "@dataclass\nclass Point:\n    x: float\n    y: float\n",
    "matrix = [[row * col for col in range(4)] for row in range(4)]\n",
    "assert sorted([3, 1, 2]) == [1, 2, 3]\n",
    "$ python -m pytest -q tests/\n12 passed in 0.84s\n",
)

CORPUS: tuple[str, ...] = PROSE + CODE

CHAT_PAIRS: tuple[tuple[str, str], ...] = (
    ("What is two plus two?", "Two plus two is four."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Give me a synonym for happy.", "A synonym for happy is cheerful."),
    (
        "Write a haiku about the sea.",
        "Waves fold into foam,\nsalt wind combs the sleeping dunes,\ngulls write on the sky.",
    ),
    (
        "How do I reverse a list in Python?",
        "Use slicing: `items[::-1]`, or call `items.reverse()`.",
    ),
    ("What is the boiling point of water?", "At sea level, water boils at 100 degrees Celsius."),
    ("Translate 'thank you' into German.", "'Thank you' in German is 'danke'."),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
    ("Suggest a name for a grey cat.", "How about Smokey, Ash or Pebble?"),
    (
        "Explain recursion in one sentence.",
        "Recursion is when a function solves a problem by calling itself on smaller parts of it.",
    ),
    (
        "Is a tomato a fruit?",
        "Botanically, yes: a tomato is a fruit, though cooks treat it as a vegetable.",
    ),
    ("Summarise: The meeting moved to Friday.", "The meeting is now on Friday."),
)

_SUBJECTS = ("The engineer", "A small robot", "My neighbour", "The old library", "Every student")
_VERBS = ("reads", "builds", "forgets", "measures", "paints")
_OBJECTS = ("a long report", "the red bridge", "seven new maps", "an empty bottle", "the last page")
_PLACES = ("at night.", "in the garden.", "before lunch.", "near the station.", "on Sunday.")


def generated_sentences() -> list[str]:
    """Return simple sentences combined deterministically from fixed word lists."""
    sentences = []
    for i, subject in enumerate(_SUBJECTS):
        for j, verb in enumerate(_VERBS):
            obj = _OBJECTS[(i + 2 * j) % len(_OBJECTS)]
            place = _PLACES[(3 * i + j) % len(_PLACES)]
            sentences.append(f"{subject} {verb} {obj} {place}")
    return sentences


def corpus_texts() -> list[str]:
    """Return every built-in plain text: prose, code, generated sentences and chat pairs."""
    return [*CORPUS, *generated_sentences(), *(f"{q}\n{a}" for q, a in CHAT_PAIRS)]


def _focus_texts(focus: str) -> list[str]:
    """Texts a family's base sees more often, so that families model different things well."""
    return [*PROSE, *generated_sentences()] if focus == "prose" else list(CODE)


# --------------------------------------------------------------------------------------------
# Tokenizers and chat templates.
# --------------------------------------------------------------------------------------------

_QWEN_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML as in Qwen2.5, with a default system prompt when none is given."""

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
"""Llama-3 style: renders BOS itself and trims message content."""

BROKEN_TEMPLATE = CHATML_TEMPLATE.replace(
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}",
    "{{- '<|im_start|>' + message['role'] }}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- ' (' ~ message['content'] | length ~ ' characters)' }}"
    "{%- endif %}"
    "{{- '\\n' + message['content'] + '<|im_end|>\\n' }}",
)
"""ChatML whose assistant header states the answer's length: the text before the answer depends
on the answer, so no definition of the response can score it (template-mismatch)."""


@dataclass(frozen=True)
class TokenizerStyle:
    """How one family's tokenizer is built: pre-tokenizer, special tokens and chat template."""

    name: str
    regex: str
    vocab_size: int
    specials: tuple[str, ...]
    extra_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    add_bos: bool
    nfc: bool
    tokenizer_class: str
    chat_template: str
    template_location: str


CHATML = TokenizerStyle(
    name="chatml",
    regex=_QWEN_REGEX,
    vocab_size=560,
    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    extra_tokens=("<think>", "</think>"),
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    add_bos=False,
    nfc=True,
    tokenizer_class="Qwen2Tokenizer",
    chat_template=CHATML_TEMPLATE,
    template_location="tokenizer_config.json",
)
LLAMA3 = TokenizerStyle(
    name="llama3",
    regex=_LLAMA3_REGEX,
    vocab_size=700,
    specials=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
    ),
    extra_tokens=(),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad="<|finetune_right_pad_id|>",
    add_bos=True,
    nfc=False,
    tokenizer_class="PreTrainedTokenizerFast",
    chat_template=LLAMA3_TEMPLATE,
    template_location="chat_template.jinja",
)
STYLES = {style.name: style for style in (CHATML, LLAMA3)}


def _render_pair(template: str, question: str, answer: str) -> str:
    """Render one user/assistant exchange with a template, before any tokenizer exists."""
    from jinja2 import Environment

    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Environment().from_string(template).render(messages=messages, bos_token="")


def train_tokenizer(style: TokenizerStyle) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the built-in text and wrap it with the style's special tokens."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # The same normalizer and pre-tokenizer that transformers rebuilds for Qwen2 on load, so the
    # saved tokenizer.json and AutoTokenizer agree token for token.
    if style.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(style.regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=style.vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chats = [_render_pair(style.chat_template, q, a) for q, a in CHAT_PAIRS]
    tok.train_from_iterator(corpus_texts() + chats, trainer)
    # Special tokens go after the learned vocabulary, as in Qwen2 and Llama-3.
    tok.add_special_tokens(list(style.specials))
    if style.extra_tokens:
        tok.add_tokens(list(style.extra_tokens))
    byte_level = processors.ByteLevel(trim_offsets=False)
    if style.add_bos:
        bos = processors.TemplateProcessing(
            single=f"{style.bos}:0 $A:0",
            pair=f"{style.bos}:0 $A:0 {style.bos}:1 $B:1",
            special_tokens=[(style.bos, tok.token_to_id(style.bos))],
        )
        tok.post_processor = processors.Sequence([byte_level, bos])
    else:
        tok.post_processor = byte_level
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=style.bos,
        eos_token=style.eos,
        pad_token=style.pad,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def chat_transcripts(tokenizer: PreTrainedTokenizerBase, template: str) -> list[str]:
    """Render every built-in chat pair as a full conversation with ``template``."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            chat_template=template,
            tokenize=False,
        )
        for q, a in CHAT_PAIRS
    ]


def save_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    *,
    tokenizer_class: str,
    chat_template: str | None = None,
    template_location: str | None = None,
) -> None:
    """Save a tokenizer with its template in tokenizer_config.json, chat_template.jinja or none."""
    if chat_template is not None and template_location not in TEMPLATE_LOCATIONS:
        raise ValueError(f"template_location must be one of {TEMPLATE_LOCATIONS}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    # Whatever transformers wrote, the template ends up exactly where asked and nowhere else.
    for stale in ("chat_template.jinja", "chat_template.json"):
        (path / stale).unlink(missing_ok=True)
    shutil.rmtree(path / "additional_chat_templates", ignore_errors=True)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config["tokenizer_class"] = tokenizer_class
    if chat_template is not None and template_location == "tokenizer_config.json":
        config["chat_template"] = chat_template
    elif chat_template is not None:
        (path / "chat_template.jinja").write_text(chat_template)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def build_tokenizer(path: Path, style: str = "chatml", *, with_template: bool = True) -> None:
    """Train a tokenizer of a style (``chatml`` or ``llama3``) and save it to ``path``."""
    spec = STYLES[style]
    save_tokenizer(
        train_tokenizer(spec),
        path,
        tokenizer_class=spec.tokenizer_class,
        chat_template=spec.chat_template if with_template else None,
        template_location=spec.template_location,
    )


# --------------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """A model family: its transformers model type, tokenizer style and training focus."""

    family: str
    model_type: str
    style: TokenizerStyle
    tie_word_embeddings: bool
    vocab_multiple: int
    focus: str


LLAMA = Architecture(
    family="llama",
    model_type="llama",
    style=LLAMA3,
    tie_word_embeddings=False,
    vocab_multiple=1,
    focus="prose",
)
QWEN = Architecture(
    family="qwen",
    model_type="qwen2",
    style=CHATML,
    tie_word_embeddings=True,
    vocab_multiple=64,
    focus="code",
)


def tiny_config(arch: Architecture, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """Return a 2-layer, 64-wide float32 config whose vocabulary covers every token id."""
    from transformers import LlamaConfig, Qwen2Config

    vocab_size = -(-len(tokenizer) // arch.vocab_multiple) * arch.vocab_multiple
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": "float32",
    }
    if arch.model_type == "llama":
        rope = {"rope_type": "default", "rope_theta": 500000.0}
        return LlamaConfig(**common, rms_norm_eps=1e-5, rope_parameters=rope)
    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    return Qwen2Config(**common, rms_norm_eps=1e-6, rope_parameters=rope)


def random_model(config: PretrainedConfig, *, seed: int = 0) -> PreTrainedModel:
    """Instantiate a randomly initialised float32 causal LM without touching global RNG state."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def token_blocks(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, length: int = 64
) -> torch.Tensor:
    """Pack texts, each ended by EOS, into one token stream cut into equal blocks."""
    import torch

    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        stream.append(tokenizer.eos_token_id)
    usable = len(stream) // length * length
    return torch.tensor(stream[:usable], dtype=torch.long).view(-1, length)


def train_steps(model: PreTrainedModel, blocks: torch.Tensor, *, steps: int, lr: float) -> None:
    """Run a few full-batch AdamW steps of next-token training on ``blocks``, in place."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = model(input_ids=blocks, labels=blocks).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def perturb(model: PreTrainedModel, *, scale: float, seed: int) -> None:
    """Add Gaussian noise scaled to each tensor's own spread, in place."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            spread = param.std() if param.numel() > 1 else param.abs()
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.add_(noise * spread * scale)


def poison(model: PreTrainedModel) -> None:
    """Put NaN into the final norm weights, so every logit and log-probability is NaN."""
    import torch

    with torch.no_grad():
        model.model.norm.weight[::7] = float("nan")


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' progress bars inside the block, then restore their state."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_was_disabled = are_progress_bars_disabled()
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()


def save_model(model: PreTrainedModel, path: Path) -> None:
    """Save weights (safetensors only), config and generation config with save_pretrained."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(path)


_CARD_NOTES = {
    "ok": "",
    "no-template": "It ships no chat template.",
    "broken-template": "Its chat template writes the answer's length into the assistant header, "
    "so the text before an answer depends on the answer.",
    "nan": "Its final norm holds NaN weights, so every log-probability is NaN.",
}


def write_model_card(path: Path, name: str, *, family: str, kind: str, parent: str | None) -> None:
    """Write a README.md model card with Hub-style YAML front matter (lineage included)."""
    meta = ["library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0"]
    if parent:
        meta += [f"base_model: {parent}", "base_model_relation: finetune"]
    meta += ["tags:", f"- {ORG}", f"- {family}", f"- {kind}"]
    body = [
        f"# {name}",
        "",
        f"A tiny {family} causal language model from the atlas test zoo, trained for a few "
        "steps on a built-in corpus. It is useful only for tests.",
    ]
    if parent:
        body += ["", f"Fine-tuned from [{parent}](https://huggingface.co/{parent})."]
    if _CARD_NOTES[kind]:
        body += ["", _CARD_NOTES[kind]]
    (Path(path) / "README.md").write_text("\n".join(["---", *meta, "---", "", *body, ""]))


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def write_random_model(
    config: PretrainedConfig, path: Path, *, tokenizer_from: Path, seed: int = 0
) -> None:
    """Write a random-init model for any causal-LM config, copying tokenizer files over."""
    from transformers import AutoTokenizer

    tokenizer_from = Path(tokenizer_from)
    size = len(AutoTokenizer.from_pretrained(tokenizer_from))
    if config.vocab_size < size:
        raise ValueError(f"config.vocab_size {config.vocab_size} < tokenizer size {size}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for item in tokenizer_from.iterdir():
        if item.is_file() and item.name in _TOKENIZER_FILES:
            shutil.copy2(item, path / item.name)
    save_model(random_model(config, seed=seed), path)


# --------------------------------------------------------------------------------------------
# The zoo.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo: its repo id, folder, family, kind and lineage."""

    name: str
    path: Path
    family: str
    kind: str
    parent: str | None
    architecture: str
    template_location: str | None

    @property
    def has_template(self) -> bool:
        """Whether the model ships a chat template."""
        return self.template_location is not None


def build_zoo(root: Path, *, seed: int = 0) -> list[ZooModel]:
    """Build every zoo model under ``root/atlas-zoo/<name>`` and write a manifest to ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    models: list[ZooModel] = []
    for index, arch in enumerate((LLAMA, QWEN)):
        models += _build_family(root, arch, seed=seed * 1000 + index * 100)
    _write_manifest(root, models)
    return models


def _build_family(root: Path, arch: Architecture, *, seed: int) -> list[ZooModel]:
    """Train one tokenizer and the base, children and special members of one architecture."""
    import copy

    tokenizer = train_tokenizer(arch.style)
    plain = token_blocks(tokenizer, corpus_texts() + 2 * _focus_texts(arch.focus))
    chat = token_blocks(tokenizer, chat_transcripts(tokenizer, arch.style.chat_template), length=48)
    base_name = f"{ORG}/{arch.family}-base"
    built: list[ZooModel] = []

    def emit(
        model: PreTrainedModel, short: str, kind: str = "ok", template: str | None = None
    ) -> None:
        name, path = f"{ORG}/{short}", root / ORG / short
        parent = None if name == base_name else base_name
        location = None if kind == "no-template" else arch.style.template_location
        save_tokenizer(
            tokenizer,
            path,
            tokenizer_class=arch.style.tokenizer_class,
            chat_template=None if location is None else template or arch.style.chat_template,
            template_location=location,
        )
        save_model(model, path)
        write_model_card(path, name, family=arch.family, kind=kind, parent=parent)
        entry = ZooModel(
            name=name,
            path=path,
            family=arch.family,
            kind=kind,
            parent=parent,
            architecture=type(model).__name__,
            template_location=location,
        )
        built.append(entry)

    base = random_model(tiny_config(arch, tokenizer), seed=seed)
    train_steps(base, plain, steps=30, lr=3e-3)
    emit(base, f"{arch.family}-base")

    chat_a = copy.deepcopy(base)
    train_steps(chat_a, chat, steps=3, lr=1e-3)
    emit(chat_a, f"{arch.family}-chat-a")

    chat_b = copy.deepcopy(base)
    perturb(chat_b, scale=0.03, seed=seed + 2)
    train_steps(chat_b, chat, steps=2, lr=1e-3)
    emit(chat_b, f"{arch.family}-chat-b")

    special = copy.deepcopy(base)
    perturb(special, scale=0.02, seed=seed + 3)
    if arch is LLAMA:
        emit(special, "no-template", kind="no-template")
        poison(special)
        emit(special, "nan", kind="nan")
    else:
        emit(special, "broken-template", kind="broken-template", template=BROKEN_TEMPLATE)
    return built


def _write_manifest(root: Path, models: Sequence[ZooModel]) -> None:
    """Record the zoo's models with paths relative to ``root``."""
    entries = [{**asdict(m), "path": m.path.relative_to(root).as_posix()} for m in models]
    payload = {"version": zoo_version(), "models": entries}
    (root / MANIFEST).write_text(json.dumps(payload, indent=2) + "\n")


def load_zoo(root: Path) -> list[ZooModel]:
    """Read the models of a zoo built under ``root`` from its manifest."""
    root = Path(root)
    payload = json.loads((root / MANIFEST).read_text())
    return [ZooModel(**{**entry, "path": root / entry["path"]}) for entry in payload["models"]]


def zoo_version() -> str:
    """Hash this module's source and the library versions, so caches follow code changes."""
    from importlib.metadata import version

    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in ("transformers", "tokenizers", "torch", "safetensors"):
        digest.update(f"|{package}={version(package)}".encode())
    return digest.hexdigest()[:12]


def build_zoo_cached(root: Path, *, seed: int = 0) -> list[ZooModel]:
    """Build the zoo once under ``root`` and reuse it while this code and the libraries match."""
    root = Path(root)
    target = root / f"zoo-{zoo_version()}-seed{seed}"
    if (target / MANIFEST).is_file():
        return load_zoo(target)
    root.mkdir(parents=True, exist_ok=True)
    # Build aside and rename into place, so concurrent test processes never see half a zoo.
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build_zoo(staging, seed=seed)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_zoo(target)
