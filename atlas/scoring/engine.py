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
from atlas.scoring.prefixes import Tree, build_trees, pack_rows
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
    shared: str = ""
    unshared_tokens: int = 0
    padded_tokens: int = 0
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
        share_prefixes: bool = True,
        pack: bool = False,
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
        # Requests of one group (an item's pieces) run as one prefix tree (atlas.prefixes);
        # `pack` puts several trees in one row (a document mask) instead of one tree per row.
        self.share_prefixes = share_prefixes
        self.pack = pack
        self._trees_ok: bool | None = None

    # --- public ---------------------------------------------------------------------------
    def score(
        self,
        requests: Sequence[Request],
        progress: Callable[[int], None] | None = None,
        groups: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Per-request sums of log p(target | context) over scored tokens, float64.

        Requests with the same `groups` key (one item's prompt variants) share the forward pass
        of their longest common token prefixes, where the model allows it (see `tree_support`).
        """
        unique: dict[tuple[tuple[int, ...], int], int] = {}
        key_group: list[int] = []
        owners: list[int] = []
        for i, r in enumerate(requests):
            if r.start >= len(r.ids):  # nothing to score (a one-token plain text): 0 nats
                owners.append(-1)
                continue
            if r.start < 1:
                raise UsageError(f"a request's first token cannot be scored ({len(r.ids)} ids)")
            key = (r.ids, r.start)
            if key not in unique:
                unique[key] = len(unique)
                key_group.append(i if groups is None else int(groups[i]))
            owners.append(unique[key])
        owner = np.asarray(owners, dtype=np.int64)
        keys = list(unique)
        weight = np.bincount(owner[owner >= 0], minlength=len(keys))
        if progress is not None and (owner < 0).any():
            progress(int((owner < 0).sum()))
        if keys and self._split_head is None:
            self._split_head = self._check_split_head(min(keys, key=lambda k: len(k[0]))[0])
            self.stats.head = "scored-positions" if self._split_head else "full-logits"
        self.stats.unshared_tokens += sum(len(ids) for ids, _ in keys)
        shared = groups is not None and self.share_prefixes and bool(keys)
        sums = None
        if shared and self._tree_check(keys, key_group):
            try:
                sums = self._score_trees(keys, key_group, weight, progress)
            except ModelFailure as exc:
                if exc.reason != "out-of-memory":
                    raise
                # One tree does not fit where its requests alone may: score them alone.
                self._trees_ok, self.stats.shared = False, "off (out-of-memory)"
        if sums is None:
            sums = self._score_rows(keys, weight, progress)
        out = np.zeros(len(owners), dtype=np.float64)
        out[owner >= 0] = sums[owner[owner >= 0]]
        return out

    def tree_support(self) -> str:
        """Why prefix trees cannot run on this model, or "" when nothing rules them out."""
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        window = getattr(text, "sliding_window", None)
        if window and getattr(text, "use_sliding_window", True):
            return "sliding-window attention"
        layers = [str(t) for t in getattr(text, "layer_types", None) or ()]
        if any("sliding" in t or "linear" in t for t in layers):
            return "sliding-window or linear-attention layers"
        if getattr(text, "attention_chunk_size", None):
            return "chunked attention"
        return ""

    # --- internals ------------------------------------------------------------------------
    def _batches(
        self,
        lengths: Sequence[int],
        run: Callable[[list[int]], None],
        weight: Callable[[list[int]], int],
        progress: Callable[[int], None] | None,
    ) -> None:
        """Run units longest first in token-budget batches; halve the budget on out-of-memory."""
        torch = _torch()
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        pos = 0
        with torch.inference_mode():
            while pos < len(order):
                longest = lengths[order[pos]]
                rows = max(1, min(self.max_rows, self.batch_tokens // longest, len(order) - pos))
                batch = order[pos : pos + rows]
                try:
                    run(batch)
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
                self.stats.padded_tokens += longest * len(batch)
                if progress is not None:
                    progress(weight(batch))

    def _score_rows(
        self,
        keys: list[tuple[tuple[int, ...], int]],
        weight: np.ndarray,
        progress: Callable[[int], None] | None,
    ) -> np.ndarray:
        """Each request in its own right-padded row."""
        sums = np.zeros(len(keys), dtype=np.float64)
        # Ties broken by ids, so the batches do not depend on the order requests came in.
        lengths = [len(ids) for ids, _ in keys]
        order = sorted(range(len(keys)), key=lambda i: (-lengths[i], keys[i]))
        rank = [lengths[i] for i in order]

        def run(batch: list[int]) -> None:
            chosen = [order[b] for b in batch]
            sums[chosen] = self._forward([keys[i] for i in chosen])

        self._batches(rank, run, lambda b: int(weight[[order[i] for i in b]].sum()), progress)
        return sums

    def _score_trees(
        self,
        keys: list[tuple[tuple[int, ...], int]],
        key_group: list[int],
        weight: np.ndarray,
        progress: Callable[[int], None] | None,
    ) -> np.ndarray:
        """Each group's requests as one prefix tree; one tree per row, or packed rows."""
        sums = np.zeros(len(keys), dtype=np.float64)
        trees = build_trees(keys, key_group, self.batch_tokens)
        # A canonical order, so the batches do not depend on the order items came in.
        trees.sort(key=lambda t: (-len(t), t.ids))
        sizes = [len(t) for t in trees]
        if self.pack:
            rows = pack_rows(sizes, max(self.batch_tokens, max(sizes)))
        else:
            rows = [[i] for i in range(len(trees))]
        lengths = [sum(sizes[i] for i in row) for row in rows]

        def run(batch: list[int]) -> None:
            members, values = self._forward_trees([[trees[i] for i in rows[b]] for b in batch])
            sums[members] = values

        def done(batch: list[int]) -> int:
            return int(sum(weight[m] for b in batch for i in rows[b] for m in trees[i].members))

        self._batches(lengths, run, done, progress)
        return sums

    def _tree_check(
        self, keys: list[tuple[tuple[int, ...], int]], key_group: list[int]
    ) -> bool:
        """Whether prefix trees reproduce separate rows on this model (checked once, on a probe)."""
        if self._trees_ok is None:
            reason = self.tree_support()
            if not reason:
                reason = self._probe_trees(keys, key_group)
            self._trees_ok = not reason
            self.stats.shared = "prefix-trees" if not reason else f"off ({reason})"
        return self._trees_ok

    def _probe_trees(
        self, keys: list[tuple[tuple[int, ...], int]], key_group: list[int]
    ) -> str:
        """"" when a tree of two requests of one group gives their separate log-probabilities."""
        torch = _torch()
        members: dict[int, list[int]] = {}
        for i, g in enumerate(key_group):
            members.setdefault(g, []).append(i)
        group = next((m for m in members.values() if len(m) > 1), None)
        if group is None:
            return ""  # nothing is shared anyway
        probe = [(keys[i][0][:48], 1) for i in sorted(group, key=lambda i: keys[i])[:2]]
        tree = Tree()
        for n, (ids, start) in enumerate(probe):
            tree.add(n, ids, start)
        if len(tree) == sum(len(ids) for ids, _ in probe):
            probe = [(probe[0][0], 1), (probe[0][0][: max(2, len(probe[0][0]) // 2)], 1)]
            tree = Tree()
            for n, (ids, start) in enumerate(probe):
                tree.add(n, ids, start)
        try:
            with torch.inference_mode():
                alone = self._forward(probe, per_token=True)
                together = self._forward_trees([[tree]], per_token=True)
        except Exception as exc:
            return f"the model rejects a tree mask: {type(exc).__name__}"
        half = next(self.model.parameters()).dtype in (torch.float16, torch.bfloat16)
        tol = 5e-2 if half else 1e-3
        if alone.shape != together.shape or not torch.allclose(alone, together, atol=tol, rtol=0):
            return "a tree mask changes the model's log-probabilities"
        return ""

    def _free(self) -> None:
        torch = _torch()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _decoder(self) -> Any:
        get = getattr(self.model, "get_decoder", None)
        decoder = get() if callable(get) else None
        return None if decoder is None or decoder is self.model else decoder

    def _hidden(self, input_ids: Any, attention_mask: Any, position_ids: Any = None) -> Any:
        extra = {} if position_ids is None else {"position_ids": position_ids}
        out = self._decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra
        )
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

    def _forward(
        self, batch: Sequence[tuple[tuple[int, ...], int]], *, per_token: bool = False
    ) -> Any:
        """Per-request sums for right-padded rows (or, for a probe, every token's log p)."""
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
        logp = self._run(ids_np, mask_np, None, row, target_pos - 1, targets)
        if per_token:
            return logp
        self.stats.forward_tokens += int(lengths.sum())
        return self._sums(logp, row, len(batch))

    def _forward_trees(self, batch: Sequence[Sequence[Tree]], *, per_token: bool = False) -> Any:
        """(request indices, their sums) for rows of prefix trees, each a block of the row."""
        torch = _torch()
        sizes = [sum(len(t) for t in row) for row in batch]
        width = max(sizes)
        ids_np = np.zeros((len(batch), width), dtype=np.int64)
        pos_np = np.zeros((len(batch), width), dtype=np.int64)
        mask_np = np.zeros((len(batch), width, width), dtype=bool)
        mask_np[:, np.arange(width), np.arange(width)] = True  # padding sees itself only
        members: list[int] = []
        rows, where, targets, slots = [], [], [], []
        for b, row in enumerate(batch):
            at = 0
            for tree in row:
                n = len(tree)
                ids_np[b, at : at + n] = tree.ids
                pos_np[b, at : at + n] = tree.positions
                mask_np[b, at : at + n, at : at + n] = tree.mask()
                slot, pos, tgt = tree.scored()
                slots.append(slot + len(members))
                rows.append(np.full(len(pos), b, dtype=np.int64))
                where.append(pos + at)
                targets.append(tgt)
                members.extend(tree.members)
                at += n
        mask = torch.from_numpy(mask_np[:, None])
        if getattr(self.model.config, "_attn_implementation", "sdpa") == "eager":
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
        slot = np.concatenate(slots)
        logp = self._run(
            ids_np, mask, pos_np, np.concatenate(rows), np.concatenate(where),
            np.concatenate(targets),
        )  # fmt: skip
        if per_token:
            return logp
        self.stats.forward_tokens += int(sum(sizes))
        return np.asarray(members, dtype=np.int64), self._sums(logp, slot, len(members))

    def _run(
        self,
        ids_np: np.ndarray,
        mask: Any,
        positions: np.ndarray | None,
        row: np.ndarray,
        where: np.ndarray,
        targets: np.ndarray,
    ) -> Any:
        """log p(targets) read at (row, where) of one forward pass, float32; NaN fails."""
        torch = _torch()
        dev = self.device
        input_ids = torch.from_numpy(ids_np).to(dev)
        mask_t = (torch.from_numpy(mask) if isinstance(mask, np.ndarray) else mask).to(dev)
        pos_ids = None if positions is None else torch.from_numpy(positions).to(dev)
        row_t = torch.from_numpy(row).to(dev)
        pos_t = torch.from_numpy(where).to(dev)
        tgt_t = torch.from_numpy(targets).to(dev)
        if self._split_head:
            hidden = self._hidden(input_ids, mask_t, pos_ids)
            # A model split over devices returns its last layer's states on the last device.
            states = hidden[row_t.to(hidden.device), pos_t.to(hidden.device)]
            del input_ids, hidden
            head: Callable[[Any], Any] = lambda h: self._post(  # noqa: E731
                self.model.get_output_embeddings()(h)
            )
        else:
            extra = {} if pos_ids is None else {"position_ids": pos_ids}
            states = self.model(
                input_ids=input_ids, attention_mask=mask_t, use_cache=False, **extra
            ).logits
            states = states[row_t.to(states.device), pos_t.to(states.device)]
            head = lambda h: h  # noqa: E731
        logp = self._logprobs(states, tgt_t, head)
        if not bool(torch.isfinite(logp).all()):
            raise ModelFailure("non-finite", "the model produced NaN or infinite log-probabilities")
        return logp

    def _sums(self, logp: Any, owner: np.ndarray, count: int) -> np.ndarray:
        """float64 sums of log p per owner; counts the batch in the stats."""
        torch = _torch()
        owner_t = torch.from_numpy(owner).to(logp.device)
        sums = torch.zeros(count, dtype=torch.float64, device=logp.device)
        sums.index_add_(0, owner_t, logp.double())
        self.stats.batches += 1
        self.stats.scored_tokens += len(owner)
        self.stats.batch_sizes.append(count)
        return sums.cpu().numpy()

    def _logprobs(self, states: Any, targets: Any, head: Callable[[Any], Any]) -> Any:
        """log p(target) per scored position, in chunks bounded by head_chunk_bytes.

        The normaliser runs in float64: in float32, the log-sum-exp over a real model's 49k
        vocabulary is biased by about 1.5e-5 nats per token (6e-4 over a 43-token answer of
        SmolLM2-135M), more than the 1e-4 per pair atlas promises against a float64 reference.
        """
        torch = _torch()
        vocab = self.model.config.get_text_config().vocab_size or 1
        chunk = max(1, self.head_chunk_bytes // (12 * vocab))
        out = torch.empty(states.shape[0], dtype=torch.float64, device=states.device)
        for lo in range(0, states.shape[0], chunk):
            logits = head(states[lo : lo + chunk]).double()
            # log_softmax + gather in one fused kernel: -cross_entropy = logit - logsumexp.
            picked = -torch.nn.functional.cross_entropy(
                logits, targets[lo : lo + chunk].to(logits.device), reduction="none"
            )
            out[lo : lo + chunk] = picked.to(out.device)
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
    groups: Sequence[int] | None = None,
) -> dict[Piece, ScoredVector]:
    """Score items (pairs or plain texts) for each (variant, kind) piece; no store involved.

    Every request is built (and every template checked) before the first forward pass, so a
    template failure costs no compute. `on_piece` sees each piece when it is finished (all at
    once when the pieces share prefixes). Items with the same `groups` key (several responses
    to one prompt) share their common prefix's forward pass, as one item's pieces always do.
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
    # The pieces of one item share their chat header and prompt: score them together, each
    # item's requests one group (one prefix tree); pieces are then finished all at once.
    if groups is not None and len(groups) != len(items):
        raise UsageError(f"{len(groups)} group keys for {len(items)} items")
    keys = list(range(len(items))) if groups is None else [int(g) for g in groups]
    together = engine.share_prefixes and not plain and (len(requests) > 1 or groups is not None)
    if together:
        flat = [r for reqs in requests.values() for r in reqs]
        owners = [keys[i] for reqs in requests.values() for i in range(len(reqs))]
        allvalues = engine.score(flat, progress, groups=owners)
    results: dict[Piece, ScoredVector] = {}
    for p, ((variant, kind), reqs) in enumerate(requests.items()):
        if together:
            values = allvalues[p * len(items) : (p + 1) * len(items)]
        else:
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

