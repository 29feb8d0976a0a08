"""The store: engine, sessions, migrations, and the queries every part shares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import event, func
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlmodel import Session, col, create_engine, select

from atlas.errors import MigrationError, NotFound, StoreUnavailable
from atlas.settings import redact_url
from atlas.store.tables import HubModel, StateEntry, SyncRun, TextSet, Vector, utcnow


def migrations_dir() -> Path:
    """The Alembic script folder, installed as `atlas.migrations`."""
    try:
        path = Path(str(resources.files("atlas.migrations")))
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parent.parent / "migrations"
    return path


def alembic_config(url: str, connection: Any = None) -> Any:
    """An Alembic config for `url`, independent of the working directory."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets foreign keys on and a busy timeout."""
    try:
        parsed = make_url(url)
        port = parsed.port  # a non-numeric port fails here, not at connect time
    except (ArgumentError, ValueError) as exc:
        raise StoreUnavailable(
            f"invalid database URL {redact_url(url)}",
            hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST[:PORT]/DB",
        ) from exc
    if port is not None and not 0 < port < 65536:
        raise StoreUnavailable(f"invalid port {port} in database URL {redact_url(url)}")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the database folder {folder}: {exc.strerror or exc}"
                ) from exc
            if Path(database).expanduser().is_dir():
                raise StoreUnavailable(f"the database path {database} is a folder, not a file")
        try:
            engine = create_engine(url, connect_args={"timeout": 30})
        except NoSuchModuleError as exc:
            raise StoreUnavailable(f"unsupported database URL {redact_url(url)}") from exc

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=_connect_args(parsed))
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreUnavailable(
            f"unsupported database URL {redact_url(url)}",
            hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
        ) from exc


def _connect_args(parsed: Any) -> dict[str, Any]:
    if parsed.get_backend_name() == "postgresql":
        return {"connect_timeout": 10}
    return {}


