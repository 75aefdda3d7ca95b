"""Everything a running broker holds, built and closed by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.apikeys.authenticator import ApiKeyAuthenticator
from service.config import Settings
from service.config_loading import require_database_url
from service.connections.lifecycle import ConnectionLifecycle
from service.connections.stored_keys import StoredKeyCheck
from service.crypto import TokenCipher
from service.db.engine import Database, autocommit, make_database, make_engine
from service.db.migrations import alembic_head
from service.metrics import start_instance_series
from service.proxy.relay import Relay
from service.signin.states import StateSigner
from service.tokens.issuer import TokenIssuer
from service.tokens.lease import LeaseOwner
from service.tokens.parts import TokenParts
from service.workers.webhooks import make_webhook_client
from service.workfront import Workfronts
from service.workfront.passthrough import open_passthrough_session


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    database: Database
    cipher: TokenCipher
    http: httpx.AsyncClient
    workfronts: Workfronts  # one client per configured instance
    # Autocommit reads and the refresh transaction (which opens its own).
    reader: AsyncEngine
    tokens: TokenIssuer
    connections: ConnectionLifecycle
    authenticator: ApiKeyAuthenticator
    schema_head: str | None
    stored_keys: StoredKeyCheck
    state_signer: StateSigner
    relay: Relay  # the Workfront proxy's calls


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Open every resource; close them in reverse order."""
    url = require_database_url(settings)
    start_instance_series(settings.instances)
    engine = make_engine(url, pool_size=settings.db_pool_size)
    # One connection of its own: this process's liveness lock for its refresh claims.
    # Autocommit: a transaction left open for the process's life would hold
    # back vacuum (and an idle-in-transaction timeout would end it).
    owner_engine = make_engine(url, pool_size=1)
    owner = LeaseOwner(autocommit(owner_engine))
    keeping = asyncio.create_task(owner.keep(), name="refresh-claims-owner")
    try:
        database = make_database(engine)
        cipher = TokenCipher.from_spec(settings.encryption_keys.get_secret_value())
        async with (
            make_webhook_client(settings) as http,
            Workfronts.open(settings) as workfronts,
            open_passthrough_session(settings) as passthrough,
        ):
            admin = settings.admin_api_key
            reader = autocommit(engine)
            parts = TokenParts.build(
                settings,
                reader=reader,
                database=database,
                cipher=cipher,
                workfronts=workfronts,
                owner=owner,
            )
            tokens = TokenIssuer(parts)
            yield Runtime(
                settings=settings,
                engine=engine,
                database=database,
                cipher=cipher,
                http=http,
                workfronts=workfronts,
                reader=reader,
                tokens=tokens,
                connections=ConnectionLifecycle(parts),
                authenticator=ApiKeyAuthenticator(
                    reader=reader,
                    admin_key=admin.get_secret_value() if admin else None,
                    cache_seconds=settings.hot_cache_seconds,
                    cache_entries=settings.hot_cache_max_entries,
                ),
                schema_head=alembic_head(),
                stored_keys=StoredKeyCheck(cipher),
                state_signer=StateSigner(
                    cipher,
                    lifetime_seconds=settings.signin_ttl_seconds,
                    instances=settings.instances,
                ),
                relay=Relay(settings=settings, tokens=tokens, http=passthrough),
            )
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
        # After the refreshes drained (the app's lifespan): its claims are free now.
        with contextlib.suppress(Exception):
            await owner.close()
        await owner_engine.dispose()
        await engine.dispose()
