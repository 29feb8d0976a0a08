"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from atlas.errors import UsageError


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

            raise UsageError(f"ATLAS_MAP_REFIT_FRACTION must be a positive number, not {raw!r}")
        return value

    @property
    def index_mode(self) -> str:
        """`ATLAS_INDEX_MODE`: exact, pca, or auto (default: pca from 100,000 models)."""
        value = os.environ.get("ATLAS_INDEX_MODE", "").strip().lower() or "auto"
        if value not in ("auto", "exact", "pca"):

            raise UsageError(f"ATLAS_INDEX_MODE must be auto, exact or pca, not {value!r}")
        return value

    @property
    def stalled_after(self) -> float:
        """`ATLAS_STALLED_AFTER` (default 300): seconds without a worker heartbeat before its
        queue job counts as stalled and is retried elsewhere."""
        return _positive("ATLAS_STALLED_AFTER", 300.0)

    @property
    def max_interrupts(self) -> int:
        """`ATLAS_MAX_INTERRUPTS` (default 3): a queued model whose scoring was cut off (its
        worker killed) this many times fails with reason `interrupted`."""
        return int(_positive("ATLAS_MAX_INTERRUPTS", 3.0))

    @property
    def retry_wait(self) -> float:
        """`ATLAS_RETRY_WAIT` (default 5): a queue job that failed for a passing reason waits
        this many seconds before its first retry, then its square, cube, ... (exponential)."""
        return _positive("ATLAS_RETRY_WAIT", 5.0)

    def ensure_home(self) -> Path:
        """Create ATLAS_HOME if needed; StoreUnavailable when it is a file or not writable."""
        from atlas.errors import StoreUnavailable

        home = self.home
        try:
            home.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreUnavailable(
                f"ATLAS_HOME {home} is a file, not a folder", hint="point ATLAS_HOME at a folder"
            ) from exc
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create ATLAS_HOME {home}: {exc.strerror or exc}",
                hint="point ATLAS_HOME at a writable folder",
            ) from exc
        if not os.access(home, os.W_OK | os.X_OK):
            raise StoreUnavailable(
                f"ATLAS_HOME {home} is not writable", hint="point ATLAS_HOME at a writable folder"
            )
        return home


# `user:password@` inside anything that looks like a URL or a connection string, well-formed or
# not (`postgresql+psycopg//root:secret@host/db` has no scheme colon but still a password).
_USERINFO = re.compile(r"(?<![^\s/'\"=(,])(?P<user>[^\s:/@'\"]*):(?P<secret>(?!/)[^\s@]*)@")
_KEYWORD = re.compile(r"(?i)\b(password|passwd|pwd|token|api_key|secret)=(?P<secret>[^\s&;'\"]+)")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")


def redact(text: str) -> str:
    """Hide credentials in any message: URL passwords, `password=...`, tokens (HF_TOKEN)."""
    text = _USERINFO.sub(lambda m: f"{m['user']}:***@", str(text))
    text = _KEYWORD.sub(lambda m: f"{m.group(1)}=***", text)
    text = _HF_TOKEN.sub("hf_***", text)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PGPASSWORD"):
        secret = os.environ.get(name, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """Hide a password in a database URL (well-formed or not) before it is printed."""
    from sqlalchemy.engine import make_url

    try:
        return redact(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return redact(url)


# --- the Hugging Face Hub: read at call time (huggingface_hub reads them only at import) -------


def hf_endpoint() -> str | None:
    """`HF_ENDPOINT`, when set."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def hf_token() -> str | None:
    """`HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`); never logged, printed or stored."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def hf_timeout(default: float) -> float:
    """`HF_HUB_ETAG_TIMEOUT` in seconds, else `default`."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or default)
    except ValueError:
        return default


def hub_retry_delays(default: tuple[float, ...]) -> tuple[float, ...]:
    """`ATLAS_HUB_RETRY_DELAYS`: seconds between attempts of a Hub call that failed
    transiently, comma-separated (default `default`; an empty list: no retry)."""
    raw = os.environ.get("ATLAS_HUB_RETRY_DELAYS")
    if raw is None:
        return default
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        delays = (-1.0,)
    if any(not d >= 0 for d in delays):
        from atlas.errors import UsageError

        raise UsageError(
            f"ATLAS_HUB_RETRY_DELAYS must be comma-separated seconds (e.g. 0.5,2,8), not {raw!r}"
        )
    return delays


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        from atlas.errors import UsageError

        raise UsageError(f"{name} must be a positive number, not {raw!r}")
    return value
