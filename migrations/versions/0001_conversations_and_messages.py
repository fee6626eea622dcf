"""conversations and messages

Revision ID: 0001
Revises:
Create Date: 2026-11-24 11:07:21.283019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("conversations",
    sa.Column("id", sa.Uuid(), nullable=False),
    sa.Column("owner", sa.String(length=64), server_default="", nullable=False),
    sa.Column("title", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("current_node_id", sa.Uuid(), nullable=True),
    sa.Column("upstream_id", sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index("ix_conversations_owner_updated", ["owner", sa.literal_column("updated_at DESC"), sa.literal_column("id DESC")], unique=False)

    op.create_table("messages",
    sa.Column("id", sa.Uuid(), nullable=False),
    sa.Column("conversation_id", sa.Uuid(), nullable=False),
    sa.Column("parent_id", sa.Uuid(), nullable=True),
    sa.Column("role", sa.String(length=16), nullable=True),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("status", sa.String(length=32), nullable=False),
    sa.Column("end_turn", sa.Boolean(), nullable=True),
    sa.Column("model", sa.String(length=128), nullable=True),
    sa.Column("finish_details", sa.String(length=32), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("upstream_id", sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
    sa.ForeignKeyConstraint(["parent_id"], ["messages.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_conversation_created", ["conversation_id", "created_at"], unique=False)
        batch_op.create_index("ix_messages_parent", ["parent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_parent")
        batch_op.drop_index("ix_messages_conversation_created")

    op.drop_table("messages")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_owner_updated")

    op.drop_table("conversations")