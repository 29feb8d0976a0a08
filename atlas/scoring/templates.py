"""Chat-template rendering and the token spans that the scorer scores.

The definition (see README, "Scoring"): the response is what the template renders for the
assistant's finished turn. `G = template([user: x, assistant: SENTINEL])`; the context `C` is
everything before the sentinel (the header and any markup the template writes into the turn
before the content). `F = template([user: x, assistant: y])` must start with `C`. `F` is
tokenized once, without added special tokens and with character offsets; the response tokens
are the tokens that end after `len(C)` (a token straddling the boundary counts). Templates
render with a pinned clock, so a dated template gives the same text on any day.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

from atlas.errors import ModelFailure, UsageError
from atlas.store.tables import VARIANTS

COT_SUFFIX = "\nLet's think step by step."
CONDITIONAL = "conditional"
UNCONDITIONAL = "unconditional"

# Template modes: the context is the rendered generation prompt, or (reasoning templates,
# separators) what the template writes into the finished assistant turn before the content.
GENERATION_PROMPT = "generation-prompt"
FINISHED_TURN = "finished-turn"
TEMPLATE_MODES = (GENERATION_PROMPT, FINISHED_TURN)
# Stands for the answer when the template is rendered to find where the answer starts: no
# whitespace (templates trim), no markup, nothing a template would rewrite.
SENTINEL = "ATLASANSWER7f3c9e2b"
# The one date every template sees: Llama 3.1's own default date ("26 Jul 2024", which Llama
# 3.2 also falls back to), so those templates render as they always have.
PINNED_DATE = datetime(2024, 7, 26)
DATE_STRING = PINNED_DATE.strftime("%d %b %Y")  # the Llama-3 format, the family that reads it
PROBE_DATES = (datetime(2001, 2, 3), datetime(2030, 11, 12))

# Truncation marks on a request.
NOT_TRUNCATED = 0
PROMPT_TRUNCATED = 1
RESPONSE_TRUNCATED = 2


@dataclass(frozen=True)
class Request:
    """Token ids of one item and the index of its first scored token (targets: ids[start:])."""

    ids: tuple[int, ...]
    start: int
    truncated: int = NOT_TRUNCATED
    mode: str | None = None

    @property
    def scored(self) -> int:
        """How many tokens are scored."""
        return len(self.ids) - self.start


def transform_prompt(prompt: str, variant: str) -> str:
    """Apply a prompt variant: base, cot, repeat or repeat+cot."""
    if variant == "base":
        return prompt
    if variant == "cot":
        return prompt + COT_SUFFIX
    if variant == "repeat":
        return prompt + "\n\n" + prompt
    if variant == "repeat+cot":
        return prompt + "\n\n" + prompt + COT_SUFFIX
    raise UsageError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def parse_variants(variants: str | Sequence[str]) -> tuple[str, ...]:
    """Variants from a comma list or sequence, validated, duplicates dropped, order kept."""
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if name not in VARIANTS:
            raise UsageError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError("no variants given")
    return tuple(out)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (inline, a jinja file, or named ones)."""
    return bool(getattr(tokenizer, "chat_template", None))


@contextmanager
def clock(tokenizer: Any, when: datetime = PINNED_DATE) -> Iterator[None]:
    """Inside the block, the tokenizer's template sees `when` through `strftime_now`.

    transformers compiles each template once (cached by its text) with a `strftime_now` global
    that reads today's date; render variables cannot replace it (they are reduced to plain
    data), so the compiled template's own global is swapped for the block and then restored.
    """
    text = template_text(tokenizer)
    if text is None:
        yield
        return
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(text)
    except Exception:  # a template that does not compile fails when it is rendered
        yield
        return
    table = compiled.globals
    had = "strftime_now" in getattr(table, "maps", [table])[0]
    saved = table.get("strftime_now")

    def strftime_now(fmt: str) -> str:
        return when.strftime(fmt)

    table["strftime_now"] = strftime_now
    try:
        yield
    finally:
        if had:
            table["strftime_now"] = saved
        else:
            del table["strftime_now"]


