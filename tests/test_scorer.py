"""The scoring engine against a float64 one-item-at-a-time reference, on real tiny models."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from atlas.errors import ModelFailure  # noqa: E402
from atlas.scoring.engine import Scorer, score_items, score_naive  # noqa: E402
from atlas.scoring.templates import (  # noqa: E402
    COT_SUFFIX,
    PROMPT_TRUNCATED,
    RESPONSE_TRUNCATED,
    build_requests,
    pair_request,
    render_pair,
    transform_prompt,
    truncate,
)
from atlas.store.tables import VARIANTS  # noqa: E402
from atlas.testing.zoo import corpus_texts  # noqa: E402
from atlas.textsets import Item, read_items, sample_path  # noqa: E402

TOL = 1e-4  # nats per item, float32 engine vs float64 reference
PIECES = [*((v, "conditional") for v in VARIANTS), ("base", "unconditional")]


@pytest.fixture(scope="module")
def pairs() -> list[Item]:
    """Varied sample pairs (code, arithmetic, non-ASCII, long and short); the last repeats one."""
    items = read_items(sample_path())
    return [*items[::25], items[104], items[100]]


@pytest.fixture(scope="module")
def plain() -> list[Item]:
    return [Item(text=t) for t in corpus_texts()[::6]]


@pytest.fixture(scope="module")
def loaded(zoo_by_name):
    """Load zoo models once per module: name -> (float32 model, tokenizer)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            path = zoo_by_name[f"atlas-zoo/{name}"].path
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            cache[name] = (model.eval(), AutoTokenizer.from_pretrained(path))
        return cache[name]

    return get


def _double(model):
    return copy.deepcopy(model).double()


@pytest.mark.parametrize("name", ["llama-chat-a", "qwen-chat-a"])
def test_matches_float64_reference_for_every_piece(loaded, pairs, name):
    # llama: template in chat_template.jinja, BOS rendered by the template, content trimmed;
    # qwen: ChatML template in tokenizer_config.json with a default system prompt.
    model, tok = loaded(name)
    got = score_items(model, tok, pairs)
    assert list(got) == PIECES
    reference = _double(model)
    for (variant, kind), piece in got.items():
        want = score_naive(reference, tok, pairs, variant, kind)
        assert np.abs(piece.values - want).max() <= TOL, (variant, kind)
        assert piece.values.dtype == np.float64 and np.all(piece.values < 0)
        assert piece.truncated == 0
    # The variants change the conditional values, not the scored tokens.
    base = got[("base", "conditional")]
    for variant in VARIANTS[1:]:
        assert np.array_equal(got[(variant, "conditional")].token_counts, base.token_counts)
        assert np.abs(got[(variant, "conditional")].values - base.values).max() > 1e-3


