"""Real `python -m service …` processes for tests: start, wait until ready, stop;
the CLI run as a user runs it; free ports for them.

Used wherever a test needs what only a separate process shows: several
replicas on one database, signals, the JSON log a process writes, a schema
served over real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from service.config import Settings
from tests.support import ADMIN_KEY, REPO

READY_WITHIN_SECONDS = 30


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port outside the ephemeral range.

    A port the kernel hands out for "port 0" can be taken by any outbound
    connection (to PostgreSQL, between test clients and replicas) while a
    killed replica is down, and the replica then cannot come back on it.
    """
    low, _ = _ephemeral_range()
    pool = range(max(1024, low - 12000), low)
    for _ in range(200):
        port = random.choice(pool)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def env_without_broker(**extra: str) -> dict[str, str]:
    """This process's environment minus every BROKER_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` as a user runs it; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def serve_env(database_url: str, settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `serve` process configured like ``settings`` (its
    instance ``default``)."""
    default = settings.instances["default"]
    return {
        **os.environ,
        "BROKER_DATABASE_URL": database_url,
        "BROKER_WORKFRONT_URL": default.workfront_url,
        "BROKER_WORKFRONT_DOMAIN": "acme",
        "BROKER_WORKFRONT_LANE": "my",
        "BROKER_CLIENT_ID": default.client_id,
        "BROKER_CLIENT_SECRET": default.client_secret.get_secret_value(),
        "BROKER_REDIRECT_URI": settings.redirect_uri,
        "BROKER_ENCRYPTION_KEYS": settings.encryption_keys.get_secret_value(),
        "BROKER_ADMIN_API_KEY": ADMIN_KEY,
        **extra,
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m service ARGS`, its stdout and stderr into ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers 200; fails with the process's log if it exits or never does."""
    deadline = time.monotonic() + READY_WITHIN_SECONDS
    async with httpx.AsyncClient() as probe:
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if (await probe.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} did not answer: {log.read_text()}"
            await asyncio.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@asynccontextmanager
async def serve_processes(
    count: int,
    *,
    database_url: str,
    settings: Settings,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[list[str]]:
    """Real `serve` processes on one database, ready; their logs are serve-N.log."""
    env = serve_env(database_url, settings, **(extra_env or {}))
    ports = [free_port() for _ in range(count)]
    logs = [log_dir / f"serve-{index}.log" for index in range(count)]
    processes = [
        start(["serve", "--port", str(port)], env, log)
        for port, log in zip(ports, logs, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, process, log in zip(urls, processes, logs, strict=True):
            await wait_ready(f"{url}/readyz", process, log)
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            stop(process)


@asynccontextmanager
async def one_serve(
    settings: Settings, database_url: str, log: Path, **extra: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """One ready `serve` process and its URL, for tests that signal or inspect it."""
    port = free_port()
    process = start(["serve", "--port", str(port)], serve_env(database_url, settings, **extra), log)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(f"{url}/readyz", process, log)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
