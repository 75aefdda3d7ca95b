"""The token-read baseline: a bare FastAPI app on the same server settings as `serve`.

`baseline_app.py PORT BODY_JSON` serves `GET /v1/connections/{connection_id}/token`
answering the constant BODY_JSON (a real token answer's size) the way a plain
FastAPI route does: the route returns the dict and FastAPI serializes it. Same
uvicorn config (service.web.serving.make_server: no access log, no server header)
and the same uvloop event loop as `python -m service serve`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import FastAPI

from service.web.serving import make_server, run_event_loop, serve_until_signalled


def create_app(body: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/connections/{connection_id}/token")
    async def token(connection_id: str) -> dict[str, Any]:
        return body

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    port = int(sys.argv[1])
    app = create_app(json.loads(sys.argv[2]))
    server = make_server(app, host="127.0.0.1", port=port, log_level="warning")
    run_event_loop(serve_until_signalled(server))


if __name__ == "__main__":
    main()
