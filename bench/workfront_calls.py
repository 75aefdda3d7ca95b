"""Benchmark 9: Workfront calls without handling sessions, through the proxy
and through the client library.

The proxy's overhead: the same Workfront call (the emulator's
``proj/search``) made directly with the session and through
``/v1/connections/{id}/workfront/...`` with an API key, paced at a moderate
rate (BENCH_PACED_CONNECTIONS connections, one call each per
BENCH_PACED_INTERVAL_MS on average), direct and proxied in turn, twice, in
the same run. Targets: added p50 <= 1 ms, added p99 <= 5 ms. Then each one's
peak (wrk, 16 connections, unpaced), for information.

The client library (``BrokerAuth`` on an ``httpx.Client`` calling the
emulator): broker calls for BENCH_WARM_CALLS Workfront calls once warm
(target 0 beyond the first), and the time from a killed session (every
session expired at the emulator) to the first successful call, which sees
the 401, refreshes once with If-Match and sends the call again.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import httpx
from common import (
    BrokerConfig,
    WrkResult,
    api_key,
    fresh_database,
    header,
    run_wrk,
    seed_connections,
    start_emulator,
    stopping,
    verdict,
)
from workfront_broker_client import BrokerAuth

SEARCH = "/attask/api/v21.0/proj/search"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
PACED_CONNECTIONS = int(os.environ.get("BENCH_PACED_CONNECTIONS", "8"))
PACED_INTERVAL_MS = float(os.environ.get("BENCH_PACED_INTERVAL_MS", "20"))
WARM_CALLS = int(os.environ.get("BENCH_WARM_CALLS", "10000"))
KILLS = int(os.environ.get("BENCH_KILLS", "20"))


def _broker_token_calls(metrics: str) -> float:
    """Token reads and forced refreshes the broker answered (every outcome)."""
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("broker_token_requests_total{")
    )


def _paced(base: str, path: str, **kwargs: object) -> WrkResult:
    return run_wrk(
        base,
        [path],
        connections=PACED_CONNECTIONS,
        seconds=SECONDS,
        interval_ms=PACED_INTERVAL_MS,
        **kwargs,  # type: ignore[arg-type]
    )


async def main() -> None:
    header("9. Workfront calls: the proxy's overhead, and the client library's broker calls")
    async with fresh_database() as database_url:
        emulator = await start_emulator(client_id="bench", client_secret="bench-secret-" + "s" * 20)
        with stopping(emulator):
            config = BrokerConfig(database_url, emulator.url)
            (connection_id,) = await seed_connections(config, 1)
            broker = await config.serve()
            with stopping(broker):
                proxy_key = await api_key(broker.url, "workfront:proxy")
                reader_key = await api_key(broker.url, "tokens:read")
                async with httpx.AsyncClient(base_url=broker.url) as client:
                    token = await client.get(
                        f"/v1/connections/{connection_id}/token",
                        headers={"Authorization": f"Bearer {reader_key}"},
                    )
                    session = token.json()["session_id"]
                proxied_path = f"/v1/connections/{connection_id}/workfront{SEARCH}"

                # Paced, in turn, twice: the machine's drift hits both alike.
                runs: dict[str, list[WrkResult]] = {"direct": [], "proxy": []}
                for _ in range(2):
                    runs["direct"].append(
                        _paced(emulator.url, SEARCH, header=("sessionID", session))
                    )
                    runs["proxy"].append(_paced(broker.url, proxied_path, auth=proxy_key))
                for name, results in runs.items():
                    for result in results:
                        if result.errors:
                            raise RuntimeError(f"{name}: {result.errors} errors")

                def median(name: str, p: float) -> float:
                    return statistics.median(r.pct(p) for r in runs[name])

                rate = statistics.median(r.rate for r in runs["proxy"])
                for p, target in ((50, 1.0), (99, 5.0)):
                    direct, proxied = median("direct", p), median("proxy", p)
                    added = proxied - direct
                    print(
                        f"p{p}: direct {direct:.2f} ms, proxied {proxied:.2f} ms"
                        f" (runs: {[round(r.pct(p), 2) for r in runs['direct']]} /"
                        f" {[round(r.pct(p), 2) for r in runs['proxy']]})"
                    )
                    verdict(
                        "proxy",
                        f"proxy adds <= {target:g} ms at p{p}, paced ~{rate:.0f} calls/s",
                        f"{added:+.2f} ms ({direct:.2f} -> {proxied:.2f} ms)",
                        added <= target,
                        baseline=f"direct p{p} {direct:.2f} ms",
                        added_ms=added,
                    )

                peak_direct = run_wrk(
                    emulator.url,
                    [SEARCH],
                    connections=16,
                    seconds=SECONDS,
                    header=("sessionID", session),
                )
                peak_proxy = run_wrk(
                    broker.url, [proxied_path], connections=16, seconds=SECONDS, auth=proxy_key
                )
                verdict(
                    "proxy",
                    "proxy peak throughput beside direct (information)",
                    f"{peak_proxy.rate:,.0f} calls/s proxied vs {peak_direct.rate:,.0f} direct"
                    f" ({peak_proxy.rate / peak_direct.rate:.2f} x; the emulator and the broker"
                    " share the machine's 2 cores)",
                    None,
                    baseline=f"direct {peak_direct.rate:,.0f} calls/s",
                )

                # The client library.
                async with httpx.AsyncClient(base_url=broker.url) as control_broker:
                    auth = BrokerAuth(broker.url, reader_key, str(connection_id))
                    with httpx.Client(base_url=emulator.url, auth=auth) as workfront:
                        workfront.get(SEARCH).raise_for_status()  # the first broker call
                        before = _broker_token_calls((await control_broker.get("/metrics")).text)
                        for _ in range(WARM_CALLS):
                            workfront.get(SEARCH).raise_for_status()
                        after = _broker_token_calls((await control_broker.get("/metrics")).text)
                        verdict(
                            "client",
                            f"client library: broker calls for {WARM_CALLS:,} warm Workfront"
                            " calls = 0",
                            f"{after - before:.0f}",
                            after - before == 0,
                            baseline="1 broker call before them",
                        )
                        recoveries = []
                        async with httpx.AsyncClient(base_url=emulator.url) as control:
                            for _ in range(KILLS):
                                killed = await control.post("/__emulator/expire-sessions")
                                killed.raise_for_status()
                                started = time.perf_counter()
                                workfront.get(SEARCH).raise_for_status()
                                recoveries.append((time.perf_counter() - started) * 1000)
                        verdict(
                            "client",
                            "client library: from a killed session to the first successful call"
                            " (information)",
                            f"median {statistics.median(recoveries):.1f} ms, worst"
                            f" {max(recoveries):.1f} ms over {KILLS} kills (a 401, one forced"
                            " refresh with If-Match, the call again)",
                            None,
                            baseline=f"a warm call: {median('direct', 50):.2f} ms p50 direct",
                        )


if __name__ == "__main__":
    asyncio.run(main())
