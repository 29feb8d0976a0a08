"""The scoring engine: exact log-likelihoods of response tokens, fast.

Requests (token ids and the first scored index, see `atlas.scoring.templates`) are deduplicated,
sorted by length and cut into token-budget batches, right-padded with an attention mask. The
decoder runs once per batch under `torch.inference_mode`; the output head is applied only to
the hidden states of scored positions, in chunks, and `log p = logit[target] - logsumexp(logits)`
is computed in float32; per-item sums are accumulated in float64. On out-of-memory the batch
budget is halved and the batch retried. Non-finite values fail the model (`non-finite`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlas.errors import ModelFailure, UsageError
from atlas.scoring.templates import (
    CONDITIONAL,
    NOT_TRUNCATED,
    UNCONDITIONAL,
    Request,
    build_requests,
    has_chat_template,
    vector_mode,
)
from atlas.store.tables import VARIANTS

# 2: the finished-turn definition and the pinned template clock (see atlas.scoring.templates).
SCORER_VERSION = "atlas-scorer/2"
CPU_BATCH_TOKENS = 2048
MAX_ROWS = 1024
Piece = tuple[str, str]


@dataclass
class ScoredVector:
    """One (variant, kind) vector over a text set, with token counts and truncations."""

    variant: str
    kind: str
    values: np.ndarray
    token_counts: np.ndarray
    truncated: int = 0
    response_truncated: int = 0
    template_mode: str | None = None

    @property
    def tokens(self) -> int:
        """Scored tokens in all."""
        return int(self.token_counts.sum())


@dataclass
class ScorerStats:
    """What a scorer did: batches run, tokens through the model, out-of-memory back-offs."""

    batches: int = 0
    forward_tokens: int = 0
    scored_tokens: int = 0
    backoffs: int = 0
    head: str = ""
    batch_sizes: list[int] = field(default_factory=list)


def _torch() -> Any:
    import torch

    return torch


def is_plain(items: Sequence[Any]) -> bool:
    """Whether the items are plain texts (not prompt-response pairs)."""
    return bool(items) and all(getattr(it, "text", None) is not None for it in items)


def plan_pieces(
    plain: bool, variants: Sequence[str] = VARIANTS, *, unconditional: bool = True
) -> list[Piece]:
    """The (variant, kind) pieces to compute: conditional per variant, unconditional once."""
    if plain:
        return [("base", UNCONDITIONAL)]
    pieces = [(v, CONDITIONAL) for v in variants]
    if unconditional:
        pieces.append(("base", UNCONDITIONAL))
    return pieces


def context_length(model: Any, tokenizer: Any = None) -> int | None:
    """The model's context length: max_position_embeddings, else the tokenizer's limit."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 1:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 1 < limit < 10**8:
        return limit
    return None


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def default_batch_tokens(model: Any) -> int:
    """A batch budget in tokens: fixed on CPU, from free memory and model shape on CUDA."""
    device = model_device(model)
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    torch = _torch()
    free, _total = torch.cuda.mem_get_info(device)
    text = model.config.get_text_config()
    hidden = getattr(text, "hidden_size", 4096)
    inter = getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden
    elem = torch.finfo(next(model.parameters()).dtype).bits // 8
    per_token = elem * (10 * hidden + 3 * inter)
    return int(max(512, min(32768, 0.5 * free / per_token)))


def _is_oom(exc: BaseException) -> bool:
    torch = _torch()
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _postprocess(config: Any) -> Callable[[Any], Any]:
    """Logit transforms some architectures apply after the head (scale, soft-capping)."""
    torch = _torch()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text, "logit_scale", None)  # Cohere
    divide = getattr(text, "logits_scaling", None)  # Granite
    cap = getattr(text, "final_logit_softcapping", None)  # Gemma 2 and 3

    def apply(logits: Any) -> Any:
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        if isinstance(divide, (int, float)) and divide != 1:
            logits = logits / divide
        if isinstance(cap, (int, float)) and cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return apply


