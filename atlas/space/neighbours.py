"""KL nearest neighbours of a model: stored, or scored on the fly and placed without storing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from atlas import textsets
from atlas.errors import AtlasError, ModelFailure, NotFound, UsageError
from atlas.scoring import loading
from atlas.scoring.engine import score_items
from atlas.scoring.service import score_model
from atlas.settings import Settings
from atlas.space import index as kl_index
from atlas.space import matrices, vectors
from atlas.store import Store, queries
from atlas.store.tables import HubModel, TextSet

MAX_K = 10_000  # neighbours one query may ask for


@dataclass
class Neighbour:
    """One neighbour: its rank, name, estimated KL(query || neighbour) and some metadata."""

    rank: int
    model: str
    kl: float  # nats per text
    kl_per_token: float | None  # nats per response token of the query model, when counted
    model_type: str | None = None
    num_parameters: int | None = None
    downloads: int | None = None
    revision: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Placed:
    """A query vector: raw log-likelihoods (N,) and its mean scored tokens per response."""

    name: str
    values: np.ndarray
    tokens: float | None = None
    revision: str | None = None


def default_textset(store: Store, variant: str = "base", kind: str = "conditional") -> TextSet:
    """The store's default text set for the key; `sample` while no text set holds any."""
    stored = ("base", "unconditional") if kind == "unconditional" else (variant, "conditional")
    try:
        return queries.default_textset(store, *stored)
    except NotFound:
        if not store.textsets():
            raise NotFound(
                "no text sets in the store", hint="import one with `atlas textset import`"
            ) from None
        return store.textset(queries.SAMPLE_NAME)


def _score_hint(model: str, textset: TextSet) -> str:
    return f"score it first: `atlas score {model} --textset {textset.name}`"


def nearest(
    store: Store,
    settings: Settings,
    model: str,
    k: int = 10,
    *,
    textset: TextSet | str | None = None,
    variant: str = "base",
    kind: str = "conditional",
    add: bool = False,
    log: Callable[[str], None] | None = None,
    score_options: dict[str, Any] | None = None,
) -> list[Neighbour]:
    """The k models nearest to `model` by estimated KL, the model itself excluded.

    `model` is a stored model, or a local folder or Hub id that is scored on the fly (stored
    only when `add`; otherwise placed with the index's clip threshold and forgotten).
    """
    if not 1 <= k <= MAX_K:
        raise UsageError(f"-k must be between 1 and {MAX_K:,}")
    if score_options:
        from atlas.scoring.loading import check_options

        check_options(score_options.get("device"), score_options.get("dtype"))
    say = log or (lambda _msg: None)
    variant, kind = matrices.check_key(variant, kind)
    ts = (
        default_textset(store, variant, kind)
        if textset is None
        else matrices.resolve_textset(store, textset)
    )
    row = store.model(model)
    mine = None
    if row is not None:
        mine = matrices.load(store, ts, variant, kind, model_ids=[row.id])  # type: ignore[list-item]
    if mine is None or not mine.models:
        if row is not None and row.status in ("skipped", "failed"):
            why = f"{row.status}" + (f": {row.reason}" if row.reason else "")
            raise NotFound(
                f"model {model!r} has no {kind} vectors for text set {ts.name!r} ({why})",
                hint=_score_hint(model, ts),
            )
        if add:
            from atlas.store.locking import store_lock

            with store_lock(store, settings=settings):  # it writes vectors: one writer
                row = _score_and_store(
                    store, settings, model, ts, variant, kind, say, score_options
                )
            mine = matrices.load(store, ts, variant, kind, model_ids=[row.id])  # type: ignore[list-item]
        else:
            placed = _score_unstored(store, settings, model, ts, variant, kind, say, score_options)
            return place(store, settings, placed, k, textset=ts, variant=variant, kind=kind)
    index, _ = kl_index.open_index(store, settings, ts, variant, kind)
    model_id = mine.model_ids[0]
    hits = index.search(index.vector(model_id), k, exclude=[model_id])
    return _neighbours(store, hits, index.dim, float(mine.tokens[0]))


