"""Prometheus metrics of units of work, requests, retries and the connection pool (``/metrics``).

Every label has a bounded set of values: ``kind`` (request, command,
business), ``outcome`` (:data:`OUTCOMES`), the request's *route name* (from
the application's configuration, ``unmatched`` otherwise, never the path),
its method (the standard ones, else ``OTHER``) and its status class
(``2xx`` ...). Nothing a client sends becomes a label.

Multi-process servers (gunicorn workers): set ``PROMETHEUS_MULTIPROC_DIR``
to an empty directory before the server starts; each process then writes its
values there and ``/metrics`` adds them up (prometheus_client's multiprocess
mode; pool gauges are summed over the live processes). See
docs/observability.md and gunicorn.conf.py.

Settings (``[app:main]``):

``myapp.metrics``
    ``true`` (default) serves ``/metrics``; ``false`` does not add the route.
``myapp.metrics.allow``
    client addresses or networks allowed to read it (default ``127.0.0.1 ::1``);
    ``*`` allows everyone (behind a proxy that restricts it).
``myapp.metrics.token_hash``
    SHA-256 (hex) of a bearer token that is also allowed from anywhere
    (``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pyramid.request import Request
from pyramid.response import Response

OUTCOMES = ("commit", "rollback", "conflict", "refused", "none")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"

ENABLED_SETTING = "myapp.metrics"
ALLOW_SETTING = "myapp.metrics.allow"
TOKEN_SETTING = "myapp.metrics.token_hash"
DEFAULT_ALLOW = "127.0.0.1 ::1"

UNITS = Counter("myapp_units", "Units of work finished, by kind and outcome", ["kind", "outcome"])
UNIT_SECONDS = Histogram(
    "myapp_unit_duration_seconds", "Duration of a unit of work, by kind", ["kind"]
)
UNIT_STATEMENTS = Histogram(
    "myapp_unit_statements",
    "SQL statements executed by a unit of work, by kind",
    ["kind"],
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 1000, 10_000, float("inf")),
)
UNIT_DB_SECONDS = Histogram(
    "myapp_unit_db_seconds", "Time spent in the database by a unit of work, by kind", ["kind"]
)
TRANSACTIONS = Counter("myapp_transactions", "Database transactions ended, by outcome", ["outcome"])
RETRIES = Counter("myapp_request_retries", "Requests replayed by pyramid_retry (one per retry)")
REQUESTS = Counter(
    "myapp_requests",
    "Requests answered, by method, route and status class",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "myapp_request_duration_seconds", "Request latency, by method and route", ["method", "route"]
)
POOL_CHECKED_OUT = Gauge(
    "myapp_pool_checked_out",
    "Database connections checked out of the pool (summed over live processes)",
    multiprocess_mode="livesum",
)
POOL_OVERFLOW = Gauge(
    "myapp_pool_overflow",
    "Connections opened beyond the pool size (negative: pool slots never opened yet)",
    multiprocess_mode="livesum",
)


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def status_label(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def record_unit(
    kind: str, outcome: str, seconds: float, statements: int, db_seconds: float
) -> None:
    """Count one finished unit of work."""
    UNITS.labels(kind, outcome if outcome in OUTCOMES else "none").inc()
    UNIT_SECONDS.labels(kind).observe(seconds)
    UNIT_STATEMENTS.labels(kind).observe(statements)
    UNIT_DB_SECONDS.labels(kind).observe(db_seconds)


def record_request(method: str, route: str | None, status: int, seconds: float) -> None:
    route_name = route or UNMATCHED
    REQUESTS.labels(method_label(method), route_name, status_label(status)).inc()
    REQUEST_SECONDS.labels(method_label(method), route_name).observe(seconds)


def record_pool(pool: Any) -> None:
    """Set the pool gauges from ``pool`` (a QueuePool; other pools have no such counts)."""
    checkedout = getattr(pool, "checkedout", None)
    overflow = getattr(pool, "overflow", None)
    if callable(checkedout):
        POOL_CHECKED_OUT.set(checkedout())
    if callable(overflow):
        POOL_OVERFLOW.set(overflow())


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format (all processes' in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsAccess:
    """Who may read ``/metrics``: allowed client networks, or a bearer token (by its hash)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        raw = str(settings.get(ALLOW_SETTING, DEFAULT_ALLOW) or "")
        self.everyone = False
        self.networks: list[Any] = []
        for item in raw.replace(",", " ").split():
            if item == "*":
                self.everyone = True
            else:
                self.networks.append(ipaddress.ip_network(item, strict=False))
        token_hash = str(settings.get(TOKEN_SETTING) or "").strip().lower()
        self.token_hash = token_hash or None

    def allows(self, request: Request) -> bool:
        if self.everyone:
            return True
        if self.token_hash:
            from myapp.services.tokens import hash_token, same_hash

            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if (
                scheme.lower() == "bearer"
                and token.strip()
                and same_hash(hash_token(token.strip()), self.token_hash)
            ):
                return True
        try:
            address = ipaddress.ip_address(request.remote_addr or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def metrics_view(request: Request) -> Response:
    """``GET /metrics``: Prometheus text format, for the addresses and token the settings allow."""
    access: MetricsAccess = request.registry["myapp.metrics_access"]
    if not access.allows(request):
        response = Response(
            json_body={"error": "forbidden", "message": "/metrics is not open to this client"},
            status=403,
        )
        return response
    body, content_type = exposition()
    response = Response(body=body)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response