class Scorer:
    """Scores requests with one loaded model: sum of log p over each request's scored tokens."""

    def __init__(
        self,
        model: Any,
        *,
        batch_tokens: int | None = None,
        head_chunk_bytes: int | None = None,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.model = model
        self.device = model_device(model)
        self.batch_tokens = int(batch_tokens or default_batch_tokens(model))
        if self.batch_tokens < 1:
            raise UsageError("`batch_tokens` must be positive")
        cuda = self.device.type == "cuda"
        # On CPU, chunks of ~128 rows at a 32k vocabulary stay cache-friendly (measured fastest).
        self.head_chunk_bytes = head_chunk_bytes or (2 << 30 if cuda else 48 << 20)
        self.max_rows = max_rows
        self.stats = ScorerStats()
        self._split_head: bool | None = None
        self._post = _postprocess(model.config)

    # --- public ---------------------------------------------------------------------------
    def score(
        self, requests: Sequence[Request], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Per-request sums of log p(target | context) over scored tokens, float64."""
        torch = _torch()
        unique: dict[tuple[tuple[int, ...], int], int] = {}
        owners: list[int] = []
        for r in requests:
            if r.start >= len(r.ids):  # nothing to score (a one-token plain text): 0 nats
                owners.append(-1)
                continue
            if r.start < 1:
                raise UsageError(f"a request's first token cannot be scored ({len(r.ids)} ids)")
            owners.append(unique.setdefault((r.ids, r.start), len(unique)))
        owner = np.asarray(owners, dtype=np.int64)
        keys = list(unique)
        weight = np.bincount(owner[owner >= 0], minlength=len(keys))
        if progress is not None and (owner < 0).any():
            progress(int((owner < 0).sum()))
        order = sorted(range(len(keys)), key=lambda i: (-len(keys[i][0]), keys[i]))
        sums = np.zeros(len(keys), dtype=np.float64)
        if keys and self._split_head is None:
            self._split_head = self._check_split_head(keys[order[-1]][0])
            self.stats.head = "scored-positions" if self._split_head else "full-logits"
        pos = 0
        with torch.inference_mode():
            while pos < len(order):
                longest = len(keys[order[pos]][0])
                rows = max(1, min(self.max_rows, self.batch_tokens // longest, len(order) - pos))
                batch = order[pos : pos + rows]
                try:
                    sums[batch] = self._forward([keys[i] for i in batch])
                except ModelFailure:
                    raise
                except Exception as exc:
                    if not _is_oom(exc):
                        raise
                    self._free()
                    if rows == 1:
                        raise ModelFailure(
                            "out-of-memory", f"one item of {longest} tokens does not fit"
                        ) from exc
                    self.batch_tokens = max(longest, (rows // 2) * longest)
                    self.stats.backoffs += 1
                    continue
                pos += rows
                if progress is not None:
                    progress(int(weight[batch].sum()))
        out = np.zeros(len(owners), dtype=np.float64)
        out[owner >= 0] = sums[owner[owner >= 0]]
        return out

    # --- internals ------------------------------------------------------------------------
    def _free(self) -> None:
        torch = _torch()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _decoder(self) -> Any:
        get = getattr(self.model, "get_decoder", None)
        decoder = get() if callable(get) else None
        return None if decoder is None or decoder is self.model else decoder

    def _hidden(self, input_ids: Any, attention_mask: Any) -> Any:
        out = self._decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _check_split_head(self, ids: tuple[int, ...]) -> bool:
        """Whether decoder + output head reproduce the model's own logits on a probe."""
        torch = _torch()
        head = self.model.get_output_embeddings()
        if self._decoder() is None or head is None:
            return False
        probe = torch.tensor([list(ids[:16])], device=self.device)
        try:
            with torch.inference_mode():
                reference = self.model(input_ids=probe, use_cache=False).logits[0].float()
                ours = self._post(head(self._hidden(probe, None)[0])).float()
        except Exception:
            return False
        if reference.shape != ours.shape:
            return False
        scale = max(1.0, float(reference.nan_to_num().abs().max()))
        return bool(torch.allclose(reference, ours, rtol=1e-3, atol=1e-3 * scale, equal_nan=True))

    def _forward(self, batch: Sequence[tuple[tuple[int, ...], int]]) -> np.ndarray:
        torch = _torch()
        lengths = np.fromiter((len(ids) for ids, _ in batch), dtype=np.int64, count=len(batch))
        starts = np.fromiter((s for _, s in batch), dtype=np.int64, count=len(batch))
        width = int(lengths.max())
        ids_np = np.zeros((len(batch), width), dtype=np.int64)
        mask_np = np.zeros((len(batch), width), dtype=np.int64)
        for b, (ids, _) in enumerate(batch):
            ids_np[b, : len(ids)] = ids
            mask_np[b, : len(ids)] = 1
        scored = lengths - starts
        row = np.repeat(np.arange(len(batch)), scored)
        # Position p predicts token p + 1: targets ids[start:], read at positions start-1 ...
        offsets = np.arange(int(scored.sum())) - np.repeat(np.cumsum(scored) - scored, scored)
        target_pos = np.repeat(starts, scored) + offsets
        targets = ids_np[row, target_pos]
        dev = self.device
        input_ids = torch.from_numpy(ids_np).to(dev)
        mask = torch.from_numpy(mask_np).to(dev)
        row_t = torch.from_numpy(row).to(dev)
        pos_t = torch.from_numpy(target_pos - 1).to(dev)
        tgt_t = torch.from_numpy(targets).to(dev)
        if self._split_head:
            states = self._hidden(input_ids, mask)[row_t, pos_t]
            del input_ids
            head: Callable[[Any], Any] = lambda h: self._post(  # noqa: E731
                self.model.get_output_embeddings()(h)
            )
        else:
            states = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            states = states[row_t, pos_t]
            head = lambda h: h  # noqa: E731
        logp = self._logprobs(states, tgt_t, head)
        if not bool(torch.isfinite(logp).all()):
            raise ModelFailure("non-finite", "the model produced NaN or infinite log-probabilities")
        sums = torch.zeros(len(batch), dtype=torch.float64, device=dev)
        sums.index_add_(0, row_t, logp.double())
        self.stats.batches += 1
        self.stats.forward_tokens += int(lengths.sum())
        self.stats.scored_tokens += int(scored.sum())
        self.stats.batch_sizes.append(len(batch))
        return sums.cpu().numpy()

    def _logprobs(self, states: Any, targets: Any, head: Callable[[Any], Any]) -> Any:
        """log p(target) per scored position, float32, in chunks bounded by head_chunk_bytes."""
        torch = _torch()
        vocab = self.model.config.get_text_config().vocab_size or 1
        chunk = max(1, self.head_chunk_bytes // (12 * vocab))
        out = torch.empty(states.shape[0], dtype=torch.float32, device=states.device)
        for lo in range(0, states.shape[0], chunk):
            logits = head(states[lo : lo + chunk]).float()
            # log_softmax + gather in one fused kernel: -cross_entropy = logit - logsumexp.
            out[lo : lo + chunk] = -torch.nn.functional.cross_entropy(
                logits, targets[lo : lo + chunk], reduction="none"
            )
        return out


def score_items(
    model: Any,
    tokenizer: Any,
    items: Sequence[Any],
    variants: Sequence[str] = VARIANTS,
    *,
    pieces: Sequence[Piece] | None = None,
    max_tokens: int | None = None,
    batch_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_piece: Callable[[ScoredVector], None] | None = None,
    scorer: Scorer | None = None,
) -> dict[Piece, ScoredVector]:
    """Score items (pairs or plain texts) for each (variant, kind) piece; no store involved.

    Every request is built (and every template checked) before the first forward pass, so a
    template failure costs no compute. `on_piece` sees each piece as soon as it is finished.
    """
    plain = is_plain(items)
    todo = list(pieces) if pieces is not None else plan_pieces(plain, variants)
    if not plain and todo and not has_chat_template(tokenizer):
        raise ModelFailure("no-chat-template", "the tokenizer has no chat template")
    limit = max_tokens if max_tokens is not None else context_length(model, tokenizer)
    requests = {
        (variant, kind): build_requests(
            tokenizer, items, kind=kind, variant=variant, plain=plain, max_tokens=limit
        )
        for variant, kind in todo
    }
    engine = scorer or Scorer(model, batch_tokens=batch_tokens)
    results: dict[Piece, ScoredVector] = {}
    for (variant, kind), reqs in requests.items():
        values = engine.score(reqs, progress)
        if not np.all(np.isfinite(values)):
            raise ModelFailure("non-finite", "the model produced NaN or infinite log-likelihoods")
        marks = [r.truncated for r in reqs]
        piece = ScoredVector(
            variant=variant,
            kind=kind,
            values=values,
            token_counts=np.asarray([r.scored for r in reqs], dtype=np.int32),
            truncated=sum(m != NOT_TRUNCATED for m in marks),
            response_truncated=sum(m == 2 for m in marks),
            template_mode=vector_mode(reqs),
        )
        results[(variant, kind)] = piece
        if on_piece is not None:
            on_piece(piece)
    return results


def score_naive(
    model: Any,
    tokenizer: Any,
    items: Sequence[Any],
    variant: str = "base",
    kind: str = CONDITIONAL,
    *,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Reference: one item per forward, full-vocabulary log_softmax in float64, float64 sums.

    Runs the model in its own dtype; pass a float64 copy for a float64 reference.
    """
    torch = _torch()
    plain = is_plain(items)
    limit = max_tokens if max_tokens is not None else context_length(model, tokenizer)
    requests = build_requests(
        tokenizer, items, kind=kind, variant=variant, plain=plain, max_tokens=limit
    )
    device = model_device(model)
    out = np.zeros(len(requests), dtype=np.float64)
    with torch.inference_mode():
        for i, r in enumerate(requests):
            if r.scored <= 0:
                continue
            ids = torch.tensor([list(r.ids)], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            positions = torch.arange(r.start - 1, len(r.ids) - 1, device=device)
            out[i] = float(logp[positions, ids[0, r.start :]].sum())
    return out

