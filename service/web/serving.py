"""Running uvicorn servers, one or several in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from service.web.connection_guard import default_max_connections, guarded_protocol

# Descriptors kept for everything but client connections: the database pool,
# Workfront's and webhooks' connections, logs, the event loop's own.
_RESERVED_FDS = 128


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the caller.

    Several servers share one loop in ``dev``; each would otherwise install its
    own handlers and only the last would hear Ctrl-C.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    shutdown_timeout: int | None = None,
    header_timeout: float = 10.0,
    max_connections: int | None = None,
) -> Server:
    """``max_connections`` None: what the open-files limit leaves (service.web.connection_guard)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        # Our middleware logs path-only lines; uvicorn's would print query
        # strings, which carry OAuth codes and state.
        access_log=False,
        # No logging config of uvicorn's own: its loggers propagate to the root
        # handler, so its lines come out in our format with our context fields.
        log_config=None,
        lifespan="on",
        server_header=False,
        # After SIGTERM, requests in flight get this long to finish; then they
        # are cancelled and the application's own shutdown runs.
        timeout_graceful_shutdown=shutdown_timeout,
        # Silent and slow sockets are closed, connections bounded.
        http=guarded_protocol(
            header_timeout=header_timeout,
            max_connections=max_connections or default_max_connections(reserved=_RESERVED_FDS),
        ),
    )
    return Server(config)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (uvicorn[standard] brings it).

    uvicorn picks uvloop itself only in ``uvicorn.run``; we drive the servers
    from our own loop, so we choose it here.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve_until_signalled(
    *servers: Server, on_signal: Callable[[], None] | None = None
) -> None:
    """Serve until SIGTERM/SIGINT: then stop accepting and finish gracefully.

    ``on_signal`` runs at the first signal (the broker stops its background
    work there). A second signal skips the wait for requests in flight.
    """
    loop = asyncio.get_running_loop()
    signalled = False

    def stop() -> None:
        nonlocal signalled
        for server in servers:
            if signalled:
                server.force_exit = True
            server.should_exit = True
        if not signalled and on_signal is not None:
            on_signal()
        signalled = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


def dump_tasks() -> None:
    """SIGUSR1: write where every task of the process is waiting to stderr.

    For a process that answers nothing: if this prints, the event loop runs
    and the stacks show which await is stuck; if it does not, something
    blocks the loop itself (then ``py-spy dump`` shows where).
    """
    tasks = asyncio.all_tasks()
    print(f"--- SIGUSR1: {len(tasks)} tasks ---", file=sys.stderr)
    for task in tasks:
        print(f"task {task.get_name()}:", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    print("--- end of tasks ---", file=sys.stderr, flush=True)
