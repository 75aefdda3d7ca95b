"""Prometheus metrics. Labels are closed sets: never an id, never a token."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TOKEN_REQUESTS = Counter(
    "broker_token_requests_total",
    "Token and forced-refresh requests by outcome.",
    ["kind", "outcome"],
)
REFRESHES = Counter(
    "broker_refreshes_total",
    "Upstream refresh attempts by outcome (ok, transient, revoked).",
    ["outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "broker_upstream_seconds",
    "Latency of calls to Workfront.",
    ["call"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
