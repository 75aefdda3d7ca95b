"""Sign-in attempts are no longer stored while pending: drop the sealed PKCE verifier

The state is signed and the verifier derived from it (service.signin.states);
``authorizations`` now only records states whose callback was accepted, until
they would have expired. Pending rows from before are removed: their states
were never signed, so their callbacks are refused either way (the user starts
again).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM authorizations WHERE used_at IS NULL")
    op.drop_column("authorizations", "code_verifier_enc")


def downgrade() -> None:
    op.add_column("authorizations", sa.Column("code_verifier_enc", sa.Text(), nullable=True))
