"""The library API: everything a command does, a notebook can do."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atlas import resample, sync, textsets
from atlas.analyses import kl_validation, lineage, pmi, predict, shift
from atlas.analyses.common import pick_textset
from atlas.analyses.kl_validation import ValidationResult
from atlas.analyses.lineage import LineageResult
from atlas.analyses.pmi import PMIResult
from atlas.analyses.predict import PredictResult
from atlas.analyses.shift import ShiftResult
from atlas.errors import UsageError
from atlas.export import snapshot as export_snapshot
from atlas.hub import datasets
from atlas.queue import ensure_queue_schema
from atlas.queue.status import QueueStatus, queue_status, summary_line
from atlas.queue.worker import WorkerOptions, run_worker
from atlas.resample import Resampled
from atlas.scoring import rescore
from atlas.scoring.loading import check_options
from atlas.scoring.rescore import RescoreSummary
from atlas.scoring.service import ScoreSummary, score_model, template_provenance
from atlas.settings import Settings, redact_url
from atlas.space import index, maps, neighbours
from atlas.space.maps import MapRefresh
from atlas.space.neighbours import Neighbour
from atlas.store import Store
from atlas.store.locking import store_lock
from atlas.store.tables import MODEL_STATUSES, HubModel, MapSnapshot, TextSet
from atlas.sync import SyncOptions, SyncSummary
from atlas.textsets import ImportResult


class Atlas:
    """Entry point to a store: `Atlas()` uses ATLAS_HOME / ATLAS_DATABASE_URL."""

    def __init__(
        self, database_url: str | None = None, *, home: Path | None = None, migrate: bool = True
    ) -> None:
        self.settings = Settings.from_env(database_url=database_url, home=home)
        self.settings.ensure_home()
        self.store = Store(self.settings.url, migrate=migrate)

    def close(self) -> None:
        self.store.close()

    @classmethod
    def upgrade_db(cls, database_url: str | None = None, *, home: Path | None = None) -> bool:
        """Migrate the database to the newest schema; True when a migration ran."""
        with cls(database_url, home=home, migrate=False) as atlas:
            return atlas.store.ensure_schema()

    def schema_revision(self) -> str | None:
        """The database's schema revision."""
        return self.store.current_revision()

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

    def resample_textset(
        self, source: str, *, n: int, name: str, method: str = "variance", seed: int = 0
    ) -> Resampled:
        """K weighted draws of a scored text set (Oyama et al. 2025a), its vectors sliced."""
        return resample.resample(self.store, source, n=n, name=name, method=method, seed=seed)

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
        progress: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> ScoreSummary:
        """Score a Hub repo id or local HF folder on a text set and store its vectors.

        `variants` defaults to all four (base, cot, repeat, repeat+cot) on a pair set and to
        the one base vector on a plain set; the unconditional vector is computed once.
        """
        check_options(device, dtype)  # before the lock, the store and the network
        with store_lock(self.store, settings=self.settings):
            return score_model(
                self.store, str(model), textset, variants=variants, device=device, dtype=dtype,
                max_tokens=max_tokens, name=name, revision=revision,
                trust_remote_code=trust_remote_code, batch_tokens=batch_tokens, force=force,
                progress=progress, log=log, weights_dir=self.settings.weights_dir,
            )  # fmt: skip

    # --- Hub sync and Hub text sets -----------------------------------------------------
    def sync(
        self,
        options: SyncOptions | None = None,
        *,
        stop: threading.Event | None = None,
        progress: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> SyncSummary:
        """Poll the Hub, score what is new, refresh derived data.

        `overrides` replace fields of `options` (`limit=3`, `textset="x"`) or of its filters
        (`min_downloads=10`); an unknown name is a UsageError.
        """
        options = (options or SyncOptions()).with_overrides(**overrides)
        return sync.sync(self.store, options, settings=self.settings, stop=stop, progress=progress)

    def rescore_outdated(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        keep_weights: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> RescoreSummary:
        """Rescore vectors of an older scorer where the current definition changes the numbers.

        Holds the sync lock; `sync(rescore_outdated=True)` does the same after scoring the queue.
        """
        with store_lock(self.store, "sync", self.settings):
            return rescore.rescore_outdated(
                self.store, settings=self.settings, device=device, dtype=dtype,
                keep_weights=keep_weights, progress=progress,
            )  # fmt: skip

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
        return datasets.build_textset(
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
        progress: Callable[[str], None] | None = None,
    ) -> MapRefresh:
        """Store a new map snapshot: new models placed incrementally, or a full refit."""
        return maps.refresh(
            self.store, self.settings, method=method, textset=textset, variant=variant,
            kind=kind, full=full, progress=progress,
        )  # fmt: skip

    def map_snapshots(self, textset: str | None = None) -> list[MapSnapshot]:
        """Stored map snapshots, newest first."""
        return maps.snapshots(self.store, textset)

    def map_points(self, snapshot: int | None = None) -> list[dict[str, Any]]:
        """A snapshot's models (the newest snapshot when None) with their coordinates."""
        snap = maps.get_snapshot(self.store, snapshot)
        return [
            {"model": m.repo_id, "id": m.id, "x": p.x, "y": p.y, "model_type": m.model_type}
            for p, m in maps.snapshot_points(self.store, snap.id)  # type: ignore[arg-type]
        ]

    def export(
        self, directory: Path | str, snapshot: int | None = None, *, neighbours: int = 10
    ) -> Path:
        """Write a snapshot (the newest when None) as JSON, CSV, npz, PNG and an HTML page."""
        return export_snapshot.export(self.store, directory, snapshot, neighbours=neighbours)

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
        return neighbours.nearest(
            self.store, self.settings, model, k, textset=textset, variant=variant, kind=kind,
            add=add, log=log, score_options=score_options,
        )  # fmt: skip

    def refresh_indexes(self, textset: str | None = None) -> dict[str, Any]:
        """Bring the nearest-neighbour indexes up to date with the store (new models added)."""
        return index.refresh_indexes(self.store, self.settings, textset)

    # --- the scoring fleet (Postgres) ---------------------------------------------------
    def upgrade_queue(self) -> str:
        """Create or migrate the queue's tables (procrastinate's schema); idempotent."""
        return ensure_queue_schema(self.store)

    def run_worker(
        self, options: WorkerOptions | None = None, *, say: Callable[[str], None] | None = None
    ) -> int:
        """Run one queue worker in this process until stopped; returns its exit code."""
        return run_worker(self.store, self.settings, options or WorkerOptions(), say)

    def queue_status(self, limit: int = 200) -> QueueStatus:
        """Jobs by state, the newest `limit` jobs, and the live workers."""
        return queue_status(self.store, self.settings, limit=limit)

    # --- models and status --------------------------------------------------------------
    def models(
        self, status: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[HubModel]:
        """Models by repo id, optionally one status and one page (`limit` from `offset`)."""
        if status is not None and status not in MODEL_STATUSES:
            raise UsageError(f"unknown status {status!r}; choose from {', '.join(MODEL_STATUSES)}")
        if (limit is not None and limit < 1) or offset < 0:
            raise UsageError("--limit must be at least 1 and --offset zero or more")
        return self.store.models(status, limit=limit, offset=offset)

    def template_provenance(self) -> dict[int, dict[str, str | None]]:
        """Per model id: template mode, template sha256 and pinned clock of its vectors."""
        return template_provenance(self.store)

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
            "queue": summary_line(self.store, self.settings),
        }

    # --- analyses (PMI, prompt shift, KL validation, prediction, lineage) ----------------
    def analyze_pmi(
        self, textset: str | None = None, *, variant: str = "base",
        models: list[str] | None = None,
    ) -> PMIResult:
        """MI estimates (mean PMI), their variance approximation, and the Table 2 table."""
        name = pick_textset(self.store, textset)
        return pmi.analyze(self.store, name, variant=variant, models=models)

    def analyze_shift(
        self, textset: str | None = None, *, models: list[str] | None = None
    ) -> ShiftResult:
        """Prompt-shift additivity, transfer and the mean-change correlation."""
        return shift.analyze(self.store, pick_textset(self.store, textset), models=models)

    def validate_kl(
        self, models: list[str], textset: str | None = None, **options: Any
    ) -> ValidationResult:
        """Monte Carlo KL from sampled responses vs the vector estimate (see validate_kl)."""
        name = pick_textset(self.store, textset)
        return kl_validation.validate_kl(self.store, models, name, **options)

    def predict(
        self, scores: Path | str, target: str, textset: str | None = None, **options: Any
    ) -> PredictResult:
        """Ridge prediction of a benchmark score from the vectors, with its evaluation."""
        name = pick_textset(self.store, textset)
        return predict.predict(self.store, name, scores, target, **options)

    def lineage(
        self, textset: str | None = None, *, variant: str = "base",
        models: list[str] | None = None,
    ) -> LineageResult:
        """Precision at 1 and 5 of KL-nearest neighbours being a recorded base or sibling."""
        name = pick_textset(self.store, textset)
        return lineage.analyze(self.store, name, variant=variant, models=models)
