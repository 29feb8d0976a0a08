"""The library API: everything a command does, a notebook can do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlas import textsets
from atlas.errors import UsageError
from atlas.settings import Settings, redact_url
from atlas.store import Store
from atlas.store.tables import MODEL_STATUSES, HubModel, MapSnapshot, TextSet
from atlas.textsets import ImportResult

if TYPE_CHECKING:
    from atlas.analyses.kl_validation import ValidationResult
    from atlas.analyses.lineage import LineageResult
    from atlas.analyses.pmi import PMIResult
    from atlas.analyses.predict import PredictResult
    from atlas.analyses.shift import ShiftResult
    from atlas.scoring.service import ScoreSummary
    from atlas.space.neighbours import Neighbour


class Atlas:
    """Entry point to a store: `Atlas()` uses ATLAS_HOME / ATLAS_DATABASE_URL."""

    def __init__(
        self, database_url: str | None = None, *, home: Path | None = None, migrate: bool = True
    ) -> None:
        self.settings = Settings.from_env(database_url=database_url, home=home)
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.settings.url, migrate=migrate)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- text sets ----------------------------------------------------------------------
    def import_textset(self, path: Path | str, name: str | None = None) -> ImportResult:
        """Import a JSONL/CSV/Parquet file as a text set (identical re-import is a no-op)."""
        return textsets.import_file(self.store, Path(path), name)

    def textsets(self) -> list[TextSet]:
        return self.store.textsets()

    def textset(self, name: str) -> tuple[TextSet, list[textsets.Item]]:
        """A text set and its items."""
        return textsets.load_items(self.store, name)

    def ensure_sample(self) -> TextSet:
        """The packaged sample text set, imported as `sample` on first use."""
        return textsets.ensure_sample(self.store)

    # --- scoring ------------------------------------------------------------------------
    def score(
        self,
        model: str | Path,
        textset: str = "sample",
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
        progress: bool | Callable[[int], None] = True,
        log: Callable[[str], None] | None = None,
    ) -> ScoreSummary:
        """Score a Hub repo id or local HF folder on a text set and store its vectors.

        `variants` defaults to all four (base, cot, repeat, repeat+cot) on a pair set and to
        the one base vector on a plain set; the unconditional vector is computed once.
        """
        from atlas.scoring.service import score_model

        return score_model(
            self.store, str(model), textset, variants=variants, device=device, dtype=dtype,
            max_tokens=max_tokens, name=name, revision=revision,
            trust_remote_code=trust_remote_code, batch_tokens=batch_tokens, force=force,
            progress=progress, log=log, weights_dir=self.settings.weights_dir,
        )  # fmt: skip

    # --- Hub sync and Hub text sets -----------------------------------------------------
    def sync(
        self,
        options: Any = None,
        *,
        stop: Any = None,
        progress: Callable[[str], None] | None = None,
        **fields: Any,
    ) -> Any:
        """Poll the Hub, score what is new, refresh derived data; returns a SyncSummary.

        `options` is a `SyncOptions`; keyword fields override it (`limit=3`, `textset="x"`,
        or filter fields such as `min_downloads=10`).
        """
        from dataclasses import fields as dc_fields
        from dataclasses import replace

        from atlas.hub.discovery import Filters
        from atlas.sync import SyncOptions, sync

        options = options or SyncOptions()
        names = {f.name for f in dc_fields(Filters)}
        filter_fields = {k: v for k, v in fields.items() if k in names}
        if filter_fields:
            fields = {k: v for k, v in fields.items() if k not in names}
            fields["filters"] = replace(options.filters, **filter_fields)
        options = replace(options, **fields)
        return sync(self.store, options, settings=self.settings, stop=stop, progress=progress)

    def build_textset(
        self,
        dataset: str,
        *,
        n: int,
        seed: int = 0,
        name: str | None = None,
        split: str | None = None,
        revision: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ImportResult:
        """Sample N single-turn pairs from a Hub dataset (Parquet/JSONL) into a text set."""
        from atlas.hub.datasets import build_textset

        return build_textset(
            self.store, dataset, n=n, seed=seed, name=name, split=split, revision=revision,
            settings=self.settings, progress=progress,
        )  # fmt: skip

    # --- maps and export ----------------------------------------------------------------
    def refresh_map(
        self,
        method: str = "tsne",
        *,
        textset: str | None = None,
        variant: str = "base",
        kind: str = "conditional",
        full: bool = False,
    ) -> MapSnapshot:
        """Store a new map snapshot: new models placed incrementally, or a full refit."""
        from atlas.space import maps

        return maps.refresh(
            self.store, self.settings, method=method, textset=textset, variant=variant,
            kind=kind, full=full,
        ).snapshot  # fmt: skip

    def map_snapshots(self, textset: str | None = None) -> list[MapSnapshot]:
        """Stored map snapshots, newest first."""
        from atlas.space import maps

        return maps.snapshots(self.store, textset)

    def map_points(self, snapshot: int | None = None) -> list[dict[str, Any]]:
        """A snapshot's models (the newest snapshot when None) with their coordinates."""
        from atlas.space import maps

        snap = maps.get_snapshot(self.store, snapshot)
        return [
            {"model": m.repo_id, "id": m.id, "x": p.x, "y": p.y, "model_type": m.model_type}
            for p, m in maps.snapshot_points(self.store, snap.id)  # type: ignore[arg-type]
        ]

    def export(
        self, directory: Path | str, snapshot: int | None = None, *, neighbours: int = 10
    ) -> Path:
        """Write a snapshot (the newest when None) as JSON, CSV, npz, PNG and an HTML page."""
        from atlas.export import snapshot as export

        return export.export(self.store, directory, snapshot, neighbours=neighbours)

    # --- nearest neighbours -------------------------------------------------------------
    def nearest(
        self,
        model: str,
        k: int = 10,
        *,
        textset: str | None = None,
        variant: str = "base",
        kind: str = "conditional",
        add: bool = False,
        log: Callable[[str], None] | None = None,
        **score_options: Any,
    ) -> list[Neighbour]:
        """The k models nearest to `model` by estimated KL (the model itself excluded).

        `model` is a stored model, or a local folder / Hub id scored on the fly and placed
        without being stored unless `add`; `score_options` (device, dtype, ...) go to the scorer.
        """
        from atlas.space.neighbours import nearest

        return nearest(
            self.store, self.settings, model, k, textset=textset, variant=variant, kind=kind,
            add=add, log=log, score_options=score_options,
        )  # fmt: skip

    def refresh_indexes(self, textset: str | None = None) -> dict[str, Any]:
        """Bring the nearest-neighbour indexes up to date with the store (new models added)."""
        from atlas.space.index import refresh_indexes

        return refresh_indexes(self.store, self.settings, textset)

    # --- models and status --------------------------------------------------------------
    def models(self, status: str | None = None) -> list[HubModel]:
        if status is not None and status not in MODEL_STATUSES:
            raise UsageError(f"unknown status {status!r}; choose from {', '.join(MODEL_STATUSES)}")
        return self.store.models(status)

    def status(self) -> dict[str, Any]:
        """Counts per model status, the text sets, and the last sync run."""
        last = self.store.last_sync()
        return {
            "database": redact_url(self.store.url),
            "home": str(self.settings.home),
            "models": {s: self.store.status_counts().get(s, 0) for s in MODEL_STATUSES},
            "textsets": [
                {"name": t.name, "kind": t.kind, "size": t.size, "sha256": t.sha256}
                for t in self.textsets()
            ],
            "last_sync": None
            if last is None
            else {
                "started_at": last.started_at,
                "finished_at": last.finished_at,
                "status": last.status,
                "counts": last.counts,
            },
        }

    # --- analyses (PMI, prompt shift, KL validation, prediction, lineage) ----------------
    def analyze_pmi(
        self, textset: str | None = None, *, variant: str = "base",
        models: list[str] | None = None,
    ) -> PMIResult:
        """MI estimates (mean PMI), their variance approximation, and the Table 2 table."""
        from atlas.analyses import pmi
        from atlas.analyses.common import pick_textset

        name = pick_textset(self.store, textset)
        return pmi.analyze(self.store, name, variant=variant, models=models)

    def analyze_shift(
        self, textset: str | None = None, *, models: list[str] | None = None
    ) -> ShiftResult:
        """Prompt-shift additivity, transfer and the mean-change correlation."""
        from atlas.analyses import shift
        from atlas.analyses.common import pick_textset

        return shift.analyze(self.store, pick_textset(self.store, textset), models=models)

    def validate_kl(
        self, models: list[str], textset: str | None = None, **options: Any
    ) -> ValidationResult:
        """Monte Carlo KL from sampled responses vs the vector estimate (see validate_kl)."""
        from atlas.analyses import kl_validation as validate
        from atlas.analyses.common import pick_textset

        name = pick_textset(self.store, textset)
        return validate.validate_kl(self.store, models, name, **options)

    def predict(
        self, scores: Path | str, target: str, textset: str | None = None, **options: Any
    ) -> PredictResult:
        """Ridge prediction of a benchmark score from the vectors, with its evaluation."""
        from atlas.analyses import predict
        from atlas.analyses.common import pick_textset

        name = pick_textset(self.store, textset)
        return predict.predict(self.store, name, scores, target, **options)

    def lineage(
        self, textset: str | None = None, *, variant: str = "base",
        models: list[str] | None = None,
    ) -> LineageResult:
        """Precision at 1 and 5 of KL-nearest neighbours being a recorded base or sibling."""
        from atlas.analyses import lineage
        from atlas.analyses.common import pick_textset

        name = pick_textset(self.store, textset)
        return lineage.analyze(self.store, name, variant=variant, models=models)
