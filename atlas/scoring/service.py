"""Scoring into the store: status bookkeeping, provenance, resume, and failure reasons.

This service is the one writer of a model's scoring status. While a model is `scoring`, its
`reason` names the phase (`download`, `load`, `forward`), so the next run knows where a killed
run died: deaths while downloading or loading (a kill, a reboot) never count against the model;
deaths in the forward pass count (`attempts`) until a piece is stored, and after
MAX_FORWARD_DEATHS in a row the model fails `interrupted` (the out-of-memory killer case). A
model becomes `scored` only when every requested piece is stored, checked in the same
transaction that sets the status; vectors of a model that is not `scored` are never read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atlas import textsets
from atlas.errors import ModelFailure, UsageError
from atlas.scoring import loading
from atlas.scoring.engine import SCORER_VERSION, ScoredVector, Scorer, plan_pieces, score_items
from atlas.scoring.templates import (
    FINISHED_TURN,
    GENERATION_PROMPT,
    parse_variants,
    template_info,
)
from atlas.store import Store, queries
from atlas.store.tables import VARIANTS, Vector

Piece = tuple[str, str]
MAX_DETAIL = 2000  # characters of a failure's detail kept in the store
# Called as progress(advance, total): `advance` more items of `total` are scored.
Progress = Callable[[int, int], None]
# A model whose scoring process died this many times in a row in the forward pass, without
# storing a piece in between, fails `interrupted` (it kills the process: out of memory).
MAX_FORWARD_DEATHS = 3
PHASES = ("download", "load", "forward")


@dataclass
class ScoreSummary:
    """What one scoring run did for one model and text set."""

    model: str
    revision: str
    source: str
    textset: str
    textset_sha256: str
    items: int
    computed: list[Piece] = field(default_factory=list)
    reused: list[Piece] = field(default_factory=list)
    scored_tokens: int = 0
    forward_tokens: int = 0
    truncated: int = 0
    response_truncated: int = 0
    device: str | None = None
    dtype: str | None = None
    seconds: float = 0.0
    status: str = "scored"

    @property
    def tokens_per_second(self) -> float:
        """Tokens through the model per second of scoring (0 when nothing was computed)."""
        return self.forward_tokens / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """A one-line human summary."""
        names = ", ".join(f"{v}/{k}" for v, k in self.computed) or "nothing new"
        text = (
            f"scored {self.model}@{self.revision[:10]} on {self.textset} "
            f"({self.items} items): computed {names}"
        )
        if self.reused:
            text += f"; reused {len(self.reused)} stored piece(s)"
        if self.computed:
            text += (
                f"; {self.forward_tokens:,} tokens in {self.seconds:.1f} s "
                f"({self.tokens_per_second:,.0f} tok/s, {self.device} {self.dtype})"
            )
        if self.truncated:
            text += f"; {self.truncated} item(s) truncated"
            if self.response_truncated:
                text += f" ({self.response_truncated} with the response cut)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain data (for --json)."""
        data = asdict(self)
        data["computed"] = [list(p) for p in self.computed]
        data["reused"] = [list(p) for p in self.reused]
        data["tokens_per_second"] = round(self.tokens_per_second, 1)
        return data


def stored_pieces(store: Store, *, model_id: int, revision: str, textset: Any) -> set[Piece]:
    """(variant, kind) pieces already stored for this model revision and text-set content."""
    return {
        (v.variant, v.kind)
        for v in store.vector_pieces(textset_id=textset.id, model_id=model_id, revision=revision)
        if v.textset_sha256 == textset.sha256 and v.n == textset.size
    }


