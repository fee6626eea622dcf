"""a lease on each answer being written, so answers of a process that died are marked interrupted

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_messages_in_progress_lease",
            ["lease_expires_at"],
            postgresql_where=sa.text("status = 'in_progress'"),
            sqlite_where=sa.text("status = 'in_progress'"),
        )
    # Answers left `in_progress` before leases existed were cut off by a crash or a shutdown:
    # they are marked as what they are. (Imported messages keep whatever status the export had.)
    op.execute(
        "UPDATE messages SET status = 'finished_partial_completion', finish_details = 'interrupted', "
        "end_turn = false WHERE status = 'in_progress' AND role = 'assistant' AND original IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_in_progress_lease")
        batch_op.drop_column("lease_expires_at")
