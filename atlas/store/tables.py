"""The store's tables (SQLModel). Only Alembic migrations change the schema."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    LargeBinary,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

MODEL_STATUSES = ("discovered", "skipped", "queued", "scoring", "scored", "failed")
TEXTSET_KINDS = ("pairs", "plain")
VARIANTS = ("base", "cot", "repeat", "repeat+cot")
VECTOR_KINDS = ("conditional", "unconditional")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class HubModel(SQLModel, table=True):
    """A model seen on the Hub (or scored from a local folder), with its filter decision."""

    __tablename__ = "models"
    __table_args__ = (CheckConstraint(_in("status", MODEL_STATUSES), name="ck_models_status"),)

    id: int | None = Field(default=None, primary_key=True)
    repo_id: str = Field(unique=True, index=True, max_length=256)
    revision: str | None = Field(default=None, max_length=64)
    source: str = Field(default="hub", max_length=16)
    author: str | None = Field(default=None, max_length=128)
    downloads: int | None = Field(default=None, sa_column=Column(BigInteger))
    likes: int | None = None
    num_parameters: int | None = Field(default=None, sa_column=Column(BigInteger))
    model_type: str | None = Field(default=None, max_length=64)
    architecture: str | None = Field(default=None, max_length=128)
    library_name: str | None = Field(default=None, max_length=64)
    base_models: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    gated: bool = False
    has_chat_template: bool | None = None
    created_at: datetime | None = _ts()
    last_modified: datetime | None = _ts()
    status: str = Field(default="discovered", max_length=16, index=True)
    reason: str | None = Field(default=None, max_length=64)
    detail: str | None = None
    attempts: int = 0
    first_seen: datetime = _now()
    updated_at: datetime = _now()


class TextSet(SQLModel, table=True):
    """A fixed, versioned set of texts that models are scored on."""

    __tablename__ = "textsets"
    __table_args__ = (CheckConstraint(_in("kind", TEXTSET_KINDS), name="ck_textsets_kind"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    kind: str = Field(max_length=16)
    sha256: str = Field(max_length=64, index=True)
    size: int
    source: str | None = None
    created_at: datetime = _now()
    # A resampled set (`atlas textset resample`): the set its items were drawn from, and the
    # source's 2% clip threshold per "variant/kind" when it was drawn (its vectors are clipped
    # there before they are weighted).
    parent_id: int | None = None
    clip_thresholds: dict[str, float] | None = Field(default=None, sa_column=Column(JSON))


class TextItem(SQLModel, table=True):
    """One item of a text set: a prompt-response pair, or a plain text."""

    __tablename__ = "text_items"
    __table_args__ = (UniqueConstraint("textset_id", "idx", name="uq_text_items_textset_idx"),)

    id: int | None = Field(default=None, primary_key=True)
    textset_id: int = Field(foreign_key="textsets.id", ondelete="CASCADE")
    idx: int
    prompt: str | None = None
    response: str | None = None
    text: str | None = None
    # Resampled sets: the importance weight of the item (NULL: 1) and its index in the parent.
    weight: float | None = None
    source_idx: int | None = None


class Vector(SQLModel, table=True):
    """A model's log-likelihood vector over a text set, with its provenance."""

    __tablename__ = "vectors"
    __table_args__ = (
        UniqueConstraint(
            "model_id", "revision", "textset_id", "variant", "kind", name="uq_vectors_piece"
        ),
        CheckConstraint(_in("variant", VARIANTS), name="ck_vectors_variant"),
        CheckConstraint(_in("kind", VECTOR_KINDS), name="ck_vectors_kind"),
        Index("ix_vectors_lookup", "textset_id", "variant", "kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE")
    revision: str = Field(max_length=64)
    textset_id: int = Field(foreign_key="textsets.id", ondelete="CASCADE")
    textset_sha256: str = Field(max_length=64)
    variant: str = Field(max_length=16)
    kind: str = Field(max_length=16)
    n: int
    values: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    token_counts: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    truncated: int = 0
    dtype: str = Field(max_length=16)
    device: str = Field(max_length=32)
    scorer_version: str = Field(max_length=32)
    # How the chat template was applied (generation-prompt or finished-turn; None for plain
    # texts and vectors scored before scorer 2), the template's sha256, and the pinned date
    # it rendered with when it reads the date.
    template_mode: str | None = Field(default=None, max_length=32)
    template_sha256: str | None = Field(default=None, max_length=64)
    template_clock: str | None = Field(default=None, max_length=32)
    created_at: datetime = _now()
    # A vector sliced from the parent text set's vector (id) instead of scored.
    derived_from: int | None = None

    def array(self) -> np.ndarray:
        """The values as a float32 array of length n."""
        return np.frombuffer(self.values, dtype="<f4", count=self.n)

    def token_array(self) -> np.ndarray | None:
        """Scored tokens per item, when recorded."""
        if self.token_counts is None:
            return None
        return np.frombuffer(self.token_counts, dtype="<i4", count=self.n)


class MapSnapshot(SQLModel, table=True):
    """A 2-D map of the models at one moment, with how it was made."""

    __tablename__ = "map_snapshots"

    id: int | None = Field(default=None, primary_key=True)
    method: str = Field(max_length=16)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    textset_id: int = Field(foreign_key="textsets.id", ondelete="CASCADE")
    variant: str = Field(default="base", max_length=16)
    kind: str = Field(max_length=16)
    clip_threshold: float | None = None
    n_models: int = 0
    parent_id: int | None = Field(default=None, foreign_key="map_snapshots.id")
    created_at: datetime = _now()


class MapPoint(SQLModel, table=True):
    """One model's coordinates in a map snapshot."""

    __tablename__ = "map_points"
    __table_args__ = (UniqueConstraint("snapshot_id", "model_id", name="uq_map_points_model"),)

    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="map_snapshots.id", ondelete="CASCADE", index=True)
    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE")
    x: float
    y: float


class SyncRun(SQLModel, table=True):
    """One run of `atlas sync`: when, what it counted, what went wrong."""

    __tablename__ = "sync_runs"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = _now()
    finished_at: datetime | None = _ts()
    status: str = Field(default="running", max_length=16)
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    errors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class StateEntry(SQLModel, table=True):
    """Small named pieces of state, such as the Hub polling watermark."""

    __tablename__ = "state"

    key: str = Field(primary_key=True, max_length=128)
    value: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = _now()
