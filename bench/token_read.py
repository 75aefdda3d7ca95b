"""Benchmark 1: token read throughput and latency against a bare FastAPI app.

One `serve` process (production settings; log level WARNING so it logs no line
per request, like the baseline), PostgreSQL, the emulator in its own process,
BENCH_POOL (1,000) connections with fresh sessions. wrk drives
`GET /v1/connections/{id}/token` over the pool with many keep-alive
connections; the baseline is bench/baseline_app.py (a bare FastAPI app, same
uvicorn/uvloop settings, constant JSON body of the same size) driven by the
same wrk script. Then both at half the broker's peak rate, paced by wrk's
delay() hook, for the p99 target. Database statements per read come from
the broker's own counter of hot-cache reads (a miss on the request path,
or a background revalidation round) and, as a cross-check, from PostgreSQL:
pg_stat_database transaction counts of the bench database (every read
statement is its own autocommit transaction) around the peak runs.
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx
from common import (
    PERCENTILES,
    PLOTS,
    BrokerConfig,
    Proc,
    WrkResult,
    _spawn,
    api_key,
    free_port,
    fresh_database,
    header,
    pg,
    require_wrk,
    run_wrk,
    seed_connections,
    start_emulator,
    stopping,
    verdict,
    wait_ready,
)

POOL = int(os.environ.get("BENCH_POOL", "1000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


async def _transactions(database_url: str) -> int:
    conn = await pg(database_url)
    try:
        value = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return int(value)


async def _counters(broker_url: str, database_url: str) -> dict[str, float]:
    """The broker's hot-cache reads by kind (miss: on the request path) and token
    reads answered, and PostgreSQL's transaction count for the bench database."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{broker_url}/metrics")).text
    totals = {"miss": 0.0, "revalidation": 0.0, "reads": 0.0}
    for line in text.splitlines():
        labels, _, value = line.rpartition(" ")
        if labels.startswith("broker_hot_cache_reads_total{"):
            totals[labels.split('kind="')[1].split('"')[0]] += float(value)
        elif labels == 'broker_token_requests_total{kind="token",outcome="ok"}':
            totals["reads"] = float(value)
    totals["transactions"] = await _transactions(database_url)
    return totals


def _baseline_body(answer: dict[str, str]) -> dict[str, str]:
    """The broker's answer shape and size, without its (emulated) session id."""
    return {**answer, "session_id": "x" * len(answer["session_id"])}


def _line(name: str, result: WrkResult) -> str:
    return (
        f"{name:<26} {result.rate:9.0f} req/s   p50 {result.pct(50):6.2f} ms"
        f"   p99 {result.pct(99):6.2f} ms   p99.9 {result.pct(99.9):6.2f} ms"
        f"   errors {result.errors}"
    )


