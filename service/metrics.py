"""Prometheus metrics. Labels are closed sets: never an id, never a token."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

_Metric = TypeVar("_Metric", Counter, Histogram)
_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: _Metric, *values: str) -> _Metric:
    """``metric.labels(*values)`` (in the labels' declared order), looked up
    once: ``labels()`` costs more than the increment on a busy path. Label
    values are closed sets, so this stays small."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return cast(_Metric, found)


TOKEN_REQUESTS = Counter(
    "broker_token_requests_total",
    "Token and forced-refresh requests by outcome.",
    ["kind", "outcome"],
)
REFRESHES = Counter(
    "broker_refreshes_total",
    "Upstream refresh attempts by outcome (ok, transient, revoked, lost) and instance.",
    ["outcome", "instance"],
)
REFRESH_OUTCOMES = ("ok", "transient", "revoked", "lost")
for _kind in ("token", "refresh"):
    TOKEN_REQUESTS.labels(kind=_kind, outcome="stored-token-unreadable")
UPSTREAM_LATENCY = Histogram(
    "broker_upstream_seconds",
    "Latency of the broker's own calls to Workfront, by call and instance.",
    ["call", "instance"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONNECTIONS = Gauge("broker_connections", "Connections by status.", ["status"])
SOONEST_EXPIRY = Gauge(
    "broker_soonest_expiry_seconds",
    "Seconds until the soonest session of an active connection lapses.",
)
REFRESHER_LAG = Histogram(
    "broker_refresher_lag_seconds",
    "How late a due refresh was claimed.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
WEBHOOK_DELIVERIES = Counter(
    "broker_webhook_deliveries_total", "Webhook delivery attempts by outcome.", ["outcome"]
)
for _outcome in ("delivered", "retry", "given_up"):
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)
HOT_CACHE_READS = Counter(
    "broker_hot_cache_reads_total",
    "Database reads of the hot-path caches (cache: keys, sessions): a miss on the"
    " request path, or a background revalidation round.",
    ["cache", "kind"],
)
# The proxy (service.proxy): method is one of GET, POST, PUT, DELETE; status
# the answer's class (2xx ... 5xx), the broker's own refusals included.
PROXY_REQUESTS = Counter(
    "broker_proxy_requests_total",
    "Calls through the Workfront proxy by instance, method and status class.",
    ["instance", "method", "status"],
)
PROXY_UPSTREAM_LATENCY = Histogram(
    "broker_proxy_upstream_seconds",
    "Time from sending a proxied call to Workfront's answer starting.",
    ["instance"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
PROXY_RETRIES = Counter(
    "broker_proxy_retries_total",
    "Proxied calls sent once more after Workfront said their session was dead.",
    ["instance"],
)


def start_instance_series(instances: Iterable[str]) -> None:
    """The series alerts watch with increase() exist from the start at 0, for
    every configured instance: a series born at 1 shows no increase, so a
    first event would go unseen."""
    for instance in instances:
        for outcome in REFRESH_OUTCOMES:
            REFRESHES.labels(outcome=outcome, instance=instance)
