"""A real server under bounded concurrent load: no unexpected error, nothing leaked, memory flat.

``pserve`` runs a copy of production.ini (prod profile: pool 10 + 20,
pre-ping, production error settings, waitress with 8 threads) on a free
loopback port against a database of its own (SQLite file in WAL mode, or a
fresh PostgreSQL database), through :class:`myapp.testing.server.ServerProcess`.
16 client threads, each with one keep-alive HTTP connection, send
:data:`REQUESTS` requests in all, a fixed mix of reads and writes over the
items API and the JSON API. Then:

* every response had the expected status (0 unexpected errors);
* rows written = writes answered 2xx (items, drivers, bookings), read back on
  another connection;
* nothing is left open: PostgreSQL shows no session of the server's database
  ``active`` or ``idle in transaction`` (only idle pooled connections, at
  most pool + overflow of them); on SQLite another connection takes the write
  lock at once (``BEGIN IMMEDIATE`` with no busy timeout);
* the server's resident memory (``VmRSS``) after :data:`REQUESTS` requests is
  within :data:`RSS_TOLERANCE_KIB` of what it was after the first 1,000.

Before the load, the input guard is checked behind waitress itself: a 2 MB
body, with a Content-Length or chunked, is a 413 JSON, a URL that is not UTF-8
a 400 JSON, and the keep-alive connection goes on.

On SQLite, 8 server threads write to one file: "database is locked" is a
transient error (``is_transient``), so pyramid_retry replays the request; the
test counts on none reaching a client.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import ROOT
from sqlalchemy import create_engine, text

from myapp.db.settings import normalise_url
from myapp.services.tokens import new_token_and_hash
from myapp.testing.plugin import server_url
from myapp.testing.server import ServerProcess

REQUESTS = 10_000
THREADS = 16
FIRST_SAMPLE = 1_000
#: allowed growth of the server's RSS between 1,000 and 10,000 requests
RSS_TOLERANCE_KIB = 16 * 1024
ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        content_type = response.getheader("Content-Type", "")
        parsed = json.loads(data) if content_type.startswith("application/json") else data
        return response.status, parsed

    def close(self) -> None:
        self.connection.close()


class Load:
    """The workload: each thread cycles through a fixed mix of reads and writes."""

    def __init__(self, server: ServerProcess, company_id: int, token: str) -> None:
        self.server = server
        self.company = f"/api/companies/{company_id}"
        self.token = token
        self.lock = threading.Lock()
        self.done = 0
        self.rss: dict[int, int] = {}
        self.unexpected: list[tuple[str, str, int, Any]] = []
        self.statuses: dict[tuple[str, int], int] = {}
        self.items: list[int] = []
        self.bookings: list[int] = []
        self.drivers: list[int] = []

    def _count(self, label: str, status: int) -> None:
        with self.lock:
            self.done += 1
            self.statuses[label, status] = self.statuses.get((label, status), 0) + 1
            if self.done == FIRST_SAMPLE:
                self.rss[FIRST_SAMPLE] = _rss_kib(self.server.pid)

    def worker(self, index: int, count: int) -> None:
        client = Client(self.server.port, self.token)
        item = booking = None
        base = datetime(2040, 1, 1, tzinfo=UTC) + timedelta(days=index * 1000)
        try:
            for n in range(count):
                step = n % 10
                if step == 0:
                    label, method, path, body, expected = "healthz", "GET", "/healthz", None, 200
                elif step == 1:
                    label, method, path, body, expected = "item+", "POST", "/items", None, 200
                elif step == 2:
                    label, method, path, body, expected = (
                        "item",
                        "GET",
                        f"/items/{item}",
                        None,
                        200,
                    )
                elif step == 3:
                    label, method, path, body, expected = (
                        "item404",
                        "GET",
                        "/items/2147483647",
                        None,
                        404,
                    )
                elif step == 4:
                    label, method, path, body, expected = (
                        "drivers",
                        "GET",
                        f"{self.company}/drivers?per_page=5",
                        None,
                        200,
                    )
                elif step == 5:
                    pickup = (base + timedelta(minutes=n)).isoformat()
                    body = {"pickup_time": pickup, "pickup_address": "A", "dropoff_address": "B"}
                    label, method, path, expected = (
                        "booking+",
                        "POST",
                        f"{self.company}/bookings",
                        201,
                    )
                elif step == 6:
                    label, method, path, body, expected = (
                        "booking",
                        "GET",
                        f"{self.company}/bookings/{booking}",
                        None,
                        200,
                    )
                elif step == 7:
                    label, method, path, expected = (
                        "booking~",
                        "PATCH",
                        f"{self.company}/bookings/{booking}",
                        200,
                    )
                    body = {"dropoff_address": f"B{n}"}
                elif step == 8:
                    label, method, path, body, expected = "company", "GET", self.company, None, 200
                else:
                    label, method, path, expected = (
                        "driver+",
                        "POST",
                        f"{self.company}/drivers",
                        201,
                    )
                    body = {"name": f"load-{index}-{n}"}
                try:
                    status, answer = client.call(method, path, body)
                except (OSError, http.client.HTTPException) as exc:
                    status, answer = -1, repr(exc)
                    client.close()
                    client = Client(self.server.port, self.token)
                self._count(label, status)
                if status != expected:
                    with self.lock:
                        self.unexpected.append((method, path, status, answer))
                    continue
                if label == "item+":
                    item = answer["id"]
                    with self.lock:
                        self.items.append(item)
                elif label == "booking+":
                    booking = answer["id"]
                    with self.lock:
                        self.bookings.append(booking)
                elif label == "driver+":
                    with self.lock:
                        self.drivers.append(answer["id"])
        finally:
            client.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _hostile_requests_over_http(client: Client) -> None:
    """The input guard behind waitress: a body too large (sized or chunked), a bad URL."""
    too_large = {"error": "the request body is too large (at most 1048576 bytes)"}
    connection = client.connection
    for headers, body in (
        ({"Content-Type": "text/plain"}, b"x" * 2_000_000),
        (
            {"Content-Type": "text/plain", "Transfer-Encoding": "chunked"},
            iter([b"y" * 50_000] * 40),
        ),
    ):
        connection.request("POST", "/items", body=body, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read()) == too_large
    status, answer = client.call("GET", "/items/%FF")
    assert (status, answer) == (400, {"error": "the URL path is not valid UTF-8"})
    status, answer = client.call("GET", "/healthz")  # the same keep-alive connection goes on
    assert status == 200 and answer["status"] == "ok"


@pytest.mark.slow
def test_10000_mixed_requests_on_a_real_server(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = ServerProcess(
        tmp_path,
        backend=backend,
        dburl=server_url(request.config, backend),
        base_ini=ROOT / "production.ini",
        settings={
            "myapp.admin_token_hash": ADMIN_HASH,
            "myapp.session_secret": "load-test-session-secret-0123456789abcdef",
            "threads": "8",
        },
    )
    with server:
        admin = Client(server.port, ADMIN_TOKEN)
        status, company = admin.call("POST", "/api/companies", {"name": "Load Cabs"})
        assert status == 201, company
        _hostile_requests_over_http(admin)
        admin.close()
        load = Load(server, company["id"], company["api_token"])
        per_thread = REQUESTS // THREADS
        threads = [
            threading.Thread(target=load.worker, args=(i, per_thread), name=f"load-{i}")
            for i in range(THREADS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
        elapsed = time.monotonic() - started
        assert not any(t.is_alive() for t in threads), "a client thread is stuck"
        load.rss[REQUESTS] = _rss_kib(server.pid)
        sent = sum(load.statuses.values())
        report = (
            f"{backend}: {sent} requests in {elapsed:.1f} s ({sent / elapsed:.0f}/s), "
            f"RSS {load.rss[FIRST_SAMPLE]} KiB at {FIRST_SAMPLE}, {load.rss[REQUESTS]} KiB at "
            f"{REQUESTS}; statuses {sorted(load.statuses.items())}"
        )
        print(report)

        assert sent == REQUESTS
        assert load.unexpected == [], (report, load.unexpected[:10])
        assert load.rss[REQUESTS] - load.rss[FIRST_SAMPLE] <= RSS_TOLERANCE_KIB, report

        engine = create_engine(normalise_url(server.database_url))
        try:
            with engine.connect() as conn:
                items = conn.scalar(text("SELECT count(*) FROM items"))
                bookings = conn.scalar(text("SELECT count(*) FROM bookings"))
                drivers = conn.scalar(text("SELECT count(*) FROM drivers"))
                changed = conn.scalar(
                    text("SELECT count(*) FROM bookings WHERE dropoff_address != 'B'")
                )
            assert items == len(load.items) == load.statuses["item+", 200]
            assert bookings == len(load.bookings) == load.statuses["booking+", 201]
            assert drivers == len(load.drivers) == load.statuses["driver+", 201]
            assert changed == len(set(load.bookings))  # every booking was then PATCHed
            if backend == "postgresql":
                with engine.connect() as conn:
                    states = dict(
                        conn.execute(
                            text(
                                "SELECT state, count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid != pg_backend_pid() "
                                "GROUP BY state"
                            )
                        ).all()
                    )
                print(f"{backend}: server sessions after the load, by state: {states}")
                assert set(states) <= {"idle"}, states  # no request left a transaction open
                assert states.get("idle", 0) <= 10 + 20, states
            elif backend == "mysql":
                with engine.connect() as conn:
                    sessions, open_transactions = conn.execute(
                        text(
                            "SELECT count(*), count(t.trx_id) FROM information_schema.processlist p"
                            " LEFT JOIN information_schema.innodb_trx t"
                            " ON t.trx_mysql_thread_id = p.id"
                            " WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
                        )
                    ).one()
                print(
                    f"{backend}: server sessions after the load: {sessions}, "
                    f"with an open InnoDB transaction: {open_transactions}"
                )
                assert open_transactions == 0  # no request left a transaction open
                assert sessions <= 2 * (10 + 20), sessions  # the primary's and read pools
        finally:
            engine.dispose()
        if backend == "sqlite":
            conn = sqlite3.connect(server.sqlite_path, timeout=0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")  # fails at once if a transaction holds the lock
                conn.execute("ROLLBACK")
            finally:
                conn.close()
