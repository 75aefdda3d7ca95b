"""HEAD is answered wherever GET is (RFC 9110 §9.3.2): as the GET, without its body.

FastAPI's routes declare GET only, so without this a HEAD met a 405 whose
``Allow`` header named HEAD. Here a HEAD request goes through the app as a GET
(same status, same headers, content-length included) and the body is dropped
on its way out; the access log, outside this, still records HEAD.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of a streamed body: nothing of it goes out
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
