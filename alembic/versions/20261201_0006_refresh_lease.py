"""connections.refresh_lease_owner / refresh_lease_until: a refresh's claim

A refresh no longer holds the row lock (and a pooled connection) across its
call to Workfront: it claims the row with a lease naming its process, calls
Workfront with no database connection held, and stores under that claim
(service.tokens.lease). A process's claims are void the moment it dies: it
holds an advisory lock for its lifetime, and a claim whose owner holds none is
free.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("connections", sa.Column("refresh_lease_owner", sa.Integer(), nullable=True))
    op.add_column(
        "connections",
        sa.Column("refresh_lease_until", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("connections", "refresh_lease_until")
    op.drop_column("connections", "refresh_lease_owner")
