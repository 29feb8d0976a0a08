"""Chat-template rendering and the token spans that the scorer scores.

The definition (see README, "Scoring"): for a pair (x, y), `prefix` is the chat template
rendered with the user turn x and the generation prompt, `full` the template rendered with the
user turn x and the assistant turn y. `full` must start with `prefix`. `full` is tokenized once,
without added special tokens and with character offsets; the response tokens are the tokens
that end after `len(prefix)` (a token straddling the boundary counts as a response token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from atlas.errors import ModelFailure, UsageError
from atlas.store.tables import VARIANTS

COT_SUFFIX = "\nLet's think step by step."
CONDITIONAL = "conditional"
UNCONDITIONAL = "unconditional"

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


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as exc:  # jinja raises many types, including the template's own errors
        raise ModelFailure(
            "template-error", f"the chat template cannot render a user/assistant pair: {exc}"
        ) from exc
    if not isinstance(rendered, str):
        raise ModelFailure("template-error", "the chat template did not render a string")
    return rendered


def render_pair(tokenizer: Any, prompt: str, response: str) -> tuple[str, str]:
    """(prefix, full) for one pair; template-mismatch when full does not start with prefix."""
    if not has_chat_template(tokenizer):
        raise ModelFailure("no-chat-template", "the tokenizer has no chat template")
    user = {"role": "user", "content": prompt}
    prefix = _render(tokenizer, [user], True)
    full = _render(tokenizer, [user, {"role": "assistant", "content": response}], False)
    if not full.startswith(prefix):
        pairs = enumerate(zip(prefix, full, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(prefix), len(full)))
        raise ModelFailure(
            "template-mismatch",
            f"the rendered conversation does not start with the rendered generation prompt "
            f"(they differ at character {at}: {prefix[at:at + 20]!r} vs {full[at:at + 20]!r})",
        )
    if not prefix:
        raise ModelFailure("template-mismatch", "the chat template renders an empty prompt")
    return prefix, full


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
    prefix, full = render_pair(tokenizer, prompt, response)
    ids, offsets = _offsets(tokenizer, full)
    boundary = len(prefix)
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
    return Request(tuple(ids), start)


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
        return Request(request.ids[drop:], request.start - drop, PROMPT_TRUNCATED)
    first = request.start - 1
    return Request(request.ids[first : first + max_tokens], 1, RESPONSE_TRUNCATED)


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
    for item in items:
        if plain:
            if kind != UNCONDITIONAL or variant != "base":
                raise UsageError("plain text sets have only the base unconditional vector")
            request = plain_request(tokenizer, item.text)
        elif kind == CONDITIONAL:
            request = pair_request(tokenizer, transform_prompt(item.prompt, variant), item.response)
        elif kind == UNCONDITIONAL:
            request = pair_request(tokenizer, "", item.response)
        else:
            raise UsageError(f"unknown vector kind {kind!r}")
        out.append(truncate(request, max_tokens, plain=plain))
    return out
