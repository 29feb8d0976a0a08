"""Official chat templates of popular model families, on tiny real models, against the definition.

Each template file in tests/data/templates is byte-exact with a public copy (SOURCES.md). A tiny
model carries it: a byte-level BPE trained here with the template's control tokens as special
tokens, and a 2-layer random Llama, Qwen2 or Gemma2. The reference below implements the
finished-turn definition from the README on its own, in float64, one item at a time.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from atlas.errors import ModelFailure  # noqa: E402
from atlas.scoring.engine import score_items  # noqa: E402
from atlas.scoring.templates import (  # noqa: E402
    FINISHED_TURN,
    GENERATION_PROMPT,
    pair_request,
    template_info,
)
from atlas.store.tables import VARIANTS  # noqa: E402
from atlas.testing import zoo  # noqa: E402
from atlas.textsets import Item, read_items, sample_path  # noqa: E402

DATA = Path(__file__).parent / "data" / "templates"
TOL = 1e-4  # nats per pair, float32 scorer vs float64 reference
R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


@dataclass(frozen=True)
class Spec:
    """One official template, the tokens its model defines, and what the definition makes of it."""

    file: str
    bos: str | None
    eos: str
    kind: str  # think-inserting, think-opening, separator, plain
    mode: str
    dated: bool = False
    arch: str = "llama"


SPECS = [
    Spec("Qwen-Qwen3-0.6B.jinja", None, "<|im_end|>", "think-inserting", FINISHED_TURN,
         arch="qwen2"),
    Spec("moonshotai-Kimi-K2.jinja", None, "<|im_end|>", "plain", GENERATION_PROMPT),
    Spec("Qwen-QwQ-32B.jinja", None, "<|im_end|>", "think-opening", FINISHED_TURN, arch="qwen2"),
    Spec("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", R1_BOS, R1_EOS, "think-opening",
         FINISHED_TURN, arch="qwen2"),
    Spec("deepseek-ai-DeepSeek-R1.jinja", R1_BOS, R1_EOS, "think-opening", FINISHED_TURN),
    # Both write their think markup into the generation prompt and the finished turn alike.
    Spec("deepseek-ai-DeepSeek-V3.1.jinja", R1_BOS, R1_EOS, "plain", GENERATION_PROMPT),
    Spec("NVIDIA-Nemotron-Nano-v2.jinja", "<SPECIAL_10>", "<SPECIAL_12>", "plain",
         GENERATION_PROMPT),
    Spec("mistralai-Mistral-7B-Instruct-v0.3.jinja", "<s>", "</s>", "separator", FINISHED_TURN),
    Spec("THUDM-glm-4-9b-chat.jinja", None, "<|endoftext|>", "separator", FINISHED_TURN),
    Spec("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>", "plain", GENERATION_PROMPT),
    Spec("Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>", "plain", GENERATION_PROMPT,
         dated=True),
    Spec("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", "plain",
         GENERATION_PROMPT),
    Spec("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", "plain",
         GENERATION_PROMPT, dated=True),
    Spec("ibm-granite-granite-3.3-2B-Instruct.jinja", "<|end_of_text|>", "<|end_of_text|>",
         "plain", GENERATION_PROMPT, dated=True),
    Spec("openai-gpt-oss-120b.jinja", "<|startoftext|>", "<|return|>", "plain", FINISHED_TURN,
         dated=True),
    Spec("Qwen-Qwen2.5-7B-Instruct.jinja", None, "<|im_end|>", "plain", GENERATION_PROMPT,
         arch="qwen2"),
    Spec("google-gemma-2-2b-it.jinja", "<bos>", "<eos>", "plain", GENERATION_PROMPT,
         arch="gemma2"),
    Spec("google-gemma-3-1b-it.jinja", "<bos>", "<eos>", "plain", GENERATION_PROMPT),
    Spec("microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>", "plain",
         GENERATION_PROMPT),
    Spec("microsoft-Phi-4-mini-instruct.jinja", "<|endoftext|>", "<|endoftext|>", "plain",
         GENERATION_PROMPT),
    Spec("LGAI-EXAONE-EXAONE-3.5-2.4B-Instruct.jinja", "[BOS]", "[|endofturn|]", "plain",
         GENERATION_PROMPT),
    Spec("CohereLabs-c4ai-command-r-v01.json", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "plain",
         GENERATION_PROMPT),
]  # fmt: skip
BY_FILE = {s.file: s for s in SPECS}

# Markup a template writes: <|...|>, <｜...｜>, [INST], [|...|], <think>, <bos>, <BOS_TOKEN>, ...
_CONTROL = re.compile(
    r"<\|[^\s<>|]{1,40}\|>|<｜[^\s｜]{1,40}｜>|\[/?[A-Z_]{2,30}\]|\[\|[a-z_]{1,30}\|\]"
    r"|</?[a-z_]{1,30}>|<[A-Z_0-9]{2,30}>|\[gMASK\]"
)


def _template(spec: Spec) -> str | dict[str, str]:
    text = (DATA / spec.file).read_text(encoding="utf-8")
    return json.loads(text) if spec.file.endswith(".json") else text


def _controls(spec: Spec) -> list[str]:
    raw = _template(spec)
    text = "\n".join(raw.values()) if isinstance(raw, dict) else raw
    found = set(_CONTROL.findall(text)) | {spec.eos} | ({spec.bos} if spec.bos else set())
    return sorted(found)


def test_the_template_files_are_the_recorded_ones():
    sums = dict(
        reversed(line.split("  ", 1)) for line in (DATA / "SHA256SUMS").read_text().splitlines()
    )
    for spec in SPECS:
        assert hashlib.sha256((DATA / spec.file).read_bytes()).hexdigest() == sums[spec.file]
        assert spec.file in (DATA / "SOURCES.md").read_text()


def _build(spec: Spec, root: Path) -> Path:
    """A tokenizer with the template's control tokens and a random tiny model, saved to a folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(zoo._QWEN_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(zoo.corpus_texts(), trainer)
    tok.add_special_tokens(_controls(spec))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos, model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )  # fmt: skip
    fast.chat_template = _template(spec)
    path = root / spec.file.rsplit(".", 1)[0]
    fast.save_pretrained(path)
    common = dict(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    )  # fmt: skip
    if spec.arch == "gemma2":
        config = Gemma2Config(**common, head_dim=16, final_logit_softcapping=30.0)
    elif spec.arch == "qwen2":
        config = Qwen2Config(**common, tie_word_embeddings=True)
    else:
        config = LlamaConfig(**common)
    zoo.save_model(zoo.random_model(config, seed=len(spec.file)), path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-templates")
    cache: dict[str, tuple] = {}

    def get(file: str):
        if file not in cache:
            path = _build(BY_FILE[file], root)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            cache[file] = (model, AutoTokenizer.from_pretrained(path))
        return cache[file]

    return get


@pytest.fixture(scope="module")
def pairs() -> list[Item]:
    items = sorted(read_items(sample_path()), key=lambda it: len(it.prompt + it.response))
    edges = [
        Item(prompt="Say hi", response="\nHello there."),  # a leading newline
        Item(prompt="  Spaces around  ", response=" A leading space, a trailing one. "),
        Item(prompt="Café?", response="Oui : un café crème, s'il vous plaît."),
    ]
    return [*items[40:300:90], *edges]  # three sample pairs of 150 to 400 characters


# --- the reference: the README's definition, written out once more -----------------------

PINNED = {"date_string": "26 Jul 2024"}
MARK = "QQREFERENCEMARKQQ"
SUFFIX = {"base": "", "cot": "\nLet's think step by step."}


def _prompt(x: str, variant: str) -> str:
    body = x + "\n\n" + x if variant.startswith("repeat") else x
    return body + SUFFIX["cot" if variant.endswith("cot") else "base"]


def _conv(x: str, y: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": x}, {"role": "assistant", "content": y}]


class _Clock(dt.datetime):
    """transformers' strftime_now reads `datetime.now()`: this one says what the test wants."""

    today = dt.datetime(2024, 7, 26)

    @classmethod
    def now(cls, tz=None):
        return cls.today


@contextmanager
def _today(when: dt.datetime):
    from transformers.utils import chat_template_utils

    saved, saved_today = chat_template_utils.datetime, _Clock.today
    chat_template_utils.datetime, _Clock.today = _Clock, when
    try:
        yield
    finally:
        chat_template_utils.datetime, _Clock.today = saved, saved_today


def reference_split(tok, x: str, y: str) -> tuple[str, str, list[int], int]:
    """(C, F, token ids of F, index of the first response token), rendered on 2024-07-26."""
    with _today(dt.datetime(2024, 7, 26)):
        marked = tok.apply_chat_template(_conv(x, MARK), tokenize=False, **PINNED)
        full = tok.apply_chat_template(_conv(x, y), tokenize=False, **PINNED)
    context = marked[: marked.index(MARK)]
    assert full.startswith(context)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    first = min(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(context))
    return context, full, list(enc["input_ids"]), first


def reference(model64, tok, items, variant: str, kind: str) -> np.ndarray:
    out = []
    for it in items:
        x = _prompt(it.prompt, variant) if kind == "conditional" else ""
        _, _, ids, first = reference_split(tok, x, it.response)
        with torch.no_grad():
            logits = model64(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(sum(float(logp[t - 1, ids[t]]) for t in range(first, len(ids))))
    return np.asarray(out)


@pytest.mark.parametrize("file", [s.file for s in SPECS])
def test_every_piece_matches_the_reference(built, pairs, file):
    spec = BY_FILE[file]
    model, tok = built(file)
    got = score_items(model, tok, pairs)
    assert len(got) == len(VARIANTS) + 1
    model64 = copy.deepcopy(model).double()
    for (variant, kind), piece in got.items():
        want = reference(model64, tok, pairs, variant, kind)
        assert np.abs(piece.values - want).max() <= TOL, (variant, kind)
        assert piece.truncated == 0 and np.all(piece.values < 0)
        assert piece.template_mode == spec.mode, (variant, kind)
    if spec.mode == GENERATION_PROMPT:  # scorer 1's rule scores exactly the same tokens
        for it in pairs:
            assert pair_request(tok, it.prompt, it.response).start == _scorer1_start(tok, it)
    info = template_info(tok)
    assert info.dated is spec.dated
    assert info.clock == ("2024-07-26" if spec.dated else None)
    raw = (DATA / file).read_text(encoding="utf-8")
    default = json.loads(raw)["default"] if file.endswith(".json") else raw
    assert info.sha256 == hashlib.sha256(default.encode()).hexdigest()


def _scorer1_start(tok, it: Item) -> int:
    """The first response token by scorer 1's rule: the rendered generation prompt is the prefix."""
    with _today(dt.datetime(2024, 7, 26)):
        prefix = tok.apply_chat_template(_conv(it.prompt, "")[:1], tokenize=False,
                                         add_generation_prompt=True, **PINNED)  # fmt: skip
    _, full, _, _ = reference_split(tok, it.prompt, it.response)
    assert full.startswith(prefix)
    offsets = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return min(i for i, (_, end) in enumerate(offsets) if end > len(prefix))


def test_the_zoo_scores_the_same_tokens_as_scorer_1(zoo_by_name, pairs):
    for name in ("atlas-zoo/llama-chat-a", "atlas-zoo/qwen-chat-a"):
        tok = AutoTokenizer.from_pretrained(zoo_by_name[name].path)
        for it in pairs:
            request = pair_request(tok, it.prompt, it.response)
            assert request.mode == GENERATION_PROMPT
            assert request.start == _scorer1_start(tok, it)


def _spans(tok, x: str, y: str) -> tuple[str, str]:
    request = pair_request(tok, x, y)
    return tok.decode(list(request.ids[: request.start])), tok.decode(
        list(request.ids[request.start :])
    )


def test_think_inserting_the_empty_think_block_is_context(built):
    _, tok = built("Qwen-Qwen3-0.6B.jinja")
    context, scored = _spans(tok, "Say hi", "Hello, friend.")
    assert context.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert scored == "Hello, friend.<|im_end|>\n"
    generation = tok.apply_chat_template(_conv("Say hi", "")[:1], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert generation.endswith("<|im_start|>assistant\n")  # the generation prompt lacks it


def test_think_opening_the_answer_is_scored_as_the_history_shows_it(built):
    _, tok = built("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")
    generation = tok.apply_chat_template(_conv("Say hi", "")[:1], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert generation.endswith("<｜Assistant｜><think>\n")
    context, scored = _spans(tok, "Say hi", "Hello, friend.")
    assert context.endswith("<｜User｜>Say hi<｜Assistant｜>")
    assert scored == "Hello, friend." + R1_EOS
    # Everything up to </think> is cut from a finished turn: the rest is what is scored.
    context, scored = _spans(tok, "Say hi", "<think>\nA greeting.\n</think>\n\nHello.")
    assert context.endswith("<｜Assistant｜>") and scored == "\n\nHello." + R1_EOS


def test_separator_the_space_or_newline_before_the_answer_is_context(built):
    _, tok = built("mistralai-Mistral-7B-Instruct-v0.3.jinja")
    context, scored = _spans(tok, "Say hi", "Hello, friend.")
    assert context.endswith("[INST] Say hi[/INST] ")
    assert scored == "Hello, friend.</s>"
    _, tok = built("THUDM-glm-4-9b-chat.jinja")
    context, scored = _spans(tok, "Say hi", "Hello, friend.")
    assert context.endswith("<|user|>\nSay hi<|assistant|>\n")
    assert scored == "Hello, friend."  # GLM-4 writes no end marker after a finished turn


def test_plain_the_context_is_the_generation_prompt(built):
    _, tok = built("meta-llama-Llama-3.1-8B-Instruct.jinja")
    request = pair_request(tok, "Say hi", "Hello, friend.")
    context, scored = _spans(tok, "Say hi", "Hello, friend.")
    generation = tok.apply_chat_template(_conv("Say hi", "")[:1], tokenize=False,
                                         add_generation_prompt=True, **PINNED)  # fmt: skip
    assert context == generation and request.mode == GENERATION_PROMPT
    assert scored == "Hello, friend.<|eot_id|>"


@pytest.mark.parametrize("file", [s.file for s in SPECS if s.dated])
def test_dated_templates_give_the_same_vectors_on_any_day(built, pairs, file, monkeypatch):
    from transformers.utils import chat_template_utils

    model, tok = built(file)
    monkeypatch.setattr(chat_template_utils, "datetime", _Clock)
    runs, texts = [], []
    for today in (dt.datetime(2025, 3, 14), dt.datetime(2026, 12, 2)):
        monkeypatch.setattr(_Clock, "today", today)  # the clock transformers gives templates
        # The clock reaches the template: left to itself it would write a different date.
        texts.append(tok.apply_chat_template(_conv("Hi", "Hello"), tokenize=False))
        got = score_items(model, tok, pairs[:4])
        runs.append({k: v.values.tobytes() for k, v in got.items()})
    assert texts[0] != texts[1]
    assert runs[0] == runs[1]


def test_named_templates_render_the_default(built):
    _, tok = built("CohereLabs-c4ai-command-r-v01.json")
    assert isinstance(tok.chat_template, dict) and set(tok.chat_template) >= {"default", "rag"}
    context, scored = _spans(tok, "Say hi", "Hello.")
    assert "<|SYSTEM_TOKEN|>" not in context  # the rag and tool_use templates write a preamble
    assert scored == "Hello.<|END_OF_TURN_TOKEN|>"


def test_a_template_whose_context_depends_on_the_answer_is_refused(built, pairs):
    model, tok = built("Qwen-Qwen2.5-7B-Instruct.jinja")
    tok = copy.deepcopy(tok)
    tok.chat_template = zoo.BROKEN_TEMPLATE
    with pytest.raises(ModelFailure) as info:
        score_items(model, tok, pairs)
    assert info.value.reason == "template-mismatch"
    assert "depends on the answer" in info.value.detail
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"  # drops the content
    with pytest.raises(ModelFailure) as info:
        score_items(model, tok, pairs)
    assert info.value.reason == "template-error"