def _plot(results: dict[str, WrkResult], rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = [50, 90, 99, 99.9, 99.99]
    positions = {p: -__import__("math").log10(1 - p / 100) for p in PERCENTILES}
    for ax, (title, keys) in zip(
        axes,
        (
            (
                f"paced at half the broker's peak ({rate:.0f} req/s)",
                ("baseline paced", "broker paced"),
            ),
            (f"peak, {CONNECTIONS} connections", ("baseline peak", "broker peak")),
        ),
        strict=True,
    ):
        for key in keys:
            result = results[key]
            xs = [positions[p] for p in PERCENTILES]
            ys = [result.pct(p) for p in PERCENTILES]
            ax.plot(xs, ys, marker="o", label=f"{key} ({result.rate:.0f} req/s)")
        ax.set_xticks([positions[p] for p in ticks], [f"p{p:g}" for p in ticks])
        ax.set_ylabel("latency (ms)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].axhline(5, color="red", linestyle=":", linewidth=1)
    fig.suptitle("GET /v1/connections/{id}/token: broker vs bare FastAPI (wrk)")
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "token_read_latency.png", dpi=110)
    plt.close(fig)


async def main() -> None:
    require_wrk()
    header(f"1. token read: one serve process, wrk, {CONNECTIONS} keep-alive connections")
    async with fresh_database() as database_url:
        emulator = await start_emulator(
            client_id="bench",
            client_secret="bench-secret-" + "s" * 20,
        )
        with stopping(emulator):
            config = BrokerConfig(database_url, emulator.url)
            ids = await seed_connections(config, POOL)
            broker = await config.serve()
            with stopping(broker):
                key = await api_key(broker.url, "tokens:read")
                paths = [f"/v1/connections/{cid}/token" for cid in ids]
                async with httpx.AsyncClient(base_url=broker.url) as client:
                    answer = await client.get(paths[0], headers={"Authorization": f"Bearer {key}"})
                    answer.raise_for_status()
                body = _baseline_body(answer.json())
                port = free_port()
                baseline = Proc(
                    _spawn(
                        [str(__import__("pathlib").Path(__file__).with_name("baseline_app.py")),
                         str(port), json.dumps(body)],
                        dict(os.environ),
                    ),
                    f"http://127.0.0.1:{port}",
                )  # fmt: skip
                await wait_ready(baseline.url, "/readyz", baseline.process)
                with stopping(baseline):
                    await _run(broker, baseline, paths, key, database_url, len(answer.content))


async def _run(
    broker: Proc, baseline: Proc, paths: list[str], key: str, database_url: str, size: int
) -> None:
    print(f"pool of {len(paths)} connections; answer {size} bytes, baseline the same")
    # Warm-up: both servers, and every connection of the pool read once.
    run_wrk(baseline.url, paths, connections=CONNECTIONS, seconds=3, threads=1)
    run_wrk(broker.url, paths, connections=CONNECTIONS, seconds=3, auth=key, threads=1)

    best: dict[str, WrkResult] = {}
    window = {"miss": 0.0, "revalidation": 0.0, "reads": 0.0, "transactions": 0.0}
    for _ in range(ROUNDS):  # interleaved, so a noisy neighbour hits both alike
        result = run_wrk(baseline.url, paths, connections=CONNECTIONS, seconds=SECONDS, threads=1)
        if "baseline peak" not in best or result.rate > best["baseline peak"].rate:
            best["baseline peak"] = result
        # Warm again (the pause before let every entry lapse), then count
        # inside a window of the run: PostgreSQL's counts arrive up to a
        # second late, equally at both ends while the load goes on.
        run_wrk(broker.url, paths, connections=CONNECTIONS, seconds=2, auth=key, threads=1)
        running = asyncio.create_task(
            asyncio.to_thread(
                run_wrk, broker.url, paths, connections=CONNECTIONS, seconds=SECONDS + 4,
                auth=key, threads=1,
            )
        )  # fmt: skip
        await asyncio.sleep(2)
        start = await _counters(broker.url, database_url)
        await asyncio.sleep(SECONDS)
        end = await _counters(broker.url, database_url)
        for name in window:
            window[name] += end[name] - start[name]
        result = await running
        if "broker peak" not in best or result.rate > best["broker peak"].rate:
            best["broker peak"] = result
    window_seconds = ROUNDS * SECONDS
    for name in ("baseline peak", "broker peak"):
        print(_line(name, best[name]))

    half = best["broker peak"].rate / 2
    paced_connections = 50
    interval_ms = paced_connections / half * 1000
    for name, target, auth in (("baseline paced", baseline, None), ("broker paced", broker, key)):
        # Warm first: after the other server's turn every cache entry has lapsed,
        # and a thousand cold reads at once are not the steady state.
        run_wrk(target.url, paths, connections=CONNECTIONS, seconds=2, auth=auth, threads=1)
        best[name] = run_wrk(
            target.url,
            paths,
            connections=paced_connections,
            seconds=SECONDS,
            auth=auth,
            interval_ms=interval_ms,
            threads=1,
        )
        print(_line(name, best[name]))

    peak, base = best["broker peak"], best["baseline peak"]
    ratio = peak.rate / base.rate
    verdict(
        "token_read",
        "token-read throughput >= 0.7 x bare FastAPI",
        f"{peak.rate:.0f} req/s = {ratio:.2f} x",
        ratio >= 0.7 and peak.errors == 0,
        baseline=f"{base.rate:.0f} req/s",
        broker_rate=peak.rate,
        baseline_rate=base.rate,
        broker_p50=peak.pct(50),
        broker_p99=peak.pct(99),
        baseline_p50=base.pct(50),
        baseline_p99=base.pct(99),
    )
    paced, paced_base = best["broker paced"], best["baseline paced"]
    verdict(
        "token_read",
        "p99 at half the broker's peak rate <= 5 ms",
        f"p99 {paced.pct(99):.2f} ms (p50 {paced.pct(50):.2f} ms) at {paced.rate:.0f} req/s",
        paced.pct(99) <= 5 and paced.errors == 0,
        baseline=f"p99 {paced_base.pct(99):.2f} ms at {paced_base.rate:.0f} req/s",
        broker_p50=paced.pct(50),
        broker_p99=paced.pct(99),
        baseline_p99=paced_base.pct(99),
        rate=paced.rate,
    )
    reads, misses = window["reads"], window["miss"]
    verdict(
        "token_read",
        "SQL statements on the request path per warm token read (target 0)",
        f"{misses / reads:.5f} ({misses:.0f} cache misses in {reads:.0f} reads;"
        f" background revalidation {window['revalidation'] / window_seconds:.1f} queries/s)",
        misses / reads < 0.001,
        baseline="0",
    )
    verdict(
        "token_read",
        "all statements PostgreSQL ran for the bench database, per read",
        f"{window['transactions'] / reads:.5f} ({window['transactions']:.0f} in"
        f" {window_seconds} s for {reads:.0f} reads: revalidation, refresher, this bench's own)",
        None,
    )
    _plot(best, half)


if __name__ == "__main__":
    asyncio.run(main())
