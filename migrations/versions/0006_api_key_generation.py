"""API key generation: a counter that moves with every key made or revoked

Every process reads it before trusting its copy of the keys, so a key made or revoked
counts on the next request everywhere (`models/key_changes.py`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_key_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("id = 1", name="ck_api_key_generation_one_row"),
    )
    op.execute("INSERT INTO api_key_generation (id, value) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("api_key_generation")
