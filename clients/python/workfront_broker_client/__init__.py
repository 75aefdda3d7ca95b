"""Workfront API calls for internal services, with sessions from the Workfront token broker.

    auth = BrokerAuth("https://broker.internal", api_key, connection_id)
    with httpx.Client(base_url=workfront_url, auth=auth) as workfront:
        projects = workfront.get("/attask/api/v21.0/proj/search").json()

``BrokerAuth`` (httpx, threads and tasks), ``BrokerRequestsAuth``
(``requests``, with the ``requests`` extra); errors ``BrokerError``,
``NeedsReauth`` and ``BrokerUnavailable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workfront_broker_client.errors import BrokerError, BrokerUnavailable, NeedsReauth
from workfront_broker_client.httpx_auth import BrokerAuth

if TYPE_CHECKING:
    from workfront_broker_client.requests_auth import BrokerRequestsAuth

__all__ = ["BrokerAuth", "BrokerError", "BrokerRequestsAuth", "BrokerUnavailable", "NeedsReauth"]


def __getattr__(name: str) -> Any:
    # requests is an extra: imported only when asked for.
    if name == "BrokerRequestsAuth":
        from workfront_broker_client.requests_auth import BrokerRequestsAuth

        return BrokerRequestsAuth
    raise AttributeError(name)
