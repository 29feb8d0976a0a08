"""Shared fixtures: an isolated ATLAS_HOME per test, and real SQLite and Postgres stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get(
    "ATLAS_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def atlas_home(tmp_path, monkeypatch):
    """Point every setting at a temp dir so no test touches real data, caches or tokens."""
    from huggingface_hub import constants

    home = tmp_path / "atlas-home"
    monkeypatch.setenv("ATLAS_HOME", str(home))
    monkeypatch.delenv("ATLAS_DATABASE_URL", raising=False)
    # huggingface_hub reads these into `constants` at import time: patch both.
    hf_home = tmp_path / "hf-home"
    for name, value in {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hf_home / "hub",
        "HF_TOKEN_PATH": hf_home / "token",
        "HF_STORED_TOKENS_PATH": hf_home / "stored_tokens",
        "AGENT_HARNESSES_PATH": hf_home / ".agent_harnesses.json",
    }.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, str(value))
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    # The Hub client's retry policy (3 retries), with short waits; subprocesses inherit it.
    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "0.05,0.1,0.2")
    return home


@pytest.fixture(scope="session")
def zoo_models():
    """The tiny real model zoo (atlas.testing.zoo), built once and cached across runs.

    The cache (ATLAS_TEST_CACHE, default the user cache dir) is keyed by the zoo's source and
    the library versions, so a change to either builds it again.
    """
    import platformdirs

    from atlas.testing import zoo

    root = os.environ.get("ATLAS_TEST_CACHE") or platformdirs.user_cache_dir("atlas-tests")
    return zoo.build_zoo_cached(Path(root) / "zoo")


@pytest.fixture(scope="session")
def zoo_by_name(zoo_models):
    """Zoo models keyed by their repo-style name, e.g. `atlas-zoo/llama-base`."""
    return {m.name: m for m in zoo_models}


def _admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throw-away Postgres database for one test, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"atlas_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """Each test using this runs on SQLite and on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    from atlas.store import Store

    s = Store(db_url)
    yield s
    s.close()


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys) -> Callable[..., CliResult]:
    """Run the atlas CLI in-process and capture its exit code and output."""
    from atlas.cli import app
    from atlas.cli.common import run

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(app, list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke


def pytest_collection_modifyitems(config, items):
    """Start the long end-to-end tests (marked `slow`) first, so that parallel workers
    (pytest-xdist, `-n auto` in pyproject.toml) finish at about the same time."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
