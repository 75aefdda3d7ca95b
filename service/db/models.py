"""Tables. Tokens are stored only as ciphertext (see service.crypto)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so Alembic autogenerate and hand-written migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


STATUS_ACTIVE = "active"
STATUS_NEEDS_REAUTH = "needs_reauth"


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Connection(Base):
    """One Workfront user's grant on one configured instance (``instance``, its name)."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("instance", "user_id", name="uq_connections_instance_user"),
        CheckConstraint("status IN ('active', 'needs_reauth')", name="status"),
        Index("ix_connections_external_ref", "external_ref"),
        Index("ix_connections_due", "next_refresh_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    instance: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    customer_id: Mapped[str | None] = mapped_column(String(64))
    wid: Mapped[str | None] = mapped_column(String(255))
    external_ref: Mapped[str | None] = mapped_column(String(255))
    # The API client whose connect session created or last re-authorized it
    # (None: through the operator page), for keys limited to their own.
    brought_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=STATUS_ACTIVE)
    access_token_enc: Mapped[str] = mapped_column(Text, nullable=False)
    refresh_token_enc: Mapped[str] = mapped_column(Text, nullable=False)
    # Bumped on every stored refresh: a waiter that finds it changed under the
    # lock knows another caller already refreshed and skips the upstream call.
    token_version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    next_refresh_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_refreshed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Last read (recorded in batches, service.tokens.usage) or (re)connected:
    # whether the refresher keeps it warm or only keeps its grant alive.
    last_used_at: Mapped[datetime] = _now_column()
    # A refresh in progress: the process that claimed it (its advisory lock
    # says whether it lives) and until when (service.tokens.lease).
    refresh_lease_owner: Mapped[int | None] = mapped_column(Integer)
    refresh_lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refresh_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_class: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()


class ApiClient(Base):
    """An internal service allowed to call /v1; only the key's SHA-256 is kept."""

    __tablename__ = "api_clients"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    key_hint: Mapped[str] = mapped_column(String(16), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)), nullable=False)
    # What the key reaches (service.apikeys.authenticator.Principal): these
    # instances (None: all), and all connections or only those it brought in.
    instances: Mapped[list[str] | None] = mapped_column(ARRAY(String(32)))
    connections: Mapped[str] = mapped_column(String(8), nullable=False, server_default="all")
    created_at: Mapped[datetime] = _now_column()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SigninAttempt(Base):
    """A sign-in attempt whose callback was accepted: its (signed) ``state`` is
    recorded as used until it would have expired (service.signin.attempts).
    Pending attempts are not stored."""

    __tablename__ = "authorizations"
    __table_args__ = (Index("ix_authorizations_expires_at", "expires_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    state_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    browser_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    connect_session_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connect_sessions.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = _now_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConnectLink(Base):
    """A one-time connect link made by an internal service for one person."""

    __tablename__ = "connect_sessions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    external_ref: Mapped[str] = mapped_column(String(255), nullable=False)
    return_url: Mapped[str] = mapped_column(Text, nullable=False)
    # The instance the person connects to (service.instances).
    instance: Mapped[str] = mapped_column(String(32), nullable=False)
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _now_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookMessage(Base):
    """The webhook outbox: written in the transaction that changed the state,
    delivered later with retries, so an event survives restarts and outages."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_next_attempt_at", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now_column()
    # NULL once delivered or given up; the deliverer claims rows due by this.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """Audit trail of lifecycle events. Never holds a token."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_connection_id", "connection_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = _now_column()
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    connection_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    client_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
