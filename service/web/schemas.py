"""Request and response bodies of the internal API (suffix says the role)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from service.apikeys.keys import Scope
from service.instances import Instances
from service.workfront.protocol import SESSION_HEADER

if TYPE_CHECKING:
    from service.tokens.issued import IssuedToken

# Text that reaches PostgreSQL must not carry NUL (it cannot store it) nor other
# control characters (they only ever come from a mistake or an attack).
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"

ConnectionStatus = Literal["active", "needs_reauth"]


class TokenOut(BaseModel):
    connection_id: uuid.UUID
    session_id: str = Field(
        description="Workfront sessionID: send it as the `sessionID` header of API calls.",
        examples=["<sessionID>"],
    )
    token_type: Literal["sessionID"] = "sessionID"
    expires_at: datetime = Field(description="When the session is expected to lapse (UTC).")
    workfront_url: str = Field(examples=["https://acme.my.workfront.com"])
    instance: str = Field(
        description="The Workfront instance (GET /v1/instances) the session is for.",
        examples=["default"],
    )
    user_id: str = Field(description="The Workfront user the session belongs to.")
    session_version: str = Field(
        description=(
            "Opaque version of this session, also the answer's `ETag` (quoted). A caller"
            " whose Workfront call was rejected with this session forces a refresh with"
            " `If-Match: <ETag>`: the broker refreshes only if the connection still holds"
            " this session, and otherwise answers the newer one at once."
        ),
        examples=["7"],
    )
    headers: dict[str, str] = Field(
        description=(
            "Exactly the headers to put on Workfront API calls made with this session,"
            " so a caller need not know their names."
        ),
        examples=[{"sessionID": "<sessionID>"}],
    )


def token_json(issued: IssuedToken, instances: Instances) -> bytes:
    """A TokenOut body, serialized directly: byte for byte what pydantic would write.

    The token read is the hot path, and building and serializing a TokenOut
    costs more CPU than the rest of a cached read; tests/test_api.py checks
    the body against the model.
    """
    return orjson.dumps(
        {
            "connection_id": str(issued.connection_id),
            "session_id": issued.session_id,
            "token_type": "sessionID",
            "expires_at": issued.expires_at,  # Z for UTC, as pydantic writes it
            "workfront_url": instances[issued.instance].workfront_url,
            "instance": issued.instance,
            "user_id": issued.user_id,
            "session_version": issued.session_version,
            "headers": {SESSION_HEADER: issued.session_id},
        },
        option=orjson.OPT_UTC_Z,
    )


class InstanceOut(BaseModel):
    name: str = Field(examples=["prod"])
    workfront_url: str = Field(examples=["https://acme.my.workfront.com"])
    domain: str | None = Field(description="What the callback must carry.", examples=["acme"])
    lane: str | None = Field(examples=["my"])


class ConnectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: str
    customer_id: str | None
    wid: str | None
    external_ref: str | None
    status: ConnectionStatus
    expires_at: datetime
    last_refreshed_at: datetime | None
    next_refresh_at: datetime | None
    refresh_failures: int = Field(description="Consecutive failed refreshes.")
    instance: str = Field(description="The Workfront instance (GET /v1/instances).")
    last_error_class: Literal["transient", "grant_revoked"] | None = Field(
        default=None, description="What kind of failure the last refresh was, if it failed."
    )
    created_at: datetime


class ClientOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    scopes: list[Scope]
    instances: list[str] | None = Field(description="The instances it reaches (null: all).")
    connections: Literal["all", "own"]
    key_hint: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    revoked_at: datetime | None


class ClientCreated(BaseModel):
    id: uuid.UUID
    name: str
    scopes: list[Scope]
    instances: list[str] | None = Field(description="The instances it reaches (null: all).")
    connections: Literal["all", "own"]
    api_key: str = Field(
        description="Shown this once; only its hash is stored.", examples=["wtb_<key>"]
    )


class ConnectSessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_ref: str = Field(
        min_length=1,
        max_length=255,
        pattern=NO_CONTROL_CHARS,
        description="Your reference for the person (e.g. your user id); the connection carries it.",
        examples=["user-4711"],
    )
    return_url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=NO_CONTROL_CHARS,
        description="Where the browser ends; must start with a BROKER_ALLOWED_RETURN_URLS prefix.",
        examples=["https://app.example.com/settings/workfront"],
    )
    instance: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[a-z0-9-]{1,32}$",
        description=(
            "The Workfront instance the person connects to (GET /v1/instances); may be"
            " left out when only one is configured."
        ),
        examples=["default"],
    )


class ConnectSessionOut(BaseModel):
    id: uuid.UUID
    url: str = Field(description="One-time link to give to the person.")
    expires_at: datetime
