"""The Workfront emulator for the tests: served over real HTTP in a thread of
the test process, and driven through its control endpoints (settings, faults,
stats, the request log)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from service.emulator import EmulatorSettings, create_emulator_app
from service.web.serving import make_server
from tests.support import BROKER_BASE, CLIENT_ID, CLIENT_SECRET
from tests.support.processes import free_port


@dataclass
class Emulator:
    base_url: str
    control: httpx.AsyncClient

    async def configure(self, **changes: Any) -> None:
        response = await self.control.patch("/__emulator/settings", json=changes)
        response.raise_for_status()

    async def faults(self, *faults: dict[str, Any]) -> None:
        response = await self.control.post("/__emulator/faults", json={"faults": list(faults)})
        response.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        response = await self.control.get("/__emulator/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def requests(self) -> list[dict[str, Any]]:
        response = await self.control.get("/__emulator/requests")
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["requests"]
        return data

    async def presented_twice(self) -> list[str]:
        response = await self.control.get("/__emulator/refresh-token-reuse")
        response.raise_for_status()
        data: list[str] = response.json()["presented_twice"]
        return data


async def refresh_requests(emulator: Emulator) -> list[dict[str, object]]:
    """The refresh-token grants the emulator's token endpoint saw, in order."""
    return [r for r in await emulator.requests() if r["grant_type"] == "refresh_token"]


@contextmanager
def serve_emulator(**settings: Any) -> Iterator[str]:
    """The emulator, with the test broker registered (CLIENT_ID, its callback at
    BROKER_BASE, instance acme/my, unless ``settings`` say otherwise), over real
    HTTP in its own thread; its base URL."""
    port = free_port()
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": f"{BROKER_BASE}/oauth/callback",
        "domain": "acme",
        "lane": "my",
        **settings,
    }
    app = create_emulator_app(EmulatorSettings(**values))
    server = make_server(app, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("emulator did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@asynccontextmanager
async def reset_emulator(base_url: str) -> AsyncIterator[Emulator]:
    """The emulator at ``base_url`` reset (no grant, session, fault or changed
    setting left from before), with a control client."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as control:
        (await control.post("/__emulator/reset")).raise_for_status()
        yield Emulator(base_url=base_url, control=control)
