"""`make bench`: the benchmarks in turn, then one table of every target.

Each benchmark is its own process (a failure in one still leaves the others'
results). Everything printed is also written to docs/bench/output.txt, the
verdicts to docs/bench/results.json, the plots to docs/bench/*.png.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from common import PLOTS, REPO, RESULTS, WRK

SCRIPTS = (
    "token_read.py",
    "herd.py",
    "refresh_throughput.py",
    "http_clients.py",
    "scale.py",
    "refresh_economy.py",
    "burst.py",
    "signin_flood.py",
    "workfront_calls.py",
)


def _machine() -> str:
    cores = os.cpu_count()
    memory = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return (
        f"{platform.machine()}, {cores} cores, {memory} memory, Python {platform.python_version()}"
    )


def main() -> int:
    if WRK is None:
        print(
            "wrk is not installed: the load must come from a generator outside Python.\n"
            "Install it (Debian/Ubuntu: apt-get install wrk) and run `make bench` again.",
            file=sys.stderr,
        )
        return 2
    PLOTS.mkdir(parents=True, exist_ok=True)
    RESULTS.unlink(missing_ok=True)
    output = PLOTS / "output.txt"
    with output.open("w") as log:
        head = f"make bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {_machine()}"
        print(head, flush=True)
        log.write(head + "\n")
        failed = []
        for script in SCRIPTS:
            process = subprocess.Popen(
                [sys.executable, "-u", str(REPO / "bench" / script)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert process.stdout is not None
            for line in process.stdout:
                print(line, end="", flush=True)
                log.write(line)
            if process.wait() != 0:
                failed.append(script)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        lines = ["", "== summary =="]
        for bench, rows in results.items():
            for row in rows:
                baseline = f" | baseline: {row['baseline']}" if row["baseline"] else ""
                lines.append(
                    f"[{row['verdict']}] {bench}: {row['target']}: {row['measured']}{baseline}"
                )
        if failed:
            lines.append(f"FAILED to run: {', '.join(failed)}")
        for line in lines:
            print(line)
            log.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
