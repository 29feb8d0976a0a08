"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("atlas", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Where atlas keeps its data and which database it talks to."""

    home: Path = field(default_factory=_default_home)
    database_url: str | None = None

    @classmethod
    def from_env(cls, *, database_url: str | None = None, home: Path | None = None) -> Settings:
        """Read `ATLAS_HOME` and `ATLAS_DATABASE_URL`; explicit arguments win."""
        env_home = os.environ.get("ATLAS_HOME")
        resolved_home = home or (Path(env_home).expanduser() if env_home else _default_home())
        url = database_url or os.environ.get("ATLAS_DATABASE_URL") or None
        return cls(home=resolved_home, database_url=url)

    @property
    def url(self) -> str:
        """The database URL: explicit, or the embedded SQLite file under `home`."""
        return self.database_url or f"sqlite:///{self.home / 'atlas.db'}"

    @property
    def index_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def export_dir(self) -> Path:
        return self.home / "exports"

    @property
    def weights_dir(self) -> Path:
        return self.home / "weights"

    @property
    def map_refit_fraction(self) -> float:
        """`ATLAS_MAP_REFIT_FRACTION` (default 0.2): growth since the last full map that refits."""
        raw = os.environ.get("ATLAS_MAP_REFIT_FRACTION", "").strip()
        try:
            value = float(raw) if raw else 0.2
        except ValueError:
            value = -1.0
        if not value > 0:
            from atlas.errors import UsageError

            raise UsageError(f"ATLAS_MAP_REFIT_FRACTION must be a positive number, not {raw!r}")
        return value

    @property
    def index_mode(self) -> str:
        """`ATLAS_INDEX_MODE`: exact, pca, or auto (default: pca from 100,000 models)."""
        value = os.environ.get("ATLAS_INDEX_MODE", "").strip().lower() or "auto"
        if value not in ("auto", "exact", "pca"):
            from atlas.errors import UsageError

            raise UsageError(f"ATLAS_INDEX_MODE must be auto, exact or pca, not {value!r}")
        return value

    def with_url(self, url: str | None) -> Settings:
        return replace(self, database_url=url) if url else self


def redact_url(url: str) -> str:
    """Hide a password in a database URL before it is printed."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"