def _apply(
    tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, when: datetime | None
) -> Any:
    """Render at the pinned date (`when=None`), or at `when` without `date_string`."""
    extra = {"date_string": DATE_STRING} if when is None else {}
    with clock(tokenizer, PINNED_DATE if when is None else when):
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False, **extra
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        rendered = _apply(tokenizer, messages, generation_prompt, None)
    except Exception as exc:  # jinja raises many types, including the template's own errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFailure(
            "template-error", f"the chat template cannot render a user/assistant pair: {first}"
        ) from exc
    if not isinstance(rendered, str):
        raise ModelFailure("template-error", "the chat template did not render a string")
    return rendered


def _differ_at(a: str, b: str) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def _conversation(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def context_text(tokenizer: Any, prompt: str) -> str:
    """The context C for a prompt: what the template renders before the assistant's content.

    Also where generation for this prompt starts, so that sampled answers follow the same
    definition as scored ones.
    """
    if not has_chat_template(tokenizer):
        raise ModelFailure("no-chat-template", "the tokenizer has no chat template")
    marked = _render(tokenizer, _conversation(prompt, SENTINEL), False)
    at = marked.find(SENTINEL)
    if at < 0:
        raise ModelFailure(
            "template-error", "the chat template does not render the assistant's message"
        )
    return marked[:at]


@dataclass(frozen=True)
class RenderedPair:
    """A pair rendered by the finished-turn definition: context C, full text F and the mode."""

    context: str
    full: str
    mode: str


def render(tokenizer: Any, prompt: str, response: str) -> RenderedPair:
    """Context and full text of one pair by the finished-turn definition, with its mode.

    template-error when the template does not render the assistant's content; template-mismatch
    when the text before the answer depends on the answer (F does not start with C).
    """
    user = {"role": "user", "content": prompt}
    context = context_text(tokenizer, prompt)
    full = _render(tokenizer, _conversation(prompt, response), False)
    if not full.startswith(context):
        i = _differ_at(context, full)
        raise ModelFailure(
            "template-mismatch",
            "the text the template renders before the answer depends on the answer "
            f"(context and conversation differ at character {i}: "
            f"{context[i:i + 20]!r} vs {full[i:i + 20]!r})",
        )
    if not context:
        raise ModelFailure("template-mismatch", "the chat template renders an empty prompt")
    generation = _render(tokenizer, [user], True)
    mode = GENERATION_PROMPT if generation == context else FINISHED_TURN
    return RenderedPair(context, full, mode)


def render_pair(tokenizer: Any, prompt: str, response: str) -> tuple[str, str]:
    """(context, full) for one pair; see `render`."""
    pair = render(tokenizer, prompt, response)
    return pair.context, pair.full


def template_text(tokenizer: Any) -> str | None:
    """The template that renders a conversation without tools (the default of named ones)."""
    try:
        chosen = tokenizer.get_chat_template()
    except Exception:  # no template, or named ones without a default
        chosen = None
    if isinstance(chosen, str) and chosen:
        return chosen
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    elif isinstance(template, list):  # [{"name", "template"}] as in tokenizer_config.json
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


@dataclass(frozen=True)
class TemplateInfo:
    """What a vector's provenance records about the template: its hash and pinned date."""

    sha256: str | None
    dated: bool

    @property
    def clock(self) -> str | None:
        """The pinned date the template rendered with, when the template reads the date."""
        return PINNED_DATE.date().isoformat() if self.dated else None


def template_info(tokenizer: Any) -> TemplateInfo:
    """The template's sha256, and whether its text depends on the date it is rendered on.

    Dated: the pinned rendering differs from one with transformers' defaults (no
    `date_string`) at some other date, i.e. unpinned, the text would change from day to day.
    """
    text = template_text(tokenizer)
    if text is None:
        return TemplateInfo(None, False)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    messages = _conversation("Hi", "Hello")
    try:
        pinned = _apply(tokenizer, messages, False, None)
        others = [_apply(tokenizer, messages, False, when) for when in PROBE_DATES]
    except Exception:  # a template that cannot render fails the model elsewhere
        return TemplateInfo(digest, False)
    return TemplateInfo(digest, any(other != pinned for other in others))


def _offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise ModelFailure(
            "no-offsets", "the tokenizer gives no character offsets (a slow tokenizer?)"
        ) from exc
    ids = list(enc["input_ids"])
    offsets = enc.get("offset_mapping")
    if offsets is None or len(offsets) != len(ids):
        raise ModelFailure("no-offsets", "the tokenizer gives no character offsets")
    return ids, [(int(s), int(e)) for s, e in offsets]


def pair_request(tokenizer: Any, prompt: str, response: str) -> Request:
    """The request scoring `response` after `prompt`, by character offsets in one tokenization."""
    pair = render(tokenizer, prompt, response)
    full = pair.full
    ids, offsets = _offsets(tokenizer, full)
    boundary = len(pair.context)
    start = next((i for i, (_, end) in enumerate(offsets) if end > boundary), None)
    ends = [end for _, end in offsets]
    if (
        start is None
        or any(b < a for a, b in pairwise(ends))
        or any(not 0 <= s <= e <= len(full) for s, e in offsets)
        or ends[-1] <= boundary
    ):
        raise ModelFailure(
            "no-offsets", "the tokenizer's character offsets do not locate the response"
        )
    if start == 0:
        # The first token already reaches into the response: nothing conditions it.
        raise ModelFailure(
            "template-mismatch", "the rendered prompt is merged into the first response token"
        )
    return Request(tuple(ids), start, mode=pair.mode)


def vector_mode(requests: Sequence[Request]) -> str | None:
    """A vector's template mode: finished-turn when any item's context is not the prompt."""
    modes = {r.mode for r in requests if r.mode is not None}
    if not modes:
        return None
    return FINISHED_TURN if FINISHED_TURN in modes else GENERATION_PROMPT


def plain_request(tokenizer: Any, text: str) -> Request:
    """log p(text) with the tokenizer's default special tokens; every token after the first."""
    ids = tuple(tokenizer(text, add_special_tokens=True)["input_ids"])
    return Request(ids, min(1, len(ids)))  # one token or none: nothing scored, 0 nats


def truncate(request: Request, max_tokens: int | None, *, plain: bool = False) -> Request:
    """Fit a request into `max_tokens`: drop prompt tokens from the left, never response ones.

    When even the response does not fit after one context token, the response is cut on the
    right: its first `max_tokens - 1` tokens are scored after the last prompt token. Plain texts
    keep their first `max_tokens` tokens, as the authors' calculator does.
    """
    n = len(request.ids)
    if max_tokens is None or n <= max_tokens:
        return request
    if max_tokens < 2:
        raise UsageError("`max_tokens` must be at least 2")
    if plain:
        return Request(request.ids[:max_tokens], 1, RESPONSE_TRUNCATED)
    if request.scored + 1 <= max_tokens:
        drop = n - max_tokens
        return Request(request.ids[drop:], request.start - drop, PROMPT_TRUNCATED, request.mode)
    first = request.start - 1
    return Request(request.ids[first : first + max_tokens], 1, RESPONSE_TRUNCATED, request.mode)


def char_budget(tokenizer: Any, max_tokens: int | None) -> int | None:
    """Characters that surely hold more than `max_tokens` tokens: text beyond is never scored.

    No token covers more characters than its longest vocabulary string, so cutting a text to
    (max_tokens + 16) x that length keeps every token that truncation would keep, and bounds the
    memory tokenizing one item can take, however long the item.
    """
    if max_tokens is None:
        return None
    try:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=0)
    except Exception:  # a tokenizer without a vocabulary listing: no cut
        return None
    return (max_tokens + 16) * max(longest, 1)


def build_requests(
    tokenizer: Any,
    items: Sequence[Any],
    *,
    kind: str,
    variant: str = "base",
    plain: bool = False,
    max_tokens: int | None = None,
) -> list[Request]:
    """One request per item for a (variant, kind) piece; items have prompt/response or text."""
    out: list[Request] = []
    cut = char_budget(tokenizer, max_tokens)
    for item in items:
        if plain:
            if kind != UNCONDITIONAL or variant != "base":
                raise UsageError("plain text sets have only the base unconditional vector")
            request = plain_request(tokenizer, item.text[:cut])
        elif kind == CONDITIONAL:
            prompt = transform_prompt(item.prompt, variant)
            if cut is not None and len(prompt) > cut:
                prompt = prompt[-cut:]  # truncation keeps the prompt's end
            request = pair_request(tokenizer, prompt, item.response[:cut])
        elif kind == UNCONDITIONAL:
            request = pair_request(tokenizer, "", item.response[:cut])
        else:
            raise UsageError(f"unknown vector kind {kind!r}")
        out.append(truncate(request, max_tokens, plain=plain))
    return out
