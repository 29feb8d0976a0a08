"""text weights: resampled text sets (weights, source index, parent) and sliced vectors

Revision ID: 0004_text_weights
Revises: 0002_template_mode
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_text_weights"
down_revision: str | None = "0002_template_mode"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("textsets") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("text_items") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch.add_column(sa.Column("source_idx", sa.Integer(), nullable=True))
    with op.batch_alter_table("vectors") as batch:
        batch.add_column(sa.Column("derived_from", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vectors") as batch:
        batch.drop_column("derived_from")
    with op.batch_alter_table("text_items") as batch:
        batch.drop_column("source_idx")
        batch.drop_column("weight")
    with op.batch_alter_table("textsets") as batch:
        batch.drop_column("parent_id")
