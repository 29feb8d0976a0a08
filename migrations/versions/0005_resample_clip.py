"""resample clip: a resampled text set keeps its source's clip thresholds

Revision ID: 0005_resample_clip
Revises: 0004_text_weights
Create Date: 2026-12-02 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_resample_clip"
down_revision: str | None = "0004_text_weights"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("textsets") as batch:
        batch.add_column(sa.Column("clip_thresholds", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("textsets") as batch:
        batch.drop_column("clip_thresholds")