def test_plain_texts_score_every_token_after_the_first(loaded, plain):
    model, tok = loaded("llama-base")
    got = score_items(model, tok, plain)
    assert list(got) == [("base", "unconditional")]
    piece = got[("base", "unconditional")]
    want = score_naive(_double(model), tok, plain, "base", "unconditional")
    assert np.abs(piece.values - want).max() <= TOL
    # Default special tokens: the Llama-3 style tokenizer prepends BOS, which is never scored.
    lengths = [len(tok(it.text)["input_ids"]) for it in plain]
    assert tok(plain[0].text)["input_ids"][0] == tok.bos_token_id
    assert piece.token_counts.tolist() == [n - 1 for n in lengths]
    # By hand for one text: sum of log_softmax(logits)[t-1, tok_t] for t >= 1.
    ids = torch.tensor([tok(plain[0].text)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(_double(model)(input_ids=ids).logits[0].double(), -1)
    by_hand = sum(float(logp[t - 1, ids[0, t]]) for t in range(1, ids.shape[1]))
    assert piece.values[0] == pytest.approx(by_hand, abs=TOL)


def test_a_one_token_text_scores_zero(loaded, plain):
    model, tok = loaded("qwen-base")  # no BOS: "a" is one token, with nothing before it
    items = [Item(text="a"), *plain[:2]]
    assert len(tok("a")["input_ids"]) == 1
    piece = score_items(model, tok, items)[("base", "unconditional")]
    assert piece.values[0] == 0.0 and piece.token_counts[0] == 0
    want = score_naive(_double(model), tok, items, "base", "unconditional")
    assert np.abs(piece.values - want).max() <= TOL and np.all(piece.values[1:] < 0)


def test_batch_budgets_and_orderings_give_the_same_numbers(loaded, pairs):
    model, tok = loaded("qwen-chat-a")
    runs = {}
    for budget in (1, 300, 100_000):
        engine = Scorer(model, batch_tokens=budget)
        runs[budget] = score_items(model, tok, pairs, ("base",), scorer=engine)
        runs[budget]["batches"] = engine.stats.batches
    # One distinct item per batch: the repeated pair is scored once per piece.
    assert runs[1]["batches"] == 2 * (len(pairs) - 1)
    assert runs[100_000]["batches"] == 1  # both pieces together, as prefix trees
    for piece in PIECES[:1] + PIECES[-1:]:
        assert runs[1][piece].values[-1] == runs[1][piece].values[4]  # pairs[4] is item 100
        for budget in (1, 300):
            diff = np.abs(runs[budget][piece].values - runs[100_000][piece].values).max()
            assert diff <= 1e-5, (budget, piece)
    order = list(range(len(pairs)))
    random.Random(7).shuffle(order)
    shuffled = score_items(model, tok, [pairs[i] for i in order], ("base",), batch_tokens=300)
    for piece in PIECES[:1] + PIECES[-1:]:
        # Batches are built from a canonical sort, so a shuffle changes nothing at all.
        assert np.array_equal(shuffled[piece].values, runs[300][piece].values[order])


def test_response_tokens_are_found_by_offsets(loaded):
    _, tok = loaded("qwen-base")
    request = pair_request(tok, "Say hi", "Hello, friend.")
    scored = tok.decode(list(request.ids[request.start :]))
    # The whole assistant turn after the generation prompt, end-of-turn marker included.
    assert scored == "Hello, friend.<|im_end|>\n"
    assert tok.decode(list(request.ids[: request.start])).endswith("<|im_start|>assistant\n")

    _, llama_tok = loaded("llama-base")
    request = pair_request(llama_tok, "Say hi", "Hello, friend.")
    assert llama_tok.decode(list(request.ids[request.start :])) == "Hello, friend.<|eot_id|>"
    assert request.ids[0] == llama_tok.bos_token_id  # rendered by the template, not added twice
    assert request.ids.count(llama_tok.bos_token_id) == 1


def test_a_token_straddling_the_boundary_is_a_response_token(zoo_by_name):
    # A template whose generation prompt ends in "\n" and keeps content untrimmed: a response
    # starting with "\n" merges with it into one "\n\n" token in the full text.
    tok = AutoTokenizer.from_pretrained(zoo_by_name["atlas-zoo/llama-base"].path)
    tok.chat_template = (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}"
    )
    prefix, full = render_pair(tok, "Say hi", "\nHello")
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    straddling = [
        i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < len(prefix) < e
    ]
    assert len(straddling) == 1 and full[slice(*enc["offset_mapping"][straddling[0]])] == "\n\n"
    request = pair_request(tok, "Say hi", "\nHello")
    assert request.start == straddling[0]
    # Counting the prompt's own tokens would put the boundary one token too far.
    assert len(tok(prefix, add_special_tokens=False)["input_ids"]) == request.start + 1


def test_variants_rewrite_the_prompt():
    x = "Add 2 and 3."
    assert transform_prompt(x, "base") == x
    assert transform_prompt(x, "cot") == x + "\nLet's think step by step."
    assert transform_prompt(x, "repeat") == x + "\n\n" + x
    assert transform_prompt(x, "repeat+cot") == x + "\n\n" + x + COT_SUFFIX


def test_truncation_cuts_the_prompt_from_the_left(loaded, pairs):
    model, tok = loaded("llama-chat-a")
    full = build_requests(tok, pairs[:4], kind="conditional")
    limit = max(r.scored for r in full) + 3
    cut = build_requests(tok, pairs[:4], kind="conditional", max_tokens=limit)
    for whole, short in zip(full, cut, strict=True):
        assert len(short.ids) == min(len(whole.ids), limit)
        assert short.ids == whole.ids[-len(short.ids) :]  # the response is intact
        assert short.scored == whole.scored
        assert short.truncated == (PROMPT_TRUNCATED if len(whole.ids) > limit else 0)
    got = score_items(model, tok, pairs[:4], ("base",), max_tokens=limit)
    piece = got[("base", "conditional")]
    assert piece.truncated == sum(len(r.ids) > limit for r in full) > 0
    want = score_naive(_double(model), tok, pairs[:4], max_tokens=limit)
    assert np.abs(piece.values - want).max() <= TOL
    # By hand for one truncated item: score the kept tokens directly.
    short = next(r for r in cut if r.truncated)
    ids = torch.tensor([list(short.ids)])
    with torch.no_grad():
        logp = torch.log_softmax(_double(model)(input_ids=ids).logits[0].double(), -1)
    by_hand = sum(float(logp[t - 1, ids[0, t]]) for t in range(short.start, ids.shape[1]))
    assert piece.values[cut.index(short)] == pytest.approx(by_hand, abs=TOL)


def test_a_response_longer_than_the_limit_is_cut_on_the_right(loaded, pairs, plain):
    _, tok = loaded("llama-chat-a")
    whole = build_requests(tok, pairs[:1], kind="conditional")[0]
    short = truncate(whole, 10)
    assert short.truncated == RESPONSE_TRUNCATED and short.start == 1 and len(short.ids) == 10
    assert short.ids == whole.ids[whole.start - 1 : whole.start + 9]
    text = build_requests(tok, plain[:1], kind="unconditional", plain=True)[0]
    assert truncate(text, 5, plain=True).ids == text.ids[:5]


@pytest.mark.parametrize(
    ("name", "reason"),
    [("no-template", "no-chat-template"), ("broken-template", "template-mismatch"),
     ("nan", "non-finite")],
)  # fmt: skip
def test_failures_have_reasons(loaded, pairs, name, reason):
    model, tok = loaded(name)
    calls = []
    with pytest.raises(ModelFailure) as info:
        score_items(model, tok, pairs, on_piece=calls.append)
    assert info.value.reason == reason
    assert calls == []  # no piece finished


def test_out_of_memory_backs_off_then_fails_on_one_item(loaded, pairs):
    model, tok = loaded("llama-chat-a")
    want = score_items(model, tok, pairs, ("base",), batch_tokens=100_000)
    limit = {"tokens": 400}

    def fake_oom(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.numel() > limit["tokens"]:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    handle = model.get_decoder().register_forward_pre_hook(fake_oom, with_kwargs=True)
    try:
        engine = Scorer(model, batch_tokens=100_000)
        got = score_items(model, tok, pairs, ("base",), scorer=engine)
        assert engine.stats.backoffs >= 2 and engine.batch_tokens <= 400
        for piece in want:
            assert np.abs(got[piece].values - want[piece].values).max() <= 1e-5
        limit["tokens"] = 5
        with pytest.raises(ModelFailure) as info:
            score_items(model, tok, pairs[:2], ("base",))
        assert info.value.reason == "out-of-memory"
    finally:
        handle.remove()


def test_full_logits_path_agrees(loaded, pairs):
    # Architectures whose head cannot be split off fall back to the model's own logits.
    model, tok = loaded("qwen-chat-a")
    split = Scorer(model)
    whole = Scorer(model)
    whole._split_head = False
    a = score_items(model, tok, pairs, ("cot",), scorer=split)
    b = score_items(model, tok, pairs, ("cot",), scorer=whole)
    assert split.stats.head == "scored-positions"
    for piece in a:
        assert np.abs(a[piece].values - b[piece].values).max() <= 1e-5
