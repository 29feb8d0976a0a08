"""Bring vectors made by an older scorer up to date: rescore where the numbers change.

Scorer 2 (see `atlas.templates`) changes a stored number only where the chat template's
context is not the rendered generation prompt (`finished-turn`: reasoning templates,
separators) or where the template reads the date (it now renders with a pinned clock). Every
other older vector already holds exactly what scorer 2 computes: its provenance is stamped with
the new scorer version and template fields, and nothing is recomputed. Rescored pieces of a
model revision replace the old ones in one transaction; a model that cannot be rescored keeps
its old vectors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from atlas import textsets as textset_io
from atlas.errors import ModelFailure
from atlas.hub.client import remove_weights
from atlas.scoring import loading
from atlas.scoring.engine import SCORER_VERSION, score_items
from atlas.scoring.templates import (
    GENERATION_PROMPT,
    TemplateInfo,
    build_requests,
    template_info,
    vector_mode,
)
from atlas.settings import Settings
from atlas.store import Store, queries
from atlas.store.tables import HubModel, TextSet, Vector

Say = Callable[[str], None]
# How scorer 1 worded its template-mismatch refusals (think-opening templates, mostly): those
# models are worth another try under the finished-turn definition.
SCORER1_MISMATCH = "the rendered conversation does not start with the rendered generation prompt"


@dataclass
class RescoreSummary:
    """What `rescore_outdated` did, per model."""

    rescored: dict[str, list[str]] = field(default_factory=dict)
    restamped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rescored": {m: list(p) for m, p in self.rescored.items()},
            "restamped": dict(self.restamped),
            "skipped": dict(self.skipped),
            "failed": dict(self.failed),
            "stopped": self.stopped,
        }

    def message(self) -> str:
        """One line for people."""
        pieces = sum(len(p) for p in self.rescored.values())
        text = (
            f"rescored {pieces} piece(s) of {len(self.rescored)} model(s); "
            f"{sum(self.restamped.values())} piece(s) unchanged, provenance updated"
        )
        if self.skipped:
            text += f"; skipped {len(self.skipped)}"
        if self.failed:
            text += f"; failed {len(self.failed)} (old vectors kept)"
        return text


def scorer_generation(version: str | None) -> int:
    """The number of a scorer version string (`atlas-scorer/2` -> 2; unknown -> 0)."""
    try:
        return int(str(version).rsplit("/", 1)[-1])
    except ValueError:
        return 0


def outdated_vectors(store: Store) -> dict[tuple[int, str], list[Vector]]:
    """Vector pieces of an older scorer, grouped by (model id, revision)."""
    current = scorer_generation(SCORER_VERSION)
    return queries.outdated_pieces(store, lambda version: scorer_generation(version) < current)


def _restamp(
    store: Store, vectors: list[Vector], info: TemplateInfo | None, modes: dict[int, str | None]
) -> None:
    queries.stamp_pieces(store, {
        int(vec.id): {  # type: ignore[arg-type]
            "scorer_version": SCORER_VERSION,
            "template_mode": modes.get(int(vec.id)),  # type: ignore[arg-type]
            "template_sha256": info.sha256 if info is not None else None,
            "template_clock": info.clock if info is not None else None,
        }
        for vec in vectors
    })  # fmt: skip


def rescore_outdated(
    store: Store,
    *,
    settings: Settings | None = None,
    device: str = "auto",
    dtype: str = "auto",
    keep_weights: bool = False,
    stop: threading.Event | None = None,
    progress: Say | None = None,
) -> RescoreSummary:
    """Rescore older vectors whose numbers scorer 2 changes; stamp the others.

    Hub models are downloaded at the vectors' revision (tokenizer files first: the template
    alone decides whether weights are needed). Local folders are not recorded in the store:
    their outdated vectors are reported under `skipped`.
    """
    settings = settings or Settings.from_env()
    say = progress or (lambda _msg: None)
    summary = RescoreSummary()
    textsets = {t.id: t for t in store.textsets()}
    for (model_id, revision), vectors in outdated_vectors(store).items():
        if stop is not None and stop.is_set():
            summary.stopped = True
            break
        model = queries.models_by_id(store, [model_id]).get(model_id)
        if model is None:
            continue
        plain = [v for v in vectors if textsets[v.textset_id].kind == "plain"]
        pairs = [v for v in vectors if textsets[v.textset_id].kind == "pairs"]
        if plain:
            _restamp(store, plain, None, {})
            summary.restamped[model.repo_id] = len(plain)
        if not pairs:
            continue
        if model.source != "hub":
            summary.skipped[model.repo_id] = (
                "a local folder: rescore it with `atlas score FOLDER --force`"
            )
            continue
        say(f"checking {model.repo_id}@{revision[:10]} ({len(pairs)} outdated piece(s))")
        try:
            done = _rescore_model(store, model, revision, pairs, textsets, settings,
                                  device=device, dtype=dtype, say=say)  # fmt: skip
        except ModelFailure as failure:
            summary.failed[model.repo_id] = f"{failure.reason}: {failure.detail}"
            say(f"  failed: {failure.reason} ({failure.detail}); its stored vectors are kept")
            continue
        finally:
            if not keep_weights:
                remove_weights(settings.weights_dir, model.repo_id)
        rescored, restamped = done
        if rescored:
            summary.rescored[model.repo_id] = rescored
        if restamped:
            summary.restamped[model.repo_id] = summary.restamped.get(model.repo_id, 0) + restamped
    return summary


def _rescore_model(
    store: Store,
    model: HubModel,
    revision: str,
    vectors: list[Vector],
    textsets: dict[int, TextSet],
    settings: Settings,
    *,
    device: str,
    dtype: str,
    say: Say,
) -> tuple[list[str], int]:
    """Rescore the pieces of one model revision whose numbers change; stamp the rest."""
    ref = loading.resolve(model.repo_id, revision=revision)
    metadata = replace(ref, files=tuple(f for f in ref.files if not f.endswith(".safetensors")))
    folder = loading.fetch(metadata, settings.weights_dir)
    tokenizer = _tokenizer(folder)
    info = template_info(tokenizer)
    items: dict[int, list[Any]] = {}
    modes: dict[int, str | None] = {}
    for vec in vectors:
        textset = textsets[vec.textset_id]
        if vec.textset_id not in items:
            items[vec.textset_id] = textset_io.load_items(store, textset.name)[1]
        requests = build_requests(tokenizer, items[vec.textset_id], kind=vec.kind,
                                  variant=vec.variant)  # fmt: skip
        modes[vec.id] = vector_mode(requests)  # type: ignore[index]
    todo = [v for v in vectors if info.dated or modes[v.id] != GENERATION_PROMPT]  # type: ignore[index]
    keep = [v for v in vectors if v not in todo]
    if keep:
        _restamp(store, keep, info, modes)
    if not todo:
        say(f"  {model.repo_id}: generation-prompt template without a date, numbers unchanged")
        return [], len(keep)
    why = "reads the date" if info.dated else "is scored as its finished turn"
    say(f"  {model.repo_id}: the template {why}; rescoring {len(todo)} piece(s)")
    loaded = loading.load(loading.fetch(ref, settings.weights_dir), device=device, dtype=dtype)
    fresh: list[Vector] = []
    names: list[str] = []
    for textset_id in dict.fromkeys(v.textset_id for v in todo):
        textset = textsets[textset_id]
        pieces = [(v.variant, v.kind) for v in todo if v.textset_id == textset_id]
        got = score_items(loaded.model, loaded.tokenizer, items[textset_id], pieces=pieces)
        for (variant, kind), piece in got.items():
            fresh.append(Vector(
                model_id=model.id, revision=revision, textset_id=textset.id,
                textset_sha256=textset.sha256, variant=variant, kind=kind,
                n=len(piece.values), values=piece.values.astype("<f4").tobytes(),
                token_counts=piece.token_counts.astype("<i4").tobytes(),
                truncated=piece.truncated, dtype=loaded.dtype, device=loaded.device[:32],
                scorer_version=SCORER_VERSION, template_mode=piece.template_mode,
                template_sha256=info.sha256, template_clock=info.clock,
            ))  # fmt: skip
            names.append(f"{textset.name} {variant}/{kind}")
    store.put_vectors(fresh)  # every rescored piece of this revision at once
    return names, len(keep)


def _tokenizer(folder: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise ModelFailure("load-error", f"cannot load the tokenizer: {exc}") from exc
