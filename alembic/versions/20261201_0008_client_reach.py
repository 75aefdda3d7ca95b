"""API clients may be limited to instances and to the connections they
brought in; connections remember which client brought them in

``api_clients.instances``: the instance names a client reaches (NULL: all).
``api_clients.connections``: ``all``, or ``own`` for only the connections
created or last re-authorized through this client's connect sessions, which
``connections.brought_by`` names. Existing clients keep reaching everything.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_clients", sa.Column("instances", postgresql.ARRAY(sa.String(32)), nullable=True)
    )
    op.add_column(
        "api_clients",
        sa.Column("connections", sa.String(8), nullable=False, server_default="all"),
    )
    op.add_column(
        "connections", sa.Column("brought_by", postgresql.UUID(as_uuid=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("connections", "brought_by")
    op.drop_column("api_clients", "connections")
    op.drop_column("api_clients", "instances")
