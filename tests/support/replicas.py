"""Real `serve` replicas that a test kills with SIGKILL and starts again.

On fixed ports, so a restarted replica comes back at its address; every
process ever started is stopped at the end. Shared by the chaos and
kill-storm tests (tests/system).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service.crypto import TokenCipher, row_aad
from tests.support.processes import free_port


class Replicas:
    """Real serve processes on fixed ports, so a restarted replica comes back at its address."""

    def __init__(self, env: dict[str, str], log_dir: Path, count: int) -> None:
        self.count = count
        self.env = env
        self.log_dir = log_dir
        self.ports = [free_port() for _ in range(self.count)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.spawned: list[subprocess.Popen[bytes]] = []  # every process ever started
        self.kills: list[float] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, index: int) -> None:
        log = (self.log_dir / f"replica-{index}.log").open("ab")
        previous = self.processes[index]
        assert previous is None or previous.poll() is not None, "replica still running"
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.ports[index])],
            env=self.env,
            cwd=self.log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[index] = process
        self.spawned.append(process)

    def kill(self, index: int) -> None:
        process = self.processes[index]
        if process is not None and process.poll() is None:
            self.kills.append(time.time())
            process.send_signal(signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        # Every process ever spawned: a leaked replica would keep refreshing
        # this database with chaos settings and disturb later tests.
        for process in self.spawned:
            if process.poll() is None:
                process.terminate()
        for process in self.spawned:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def wait_ready(self, client: httpx.AsyncClient, index: int, within: float = 30) -> None:
        deadline = time.monotonic() + within
        last = "no answer"
        while time.monotonic() < deadline:
            process = self.processes[index]
            if process is not None and process.poll() is not None:
                last = f"exited with {process.returncode}"
                break
            try:
                answer = await client.get(f"{self.urls[index]}/readyz")
                if answer.status_code == 200:
                    return
                last = f"/readyz {answer.status_code} {answer.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
            await asyncio.sleep(0.1)
        process = self.processes[index]
        if process is not None and process.poll() is None:
            # Alive but not ready: does its loop answer at all (healthz needs
            # no database), and where is every task waiting (SIGUSR1)?
            try:
                health = await client.get(f"{self.urls[index]}/healthz", timeout=2)
                last += f"; /healthz {health.status_code}"
            except httpx.TransportError as exc:
                last += f"; /healthz {type(exc).__name__}"
            process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(1.5)
            last += f"; {_process_state(process.pid)}"
        tail = (self.log_dir / f"replica-{index}.log").read_text()[-12000:]
        raise AssertionError(f"replica {index} not ready ({last}); its log ends:\n{tail}")


def _process_state(pid: int) -> str:
    """Where a process that answers nothing is: its kernel state and wait
    channel, and its Python stacks when py-spy is installed (make bench)."""
    proc = Path(f"/proc/{pid}")
    try:
        state = next(
            line for line in (proc / "status").read_text().splitlines() if line.startswith("State")
        )
        wchan = (proc / "wchan").read_text()
    except OSError as exc:
        return f"no /proc entry ({exc})"
    found = f"{state.split(':', 1)[1].strip()}, wchan {wchan or '-'}"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(spy).exists():
        dump = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
        found += f"\npy-spy dump:\n{dump.stdout}{dump.stderr}"
    return found


def account_for_losses(
    rows: list[asyncpg.Record],
    requests: list[dict[str, Any]],
    cipher: TokenCipher,
    *,
    kills: list[float],
    lost_tokens: set[Any],
) -> tuple[int, int]:
    """Explain every connection that needs re-authorization by the one documented
    window: (lost to an injected lost response, lost to a replica killed between
    Workfront's answer and the commit). Fails on any other loss, and on a
    half-written row (both tokens must decrypt under their own row binding)."""
    window_lost = window_kill = 0
    for row in rows:
        cid: uuid.UUID = row["id"]
        access = cipher.decrypt(
            row["access_token_enc"], aad=row_aad("connections", cid, "access_token")
        )
        refresh = cipher.decrypt(
            row["refresh_token_enc"], aad=row_aad("connections", cid, "refresh_token")
        )
        assert access
        assert refresh
        if row["status"] == "active":
            continue
        if refresh in lost_tokens:
            window_lost += 1
            continue
        # Otherwise a replica was killed between Workfront's answer and the commit.
        answered = [
            r for r in requests if r.get("refresh_token") == refresh and r.get("status") == 200
        ]
        assert answered, f"{cid} needs re-authorization but its token was never answered"
        first = answered[0]["at"]
        assert any(first - 0.5 <= kill <= first + 2.0 for kill in kills), (
            f"{cid} lost its token outside the documented window"
        )
        window_kill += 1
    return window_lost, window_kill
