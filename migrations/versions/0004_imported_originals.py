"""what an imported ChatGPT export said, for lossless export

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.add_column(sa.Column("original", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("original_id", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("original", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("original")
        batch_op.drop_column("original_id")
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.drop_column("original")
