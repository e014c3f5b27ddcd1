"""SIGTERM under load: the server stops accepting, finishes what it received, then exits.

A real ``pserve`` on a copy of production.ini (``myapp/server.py``: waitress, 8
threads) and 16 client threads, each on its own keep-alive connection, posting
and listing items without pause. ``POST /items`` is a unit of work of two
statements (INSERT, then UPDATE of the name), so a half-written unit would be a
row without a name.

On PostgreSQL the test first makes requests wait *inside* their unit of work: a
connection of its own locks the ``items`` table, so every ``POST /items``
blocks at its INSERT, until at least 8 of them wait (``pg_stat_activity``; the
others queue in waitress behind the 8 busy threads). Then the real SIGTERM:

* new connections are refused at once, while the received requests still wait;
* the lock is released a second later: every request the server had received
  is answered, complete (``Connection: close``), and its unit of work commits;
* the process exits within the grace period, its log saying 0 requests cut off.

Then: 0 responses cut off, 0 requests dropped after they were sent, items rows
= ``POST /items`` answered 200, no row half-written. SQLite runs the same load
and SIGTERM without the lock (its writers queue on the file lock instead).
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from reliability_helpers import ROOT
from sqlalchemy import create_engine, text

from myapp.db.settings import normalise_url
from myapp.testing.helpers import lock_waiters
from myapp.testing.plugin import server_url
from myapp.testing.server import ServerProcess

THREADS = 16
GRACE = 20


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.posted = 0  # POST /items answered 200
        self.in_flight = 0  # sent, not yet answered
        self.in_flight_at_sigterm: int | None = None
        self.answered_after_sigterm = 0
        self.refused = 0  # connection refused: the request was never sent
        self.dropped: list[str] = []  # sent, then the connection closed without an answer
        self.cut_off: list[str] = []  # the answer began and did not finish
        self.sigterm_at: float | None = None


def _client(port: int, outcomes: Outcomes, stop: threading.Event) -> None:
    connection: http.client.HTTPConnection | None = None
    n = 0
    while not stop.is_set():
        method, path = ("POST", "/items") if n % 2 == 0 else ("GET", "/items?per_page=5")
        n += 1
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                connection.connect()
            except ConnectionRefusedError:
                with outcomes.lock:
                    outcomes.refused += 1
                return  # the server stopped listening: this client is done
        with outcomes.lock:
            outcomes.in_flight += 1
        try:
            connection.request(method, path)
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError, TimeoutError) as exc:
            with outcomes.lock:
                outcomes.in_flight -= 1
                outcomes.dropped.append(f"{method} {path}: {exc!r}")
            connection.close()
            connection = None
            continue
        try:
            response.read()
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
            with outcomes.lock:
                outcomes.in_flight -= 1
                outcomes.cut_off.append(f"{method} {path}: {exc!r}")
            connection.close()
            connection = None
            continue
        with outcomes.lock:
            outcomes.in_flight -= 1
            outcomes.statuses[response.status] = outcomes.statuses.get(response.status, 0) + 1
            if method == "POST" and response.status == 200:
                outcomes.posted += 1
            if outcomes.sigterm_at is not None:
                outcomes.answered_after_sigterm += 1
        if response.will_close:
            connection.close()
            connection = None


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.slow
def test_sigterm_under_load_finishes_every_received_request(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = ServerProcess(
        tmp_path,
        backend=backend,
        dburl=server_url(request.config, backend),
        base_ini=ROOT / "production.ini",
        settings={
            "myapp.session_secret": "graceful-test-session-secret-0123456789ab",
            "graceful_timeout": str(GRACE),
        },
    )
    outcomes = Outcomes()
    stop = threading.Event()
    with server:
        engine = create_engine(normalise_url(server.database_url))
        holder = engine.connect() if backend == "postgresql" else None
        threads = [
            threading.Thread(target=_client, args=(server.port, outcomes, stop), name=f"c{i}")
            for i in range(THREADS)
        ]
        try:
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # load running
            if holder is not None:
                holder.begin()
                holder.execute(text("LOCK TABLE items IN EXCLUSIVE MODE"))
                waiting = lock_waiters(engine, "INSERT INTO items%", at_least=8, timeout=60)
                assert waiting >= 8, f"only {waiting} requests wait on the lock"
            with outcomes.lock:
                outcomes.in_flight_at_sigterm = outcomes.in_flight
                outcomes.sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not _refuses_connections(server.port):
                assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
                time.sleep(0.05)
            if holder is not None:
                time.sleep(1.0)
                assert server.process.poll() is None, "the server exited with requests waiting"
                holder.rollback()  # the waiting requests go on
            exit_code = server.process.wait(timeout=GRACE + 10)
            stopped_after = time.monotonic() - outcomes.sigterm_at
        finally:
            stop.set()
            if holder is not None:
                holder.close()
            for thread in threads:
                thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        try:
            with engine.connect() as conn:
                rows = conn.scalar(text("SELECT count(*) FROM items"))
                half_written = conn.scalar(text("SELECT count(*) FROM items WHERE name IS NULL"))
        finally:
            engine.dispose()
        log = server.log_text()

    report = (
        f"{backend}: in flight at SIGTERM {outcomes.in_flight_at_sigterm}, answered after it "
        f"{outcomes.answered_after_sigterm}, cut off {len(outcomes.cut_off)}, dropped "
        f"{len(outcomes.dropped)}, refused {outcomes.refused}; exit {exit_code} after "
        f"{stopped_after:.2f} s; statuses {outcomes.statuses}; items {rows} = posted "
        f"{outcomes.posted}"
    )
    print(report)
    assert outcomes.cut_off == [], report
    assert outcomes.dropped == [], (report, outcomes.dropped[:5])
    assert set(outcomes.statuses) == {200}, report
    assert rows == outcomes.posted, report  # nothing committed without its answer
    assert half_written == 0
    assert exit_code == 0, log[-2000:]
    assert stopped_after < GRACE, report
    assert "graceful stop done" in log and "0 request(s) cut off" in log, log[-2000:]
    assert outcomes.in_flight_at_sigterm and outcomes.in_flight_at_sigterm >= (
        8 if backend == "postgresql" else 1
    ), report
    assert outcomes.answered_after_sigterm >= outcomes.in_flight_at_sigterm, report
    assert "Traceback" not in log, log
