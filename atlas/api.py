"""The library API: everything a command does, a notebook can do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atlas import textsets
from atlas.errors import UsageError
from atlas.settings import Settings, redact_url
from atlas.store import Store
from atlas.tables import MODEL_STATUSES, HubModel, TextSet
from atlas.textsets import ImportResult


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
