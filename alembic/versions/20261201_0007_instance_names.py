"""connections.instance names a configured instance; connect links carry one

Until now ``connections.instance`` held the host of the one configured
instance. Several instances are configured by name now (service.instances),
the single-instance variables describing the one named ``default``: every
existing connection was made with those, so it belongs to ``default``. A
connect link is made for one instance; existing ones were made for
``default``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE connections SET instance = 'default'")
    op.add_column(
        "connect_sessions",
        sa.Column("instance", sa.String(length=32), nullable=False, server_default="default"),
    )
    op.alter_column("connect_sessions", "instance", server_default=None)


def downgrade() -> None:
    # The names cannot be turned back into hosts here: the configuration
    # knows them, the database does not.
    op.drop_column("connect_sessions", "instance")
