"""``BrokerRequestsAuth``: the same for ``requests`` (the ``requests`` extra)."""

from __future__ import annotations

from typing import Any

import requests

from workfront_broker_client._rejection import body_worth_reading, session_rejected
from workfront_broker_client._session import Session, SessionSource
from workfront_broker_client.errors import not_replayable


class BrokerRequestsAuth(requests.auth.AuthBase):
    """A ``requests`` auth: the broker's session headers on every request; a
    session Workfront rejected is refreshed once and the request sent once more."""

    def __init__(
        self,
        broker_url: str,
        api_key: str,
        connection_id: str,
        *,
        min_ttl: int = 60,
        timeout: float = 30.0,
    ) -> None:
        self._source = SessionSource(
            broker_url, api_key, str(connection_id), min_ttl=min_ttl, timeout=timeout
        )

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        session = self._source.current()
        request.headers.update(session.headers)
        request.register_hook("response", self._make_hook(session))  # type: ignore[no-untyped-call]
        return request

    def _make_hook(self, session: Session) -> Any:
        def retry_once(response: requests.Response, **kwargs: Any) -> requests.Response:
            body = response.content if body_worth_reading(response.headers) else None
            if not session_rejected(response.status_code, body):
                return response
            renewed = self._source.renewed(session)
            sent = response.request
            if sent.body is not None and not isinstance(sent.body, bytes | str):
                raise not_replayable(str(sent.method), sent.path_url)
            again = sent.copy()
            again.headers.update(renewed.headers)
            again.hooks = {"response": []}  # once only
            response.content  # noqa: B018 - read, so the connection can be reused
            response.raw.release_conn()
            retried: requests.Response = response.connection.send(again, **kwargs)
            retried.history.append(response)
            retried.request = again
            return retried

        return retry_once

    def close(self) -> None:
        self._source.close()
