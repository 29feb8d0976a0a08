"""One model through scoring, and the derived data refreshed after it.

Shared by `atlas sync` (in process, model by model) and the scoring fleet's workers
(`atlas.queue.tasks`), which is why it sits below both: download the safetensors and tokenizer
files, score with the scoring service (which alone records `scoring`, `scored` or `failed` with
a reason, and resumes from stored pieces), delete the weights; then bring the saved indexes and
map series of the text set up to date.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from atlas import textsets
from atlas.errors import AtlasError, ModelFailure
from atlas.hub import client, discovery
from atlas.scoring import service
from atlas.settings import Settings
from atlas.space import index, maps
from atlas.store import Store
from atlas.store.tables import HubModel, TextSet

Progress = Callable[[str], None]
# Deaths in the forward pass in a row after which a model fails `interrupted` (the scoring
# service counts them; kills while downloading or loading do not count).
MAX_ATTEMPTS = service.MAX_FORWARD_DEATHS


@dataclass(frozen=True)
class ScoreOptions:
    """How one model is scored: pieces, device(s), dtype, and whether its weights are kept."""

    variants: Sequence[str] | None = None
    device: str | None = None
    dtype: str | None = None
    keep_weights: bool = False


def resolve_textset(store: Store, name: str) -> TextSet:
    """The text set to score on; the packaged sample is imported on first use."""
    if name == textsets.SAMPLE_NAME:
        return textsets.ensure_sample(store)
    return store.textset(name)


def score_hub_model(
    store: Store,
    model: HubModel,
    textset: TextSet,
    options: ScoreOptions,
    settings: Settings,
    say: Progress,
    *,
    max_attempts: int | None = None,
) -> Any:
    """Download (safetensors and tokenizer files) and score one Hub model at its revision.

    The scoring service records `scoring` / `scored` / `failed` and resumes from stored pieces;
    Hub calls are retried once, inside the Hub client.
    """
    return service.score_model(
        store, model.repo_id, textset.name, revision=model.revision,
        variants=options.variants, device=options.device or "auto",
        dtype=options.dtype or "auto", log=say,
        weights_dir=settings.weights_dir,
        max_forward_deaths=max_attempts or service.MAX_FORWARD_DEATHS,
    )  # fmt: skip


def process_model(
    store: Store,
    model: HubModel,
    textset: TextSet,
    options: ScoreOptions,
    settings: Settings,
    say: Progress,
    *,
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[str, str | None]:
    """Download, score and record one model; returns its final (status, reason)."""
    repo = model.repo_id
    invalid = discovery.invalid_id(repo)
    if invalid is not None:  # recorded by an older atlas: never scorable
        store.set_status(repo, "skipped", discovery.INVALID_ID, invalid)
        say(f"  skipped: invalid-id ({invalid})")
        return "skipped", "invalid-id"
    if not model.revision:
        store.set_status(repo, "failed", "download-error", "the Hub gave no revision for it")
        return "failed", "download-error"
    started = time.monotonic()
    try:
        with client.quiet_bars():  # loading through transformers turns the Hub's bars back on
            score_hub_model(store, model, textset, options, settings, say,
                            max_attempts=max_attempts)  # fmt: skip
    except ModelFailure as failure:  # recorded by the scoring service
        say(f"  failed: {failure.reason} ({client.short(failure, 160)})")
        return "failed", failure.reason
    except AtlasError:
        raise
    except Exception as exc:  # recorded by the scoring service as `error`; the run goes on
        say(f"  failed: error ({type(exc).__name__}: {client.short(exc, 160)})")
        return "failed", "error"
    finally:
        if not options.keep_weights:
            client.remove_weights(settings.weights_dir, repo)
    say(f"  scored in {time.monotonic() - started:.1f} s")
    return "scored", None


def refresh_derived(store: Store, settings: Settings, textset: TextSet, say: Progress) -> list[str]:
    """Refresh the text set's saved nearest-neighbour indexes and the stored map series."""
    refreshed: list[str] = []
    try:
        if index.saved_keys(settings, textset):
            for key, done in index.refresh_indexes(store, settings, textset).items():
                refreshed.append(f"index {key} ({done.action})")
    except Exception as exc:  # derived data can be rebuilt; never lose a sync over it
        say(f"refreshing the index failed: {client.short(exc)}")
    try:
        for done in maps.refresh_all(store, settings, progress=say):
            refreshed.append(f"map {done.snapshot.id} ({done.mode})")
    except Exception as exc:
        say(f"refreshing the maps failed: {client.short(exc)}")
    for line in refreshed:
        say(f"refreshed {line}")
    return refreshed
