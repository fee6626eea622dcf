"""stored chat completions, and the path hash that threads them into conversations

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("path_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_messages_path_hash",
            ["path_hash"],
            postgresql_where=sa.text("path_hash IS NOT NULL"),
            sqlite_where=sa.text("path_hash IS NOT NULL"),
        )
    op.create_table(
        "chat_completions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("chat_completions") as batch_op:
        batch_op.create_index("ix_chat_completions_owner_created", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("chat_completions")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_path_hash")
        batch_op.drop_column("path_hash")
