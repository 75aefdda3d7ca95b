"""connections.last_used_at: when a connection was last read or (re)connected

The refresher keeps connections in use warm (refreshed ahead of expiry) and
only keeps idle ones' grants alive (BROKER_KEEP_WARM_SECONDS,
BROKER_KEEP_ALIVE_SECONDS). Existing connections count as used at the
upgrade: none goes cold before it has been idle a whole keep-warm window.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "connections",
        sa.Column(
            "last_used_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("connections", "last_used_at")