def score_model(
    store: Store,
    model_ref: str,
    textset_name: str = textsets.SAMPLE_NAME,
    *,
    variants: Sequence[str] | str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_tokens: int | None = None,
    name: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    batch_tokens: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    weights_dir: Path | None = None,
    max_forward_deaths: int = MAX_FORWARD_DEATHS,
) -> ScoreSummary:
    """Score a local folder or Hub model on a stored text set; store each piece as it finishes.

    Resumes: pieces stored for this model revision and text set are not recomputed (unless
    `force`). On a ModelFailure the model is marked failed with the reason, the pieces written
    by this run are removed, and the failure is raised.
    """
    say = log or (lambda _msg: None)
    loading.check_options(device, dtype)
    if max_tokens is not None and max_tokens < 2:
        raise UsageError("`max_tokens` must be at least 2")
    if batch_tokens is not None and batch_tokens < 1:
        raise UsageError("`batch_tokens` must be positive")
    if name is not None and not 0 < len(name) <= loading.MAX_NAME:
        raise UsageError(f"`name` must be 1-{loading.MAX_NAME} characters")
    chosen = parse_variants(variants) if variants is not None else VARIANTS
    if textset_name == textsets.SAMPLE_NAME:
        textsets.ensure_sample(store)
    textset, items = textsets.load_items(store, textset_name)
    plain = textset.kind == "plain"
    if plain and chosen != ("base",) and variants is not None:
        raise UsageError(f"text set {textset_name!r} is plain: it has only the base variant")

    planned = plan_pieces(plain, chosen)

    try:
        ref = loading.resolve(model_ref, name=name, revision=revision, log=say)
    except ModelFailure as failure:
        record_failure(store, model_ref, failure, source="hub")
        raise
    row = store.model(ref.repo_id)
    done: set[Piece] = set()
    if row is not None and not force:
        done = stored_pieces(store, model_id=row.id, revision=ref.revision, textset=textset)
    todo = [p for p in planned if p not in done]
    summary = ScoreSummary(
        model=ref.repo_id, revision=ref.revision, source=ref.source, textset=textset.name,
        textset_sha256=textset.sha256, items=textset.size,
        reused=[p for p in planned if p in done],
    )  # fmt: skip
    if not todo:
        if row is not None and row.status != "scored" and row.revision == ref.revision:
            _finish(store, ref, textset, planned)
        say(f"{ref.repo_id}: every requested piece is already stored")
        return summary

    previous = _snapshot(row)
    deaths = forward_deaths(row)
    if deaths >= max_forward_deaths:
        failure = ModelFailure(
            "interrupted",
            f"the scoring process died {deaths} times in a row in the forward pass without "
            "storing a piece (out of memory?); `atlas sync --retry-failed` tries it again",
        )
        record_failure(store, ref.repo_id, failure, source=ref.source)
        raise failure
    store.upsert_model(
        ref.repo_id, status="scoring", reason="download", detail="downloading",
        revision=ref.revision, source=ref.source, attempts=deaths,
    )  # fmt: skip
    written: list[int] = []
    try:
        _run(store, ref, textset, items, todo, summary, written,
             device=device, dtype=dtype, max_tokens=max_tokens,
             trust_remote_code=trust_remote_code, batch_tokens=batch_tokens,
             progress=progress, say=say, weights_dir=weights_dir)  # fmt: skip
        _finish(store, ref, textset, planned)
    except ModelFailure as failure:
        queries.delete_vectors(store, written)
        record_failure(store, ref.repo_id, failure, source=ref.source)
        raise
    except UsageError:
        # A usage error is the caller's, never the model's: nothing about the model changes.
        queries.delete_vectors(store, written)
        store.upsert_model(ref.repo_id, **previous)
        raise
    except (KeyboardInterrupt, SystemExit):
        # Finished pieces stay (invisible until the model is scored): the next run resumes.
        store.upsert_model(ref.repo_id, **previous)
        raise
    except Exception as exc:
        queries.delete_vectors(store, written)
        detail = f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]
        store.set_status(ref.repo_id, "failed", "error", detail)
        raise
    return summary


def _snapshot(row: Any) -> dict[str, Any]:
    """The status fields to restore when a run is cut short by the user or a usage error."""
    if row is None:
        return {"status": "discovered", "reason": None, "detail": None, "attempts": 0}
    if row.status == "scoring":  # left by a killed run: keep it queued for the next one
        return {"status": "queued", "reason": None, "detail": None, "attempts": row.attempts}
    return {"status": row.status, "reason": row.reason, "detail": row.detail,
            "attempts": row.attempts}  # fmt: skip


def forward_deaths(row: Any) -> int:
    """How many times in a row scoring died in the forward pass, this death included.

    A row left `scoring` by a killed run says where it died: in `forward`, the death counts;
    while downloading or loading it does not (a kill is not the model's fault).
    """
    if row is None or row.status != "scoring":
        return 0
    return int(row.attempts or 0) + (1 if row.reason == "forward" else 0)


def _finish(store: Store, ref: loading.ModelRef, textset: Any, planned: Sequence[Piece]) -> None:
    """Mark the model scored, only if every requested piece is stored (one transaction)."""
    missing = store.finish_scoring(
        ref.repo_id, revision=ref.revision, textset=textset, pieces=list(planned)
    )
    if missing:
        names = ", ".join(f"{v}/{k}" for v, k in missing)
        raise ModelFailure("incomplete", f"pieces missing after scoring: {names}")


def _phase(store: Store, repo_id: str, phase: str, detail: str) -> None:
    """Record what a scoring run is doing, so that a killed run's successor knows."""
    store.upsert_model(repo_id, reason=phase, detail=detail)


