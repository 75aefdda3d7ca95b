"""API clients (internal services): create one with its key, list them, revoke one."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update

from service.apikeys.keys import SCOPES, Scope, key_hint, new_api_key
from service.clock import now_utc
from service.crypto import lookup_digest
from service.db.audit import record_event
from service.db.engine import Database
from service.db.models import ApiClient

if TYPE_CHECKING:
    from service.apikeys.authenticator import ApiKeyAuthenticator, Principal

# Text without NUL (PostgreSQL cannot store it) nor other control characters,
# and at least one character that is not white space.
NOT_BLANK_NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"


# A new client's name and scopes, as the API and the CLI accept them. (No
# docstring: it would become the schema's description in the OpenAPI document.)
class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The pattern says in the schema what the validator below enforces.
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=NOT_BLANK_NO_CONTROL_CHARS,
        examples=["reporting-service"],
    )
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES), examples=[["tokens:read"]])
    instances: list[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")]] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The instances the key reaches (GET /v1/instances); left out: all.",
        examples=[["default"]],
    )
    connections: Literal["all", "own"] = Field(
        default="all",
        description=(
            "`own`: only the connections created or last re-authorized through this"
            " client's connect sessions; `all` (the default): every connection."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[Scope]) -> list[Scope]:
        # Duplicates dropped, the caller's order kept: the answer echoes the request.
        return list(dict.fromkeys(value))

    @field_validator("instances")
    @classmethod
    def _instances(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))


@dataclass(frozen=True)
class CreatedClient:
    id: uuid.UUID
    name: str
    scopes: list[Scope]
    instances: list[str] | None
    connections: str
    api_key: str = field(repr=False)  # the only time it exists in plain text


class UnknownClient(Exception):
    """No such client, or it is already revoked."""


async def create_client(
    database: Database, spec: ClientCreate, *, created_by: uuid.UUID | None
) -> CreatedClient:
    """Store a new client and return its key."""
    key = new_api_key()
    client_id = uuid.uuid4()
    async with database() as db, db.begin():
        db.add(
            ApiClient(
                id=client_id,
                name=spec.name,
                key_hash=lookup_digest(key),
                key_hint=key_hint(key),
                scopes=spec.scopes,
                instances=spec.instances,
                connections=spec.connections,
            )
        )
        await record_event(
            db,
            "client.created",
            client_id=created_by,
            new_client_id=str(client_id),
            name=spec.name,
            scopes=spec.scopes,
            instances=spec.instances,
            connections=spec.connections,
        )
    return CreatedClient(
        id=client_id,
        name=spec.name,
        scopes=spec.scopes,
        instances=spec.instances,
        connections=spec.connections,
        api_key=key,
    )


def widens(creator: Principal, spec: ClientCreate) -> bool:
    """Whether a client made to ``spec`` would reach what its creator cannot
    (a key limited to instances or to its own connections cannot widen itself)."""
    if creator.instances is not None and (
        spec.instances is None or not set(spec.instances) <= creator.instances
    ):
        return True
    # A creator limited to its own connections cannot make one that reaches others'.
    return creator.own_only and spec.connections != "own"


async def list_clients(database: Database) -> Sequence[ApiClient]:
    """Every client, revoked ones too, oldest first."""
    async with database() as db:
        return (await db.scalars(select(ApiClient).order_by(ApiClient.created_at))).all()


async def revoke_client(
    database: Database,
    authenticator: ApiKeyAuthenticator,
    client_id: uuid.UUID,
    *,
    revoked_by: uuid.UUID | None,
) -> None:
    """Revoke a client: its key stops working at once here, within a second elsewhere."""
    async with database() as db, db.begin():
        revoked = await db.scalar(
            update(ApiClient)
            .where(ApiClient.id == client_id, ApiClient.revoked_at.is_(None))
            .values(revoked_at=now_utc())
            .returning(ApiClient.id)
        )
        if revoked is None:
            raise UnknownClient
        await record_event(
            db,
            "client.revoked",
            client_id=revoked_by,
            revoked_client_id=str(client_id),
        )
    authenticator.forget()