def place(
    store: Store,
    settings: Settings,
    placed: Placed,
    k: int = 10,
    *,
    textset: TextSet | str,
    variant: str = "base",
    kind: str = "conditional",
) -> list[Neighbour]:
    """Neighbours of a vector that is not stored, clipped with the index's stored threshold."""
    ts = matrices.resolve_textset(store, textset)
    variant, kind = matrices.check_key(variant, kind)
    index, _ = kl_index.open_index(store, settings, ts, variant, kind)
    if placed.values.shape != (index.dim,):
        raise UsageError(f"{placed.name}: {placed.values.size} values, the text set {index.dim}")
    same = store.model(placed.name)  # the very model, already stored under this name
    exclude = []
    if same is not None and placed.revision and same.revision == placed.revision:
        exclude = [int(same.id)]  # type: ignore[arg-type]
    # A resampled set's clip and weights, as its stored rows have them.
    values, _ = matrices.prepare(store, ts, placed.values, variant, kind)
    hits = index.search(index.centre(values), k, exclude=exclude)
    return _neighbours(store, hits, index.dim, placed.tokens)


def _neighbours(
    store: Store, hits: list[tuple[int, float]], n: int, tokens: float | None
) -> list[Neighbour]:
    rows = queries.models_by_id(store, [i for i, _ in hits])
    out = []
    for rank, (model_id, sq) in enumerate(hits, start=1):
        kl = sq / (2.0 * n)
        per_token = (
            float(vectors.kl_per_token(kl, tokens)) if tokens and np.isfinite(tokens) else None
        )
        m = rows[model_id]
        out.append(Neighbour(rank, m.repo_id, kl, per_token, m.model_type, m.num_parameters,
                             m.downloads, m.revision))  # fmt: skip
    return out


def _pieces(ts: TextSet, variant: str, kind: str) -> list[tuple[str, str]]:
    if kind == "conditional":
        return [(variant, "conditional")]
    if kind == "unconditional":
        return [("base", "unconditional")]
    return [(variant, "conditional"), ("base", "unconditional")]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _not_scorable(model: str, ts: TextSet, exc: AtlasError) -> NotFound:
    detail = exc.detail if isinstance(exc, ModelFailure) else str(exc)
    return NotFound(
        f"model {model!r} is not in the store and could not be scored here: {detail}",
        hint=_score_hint(model, ts),
    )


def _score_unstored(
    store: Store,
    settings: Settings,
    model: str,
    ts: TextSet,
    variant: str,
    kind: str,
    say: Callable[[str], None],
    options: dict[str, Any] | None,
) -> Placed:
    """Score a folder or Hub model on the text set with the store-free scorer API."""

    opts = dict(options or {})
    if ts.kind == "plain" and kind != "unconditional":
        raise UsageError(f"text set {ts.name!r} is plain: use `kind` unconditional")
    try:
        ref = loading.resolve(model, revision=opts.pop("revision", None))
    except (ModelFailure, UsageError) as exc:
        raise _not_scorable(model, ts, exc) from exc
    except Exception as exc:  # network errors the loader does not wrap (httpx)
        raise _not_scorable(model, ts, ModelFailure("download-error", _first_line(exc))) from exc
    _, items = textsets.load_items(store, ts.name)
    say(f"{model} is not in the store: scoring it on {ts.name} ({len(items)} items), not stored")
    trust = bool(opts.pop("trust_remote_code", False))
    folder = loading.fetch(ref, settings.weights_dir)
    loaded = loading.load(folder, device=opts.pop("device", "auto"),
                          dtype=opts.pop("dtype", "auto"), trust_remote_code=trust)  # fmt: skip
    scored = score_items(loaded.model, loaded.tokenizer, items, pieces=_pieces(ts, variant, kind),
                         **opts)  # fmt: skip
    if kind == "pmi":
        cond, uncond = scored[(variant, "conditional")], scored[("base", "unconditional")]
        values, counts = vectors.pmi(cond.values, uncond.values), cond.token_counts
    else:
        piece = next(iter(scored.values()))
        values, counts = piece.values, piece.token_counts
    return Placed(ref.repo_id, np.asarray(values, dtype=np.float64), vectors.mean_tokens(counts),
                  ref.revision)  # fmt: skip


def _score_and_store(
    store: Store,
    settings: Settings,
    model: str,
    ts: TextSet,
    variant: str,
    kind: str,
    say: Callable[[str], None],
    options: dict[str, Any] | None,
) -> HubModel:
    """Score a model into the store (`--add`), then return its row."""

    opts = dict(options or {})
    variants = [variant] if kind != "unconditional" else ["base"]
    try:
        summary = score_model(store, model, ts.name, variants=variants, log=say,
                              weights_dir=settings.weights_dir, **opts)  # fmt: skip
    except UsageError as exc:
        raise _not_scorable(model, ts, exc) from exc
    say(summary.line())
    row = store.model(summary.model)
    if row is None:  # pragma: no cover - score_model stores the row
        raise NotFound(f"model {model!r} was scored but is not in the store")
    return row