def _first_line(exc: DBAPIError) -> str:
    """The driver's own message, first line only (no SQL, no parameters)."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Store:
    """The database of record: models, text sets, vectors, maps, sync runs."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            self.ensure_schema()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # --- schema -------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None when empty)."""
        from alembic.runtime.migration import MigrationContext

        with self._connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    def ensure_schema(self) -> bool:
        """Migrate to the newest schema when behind; True when a migration ran."""
        try:
            current = self.current_revision()
        except DBAPIError as exc:  # e.g. a file that is not a database
            raise StoreUnavailable(
                f"cannot read database {redact_url(self.url)}: {_first_line(exc)}"
            ) from exc
        if current == self.head_revision():
            return False
        self.upgrade()
        return True

    def upgrade(self, revision: str = "head") -> None:
        self._alembic("upgrade", revision)

    def downgrade(self, revision: str) -> None:
        self._alembic("downgrade", revision)

    def _alembic(self, verb: str, revision: str) -> None:
        from alembic import command

        try:
            with self._connect() as conn, conn.begin():
                getattr(command, verb)(alembic_config(self.url, conn), revision)
        except (StoreUnavailable, MigrationError):
            raise
        except DBAPIError as exc:  # read-only file, full disk, not a database
            raise StoreUnavailable(
                f"database {verb} of {redact_url(self.url)} failed: {_first_line(exc)}"
            ) from exc
        except Exception as exc:  # alembic raises a variety of types
            raise MigrationError(f"database {verb} to {revision} failed: {exc}") from exc

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        try:
            conn = self.engine.connect()
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(
                f"cannot open database {redact_url(self.url)}: {_first_line(exc)}"
            ) from exc
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits as one transaction, or not at all."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    # --- text sets ----------------------------------------------------------------------
    def textset(self, name: str) -> TextSet:
        """The text set called `name`, or NotFound."""
        with self.session() as s:
            found = s.exec(select(TextSet).where(TextSet.name == name)).first()
        if found is None:
            raise NotFound(
                f"no text set named {name!r}",
                hint="see `atlas textset list`, or import one with `atlas textset import`",
            )
        return found

    def textsets(self) -> list[TextSet]:
        with self.session() as s:
            return list(s.exec(select(TextSet).order_by(TextSet.name)))

    # --- models -------------------------------------------------------------------------
    def model(self, repo_id: str) -> HubModel | None:
        with self.session() as s:
            return s.exec(select(HubModel).where(HubModel.repo_id == repo_id)).first()

    def models(
        self, status: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[HubModel]:
        query = select(HubModel).order_by(HubModel.repo_id)
        if status:
            query = query.where(HubModel.status == status)
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self.session() as s:
            return list(s.exec(query))

    def upsert_model(self, repo_id: str, **fields: Any) -> HubModel:
        """Insert or update the model row for `repo_id` with `fields`."""
        with self.session() as s:
            row = s.exec(select(HubModel).where(HubModel.repo_id == repo_id)).first()
            if row is None:
                author = repo_id.split("/")[0] if "/" in repo_id else None
                row = HubModel(repo_id=repo_id, author=author)
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def set_status(
        self, repo_id: str, status: str, reason: str | None = None, detail: str | None = None
    ) -> None:
        """Record a model's status with its reason (cleared when None)."""
        self.upsert_model(repo_id, status=status, reason=reason, detail=detail)

    def status_counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(select(HubModel.status, func.count()).group_by(HubModel.status)).all()
        return {status: int(n) for status, n in rows}

    # --- vectors ------------------------------------------------------------------------
    def put_vectors(self, pieces: Sequence[Vector], *, progress_of: int | None = None) -> None:
        """Write several vector pieces atomically, replacing same-key pieces.

        `progress_of`: the model whose scoring advanced; its forward-pass death count is reset
        in the same transaction.
        """
        with self.session() as s:
            if progress_of is not None:
                row = s.get(HubModel, progress_of)
                if row is not None and row.attempts:
                    row.attempts = 0
                    s.add(row)
            for piece in pieces:
                old = s.exec(
                    select(Vector).where(
                        Vector.model_id == piece.model_id,
                        Vector.revision == piece.revision,
                        Vector.textset_id == piece.textset_id,
                        Vector.variant == piece.variant,
                        Vector.kind == piece.kind,
                    )
                ).first()
                if old is not None:
                    s.delete(old)
                    s.flush()
                s.add(piece)

    def finish_scoring(
        self, repo_id: str, *, revision: str, textset: TextSet, pieces: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Mark a model `scored` if every piece is stored for this revision and text set.

        Checked and set in one transaction; returns the missing pieces (nothing changes then).
        """
        with self.session() as s:
            row = s.exec(select(HubModel).where(HubModel.repo_id == repo_id)).one()
            have = set(
                s.exec(
                    select(Vector.variant, Vector.kind).where(
                        Vector.model_id == row.id,
                        Vector.revision == revision,
                        Vector.textset_id == textset.id,
                        Vector.textset_sha256 == textset.sha256,
                        Vector.n == textset.size,
                    )
                ).all()
            )
            missing = [p for p in pieces if tuple(p) not in have]
            if missing:
                return missing
            row.status, row.reason, row.detail, row.attempts = "scored", None, None, 0
            row.revision = revision
            row.updated_at = utcnow()
            s.add(row)
        return []

    def vector_pieces(
        self, *, textset_id: int, model_id: int | None = None, revision: str | None = None
    ) -> list[Vector]:
        query = select(Vector).where(Vector.textset_id == textset_id)
        if model_id is not None:
            query = query.where(Vector.model_id == model_id)
        if revision is not None:
            query = query.where(Vector.revision == revision)
        with self.session() as s:
            return list(s.exec(query.order_by(col(Vector.id))))

    # --- state and sync runs ------------------------------------------------------------
    def get_state(self, key: str) -> dict[str, Any]:
        with self.session() as s:
            entry = s.get(StateEntry, key)
            return dict(entry.value) if entry else {}

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        with self.session() as s:
            entry = s.get(StateEntry, key) or StateEntry(key=key)
            entry.value = value
            entry.updated_at = utcnow()
            s.add(entry)

    def last_sync(self) -> SyncRun | None:
        with self.session() as s:
            return s.exec(select(SyncRun).order_by(col(SyncRun.started_at).desc())).first()

    def high_water_mark(self) -> tuple[int, int, int]:
        """(pieces of scored models, their largest id, the sum of their ids): changes whenever
        the readable vectors change, a model becoming scored or leaving `scored` included."""
        query = (
            select(func.count(col(Vector.id)), func.max(Vector.id), func.sum(Vector.id))
            .join(HubModel, col(HubModel.id) == Vector.model_id)
            .where(HubModel.status == "scored")
        )
        with self.session() as s:
            n, newest, total = s.exec(query).one()
        return int(n), int(newest or 0), int(total or 0)
