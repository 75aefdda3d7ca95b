"""Connecting, re-authorizing and deleting a connection.

Each change is one transaction that also writes its audit event and webhook
message (service.connections.events), so they exist exactly when the change
does. This process's cached session is dropped after the commit: a read
before it could store the old session again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import now_utc
from service.connections.events import record_connection_event
from service.db import outbox
from service.db.audit import record_event
from service.db.models import STATUS_ACTIVE, Connection
from service.tokens.issued import ConnectionNotFound
from service.tokens.parts import TokenParts
from service.tokens.sealing import ACCESS
from service.tokens.token_columns import seal_tokens
from service.workfront import TokenSet, WorkfrontUser


class ConnectionLifecycle:
    def __init__(self, parts: TokenParts) -> None:
        self._parts = parts

    async def store_connection(
        self,
        *,
        instance: str,
        user: WorkfrontUser,
        tokens: TokenSet,
        external_ref: str | None,
        brought_by: uuid.UUID | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """Create the user's connection, or update it on re-authorization.

        ``brought_by``: the API client whose connect link this sign-in came
        through (None: the operator page); it then reaches the connection
        when limited to its own.

        Returns (connection id, created). One transaction: a failure stores
        nothing. (A connect link is claimed by the sign-in before the code is
        exchanged: service.signin.links.)
        """
        for _attempt in range(2):
            try:
                async with self._parts.database() as db, db.begin():
                    row = await db.scalar(
                        select(Connection)
                        .where(Connection.instance == instance, Connection.user_id == user.user_id)
                        .with_for_update()
                    )
                    if row is None:
                        made = await self._create(
                            db, instance, user, tokens, external_ref, brought_by
                        )
                        return made, True
                    recovered = row.status != STATUS_ACTIVE
                    seal_tokens(
                        self._parts.sealer, self._parts.schedule, row.id, tokens, now_utc()
                    ).apply_to(row)
                    row.status = STATUS_ACTIVE
                    row.last_used_at = now_utc()  # re-authorized: in use, kept warm
                    row.customer_id = user.customer_id
                    if external_ref is not None:
                        row.external_ref = external_ref
                    if brought_by is not None:
                        row.brought_by = brought_by  # last re-authorized through its link
                    await record_event(
                        db, "connection.reauthorized", connection_id=row.id, recovered=recovered
                    )
                    if recovered:
                        await self._row_event(db, outbox.CONNECTION_RECOVERED, row)
                    reauthorized = row.id
                # The old session may be cached; the re-authorization replaced it.
                self._parts.reads.changed_here(reauthorized)
                return reauthorized, False
            except IntegrityError:
                # Two callbacks for one new user raced on the unique key: retry as an update.
                continue
        raise RuntimeError("could not store the connection after a concurrent insert")

    async def _create(
        self,
        db: AsyncSession,
        instance: str,
        user: WorkfrontUser,
        tokens: TokenSet,
        external_ref: str | None,
        brought_by: uuid.UUID | None,
    ) -> uuid.UUID:
        connection_id = uuid.uuid4()
        now = now_utc()
        columns = seal_tokens(self._parts.sealer, self._parts.schedule, connection_id, tokens, now)
        values: dict[str, Any] = {
            "id": connection_id,
            "instance": instance,
            "user_id": user.user_id,
            "customer_id": user.customer_id,
            "external_ref": external_ref,
            "brought_by": brought_by,
            "status": STATUS_ACTIVE,
            "token_version": 1,
            "created_at": now,
            "last_used_at": now,
            **columns.values(),
        }
        await db.execute(insert(Connection).values(**values))
        await record_connection_event(
            db,
            self._parts.settings,
            outbox.CONNECTION_CREATED,
            connection_id=connection_id,
            user_id=user.user_id,
            instance=instance,
            external_ref=external_ref,
        )
        return connection_id

    async def delete_connection(
        self,
        connection_id: uuid.UUID,
        *,
        client_id: uuid.UUID | None,
        reach: Callable[[str, uuid.UUID | None], bool] | None = None,
    ) -> None:
        """Delete the row (the tokens go with it), then try Workfront's logout."""
        async with self._parts.database() as db, db.begin():
            row = await db.scalar(
                select(Connection).where(Connection.id == connection_id).with_for_update()
            )
            if row is None or (reach is not None and not reach(row.instance, row.brought_by)):
                raise ConnectionNotFound
            try:
                access_token: str | None = self._parts.sealer.open(row, ACCESS)
            except Exception:  # a row we cannot decrypt is still deletable
                access_token = None
            await db.execute(delete(Connection).where(Connection.id == connection_id))
            await self._row_event(db, outbox.CONNECTION_DELETED, row, client_id=client_id)
        # Committed: this process stops serving it at once.
        self._parts.reads.changed_here(connection_id)
        if access_token is not None and row.instance in self._parts.workfronts:
            await self._parts.workfronts[row.instance].logout(access_token)

    async def _row_event(
        self,
        db: AsyncSession,
        event_type: str,
        row: Connection,
        *,
        client_id: uuid.UUID | None = None,
    ) -> None:
        await record_connection_event(
            db,
            self._parts.settings,
            event_type,
            connection_id=row.id,
            user_id=row.user_id,
            instance=row.instance,
            external_ref=row.external_ref,
            client_id=client_id,
        )
