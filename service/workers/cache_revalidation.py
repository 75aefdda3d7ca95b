"""Re-reads what the hot caches served (API keys and sessions), so an entry in
use is refreshed before it lapses and busy reads never wait for the database."""

from __future__ import annotations

import asyncio

from service.apikeys.authenticator import ApiKeyAuthenticator
from service.tokens.issuer import TokenIssuer
from service.workers.rounds import run_rounds


async def run_cache_revalidation(
    authenticator: ApiKeyAuthenticator, tokens: TokenIssuer, *, cache_seconds: float
) -> None:
    async def revalidate() -> bool:
        # Both run to the end even if one fails; then the failure is raised
        # for run_rounds to log and back off on.
        results = await asyncio.gather(
            authenticator.revalidate_cache(), tokens.revalidate_cache(), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return False

    # Two or more rounds per cache lifetime (a round waits a jittered half to
    # whole poll): an entry in use is re-read before it lapses.
    await run_rounds("hot-cache", revalidate, poll_seconds=cache_seconds / 2)