def record_failure(store: Store, repo_id: str, failure: ModelFailure, *, source: str) -> None:
    """Record a model's failure with its reason (the row is created if need be)."""
    row = store.model(repo_id)
    fields: dict[str, Any] = dict(
        status="failed", reason=failure.reason, detail=failure.detail[:MAX_DETAIL], attempts=0
    )
    if row is None:
        fields["source"] = source
    store.upsert_model(repo_id, **fields)



def _run(
    store: Store,
    ref: loading.ModelRef,
    textset: Any,
    items: list[Any],
    todo: list[Piece],
    summary: ScoreSummary,
    written: list[int],
    *,
    device: str,
    dtype: str,
    max_tokens: int | None,
    trust_remote_code: bool,
    batch_tokens: int | None,
    progress: Progress | None,
    say: Callable[[str], None],
    weights_dir: Path | None,
) -> None:
    if ref.source == "hub":
        say(f"downloading {ref.repo_id}@{ref.revision[:10]} (safetensors and tokenizer files)")
    folder = loading.fetch(ref, weights_dir, say)
    say(f"loading {ref.repo_id}")
    _phase(store, ref.repo_id, "load", "loading")
    loaded = loading.load(folder, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    fields: dict[str, Any] = dict(
        model_type=loaded.model_type, architecture=loaded.architecture,
        num_parameters=loaded.num_parameters, has_chat_template=loaded.has_chat_template,
    )  # fmt: skip
    bases = loading.card_base_models(folder) if ref.source == "local" else []
    if bases:  # a local folder's card names its lineage, as discovery reads it from the Hub
        fields["base_models"] = bases
    store.upsert_model(ref.repo_id, **fields)
    if textset.kind == "pairs" and not loaded.has_chat_template:
        raise ModelFailure("no-chat-template", "the tokenizer has no chat template")
    model_id = store.model(ref.repo_id).id  # type: ignore[union-attr]
    summary.device, summary.dtype = loaded.device, loaded.dtype
    engine = Scorer(loaded.model, batch_tokens=batch_tokens)
    template = template_info(loaded.tokenizer) if textset.kind == "pairs" else None

    def keep(piece: ScoredVector) -> None:
        vector = Vector(
            model_id=model_id, revision=ref.revision, textset_id=textset.id,
            textset_sha256=textset.sha256, variant=piece.variant, kind=piece.kind,
            n=len(piece.values), values=piece.values.astype("<f4").tobytes(),
            token_counts=piece.token_counts.astype("<i4").tobytes(),
            truncated=piece.truncated, dtype=loaded.dtype, device=loaded.device[:32],
            scorer_version=SCORER_VERSION, template_mode=piece.template_mode,
            template_sha256=template.sha256 if template else None,
            template_clock=template.clock if template else None,
        )  # fmt: skip
        store.put_vectors([vector], progress_of=model_id)
        written.append(vector.id)  # type: ignore[arg-type]
        summary.computed.append((piece.variant, piece.kind))
        summary.scored_tokens += piece.tokens
        summary.truncated = max(summary.truncated, piece.truncated)
        summary.response_truncated = max(summary.response_truncated, piece.response_truncated)

    total = len(items) * len(todo)
    tick = None if progress is None else (lambda n: progress(n, total))
    _phase(store, ref.repo_id, "forward", f"scoring {len(todo)} piece(s)")
    started = time.perf_counter()
    score_items(
        loaded.model, loaded.tokenizer, items, pieces=todo, max_tokens=max_tokens,
        progress=tick, on_piece=keep, scorer=engine,
    )  # fmt: skip
    summary.seconds = time.perf_counter() - started
    summary.forward_tokens = engine.stats.forward_tokens


def template_provenance(store: Store) -> dict[int, dict[str, str | None]]:
    """Per model id, how its vectors at its current revision applied the chat template.

    `template_mode` is finished-turn when any of those vectors is, generation-prompt when all
    recorded ones are, None when none is recorded (plain texts, or an older scorer).
    """
    out: dict[int, dict[str, str | None]] = {}
    for model_id, rows in queries.template_provenance(store).items():
        modes = {mode for mode, _, _ in rows if mode}
        mode = FINISHED_TURN if FINISHED_TURN in modes else GENERATION_PROMPT if modes else None
        out[model_id] = {
            "template_mode": mode,
            "template_sha256": next((sha for _, sha, _ in rows if sha), None),
            "template_clock": next((clock for _, _, clock in rows if clock), None),
        }
    return out
