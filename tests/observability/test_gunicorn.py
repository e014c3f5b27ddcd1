"""The deployment recipe: gunicorn with 2 worker processes on PostgreSQL (deploy/gunicorn.conf.py).

Starts the real thing (``gunicorn -c deploy/gunicorn.conf.py --paste
production.ini``) on a fresh PostgreSQL database and drives mixed requests
from concurrent clients: no error, both workers serve, each worker's
PostgreSQL connections stay within its pool's bounds, ``/metrics`` adds up
both processes, and SIGTERM in the middle of a burst loses no accepted
request.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from myapp.services.tokens import hash_token, new_token
from myapp.testing.helpers import lock_waiters
from myapp.testing.plugin import PostgresTestDatabase, run_migrations
from myapp.testing.server import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL_SIZE, MAX_OVERFLOW = 3, 2  # small on purpose: the bound is what is checked
WORKERS = 2
CLIENTS = 24  # of the stop test: half on keep-alive connections
BURST = 40  # new connections around the SIGTERM, one POST each


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def postgres_connections(pid: int) -> int:
    """TCP connections of process ``pid`` to port 5432 (from /proc: fds -> socket inodes)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except FileNotFoundError:
        return 0
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == 5432 and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def call(port: int, method: str, path: str, token: str | None = None, body: Any = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def gunicorn(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    assert backend == "postgresql"  # the test is postgresql_only
    pg = PostgresTestDatabase(request.config.getoption("--dburl"))
    url = pg.create()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        run_migrations(conn)
    ini = tmp_path / "production.ini"
    source = (ROOT / "production.ini").read_text()
    source = source.replace(
        "sqlalchemy.pool_size = 10", f"sqlalchemy.pool_size = {POOL_SIZE}"
    ).replace("sqlalchemy.max_overflow = 20", f"sqlalchemy.max_overflow = {MAX_OVERFLOW}")
    assert f"pool_size = {POOL_SIZE}" in source and f"max_overflow = {MAX_OVERFLOW}" in source
    ini.write_text(source)
    port = free_port()
    admin = new_token()
    metrics_dir = tmp_path / "metrics"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MYAPP_", "PROMETHEUS"))},
        "DATABASE_URL": url,
        "MYAPP_SESSION_SECRET": "gunicorn-test-session-secret-0123456789abcdef",
        "MYAPP_ADMIN_TOKEN_HASH": hash_token(admin),
        "MYAPP_BIND": f"127.0.0.1:{port}",
        "MYAPP_WORKERS": str(WORKERS),
        "MYAPP_THREADS": "4",
        "MYAPP_GRACEFUL_TIMEOUT": "20",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
             "--paste", str(ini)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                if len(worker_pids(process.pid)) == WORKERS:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("gunicorn did not start:\n" + log.read_text())
        yield {"process": process, "port": port, "admin": admin, "engine": engine, "log": log,
               "metrics_dir": metrics_dir}  # fmt: skip
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        engine.dispose()
        pg.drop()


@pytest.mark.postgresql_only  # the deployment recipe is tested on PostgreSQL
def test_two_workers_serve_mixed_requests_within_their_pools(
    gunicorn: dict[str, Any],
) -> None:
    port, admin, process = gunicorn["port"], gunicorn["admin"], gunicorn["process"]
    status = call(port, "POST", "/api/companies", admin, {"name": "Gunicorn Cabs"})
    assert status == 201
    results: Counter[int] = Counter()
    errors: list[str] = []
    peak: dict[int, int] = {}
    lock = threading.Lock()
    plan = [
        ("POST", "/items", None),
        ("GET", "/items", None),
        ("GET", "/healthz", None),
        ("GET", "/api/companies", admin),
        ("GET", "/items/1", None),
        ("GET", "/no/such/page", None),
    ]

    def client(n: int) -> None:
        for i in range(30):
            method, path, token = plan[(n + i) % len(plan)]
            try:
                code = call(port, method, path, token)
            except Exception as exc:  # a lost request
                with lock:
                    errors.append(f"{method} {path}: {exc!r}")
                continue
            with lock:
                results[code] += 1

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            for pid in worker_pids(process.pid):
                peak[pid] = max(peak.get(pid, 0), postgres_connections(pid))
            time.sleep(0.02)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,))
    watcher.start()
    clients = [threading.Thread(target=client, args=(n,)) for n in range(12)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    stop.set()
    watcher.join()

    assert errors == []
    assert results[500] == 0 and results[503] == 0, results
    assert sum(results.values()) == 360
    assert results[404] >= 60  # /no/such/page (and /items/1 until the first POST committed)
    assert set(results) <= {200, 404}
    # each worker has its own pools (the primary's for writes, the read engine's for GET
    # requests), each within pool_size + max_overflow
    assert len(peak) == WORKERS
    assert all(0 < used <= 2 * (POOL_SIZE + MAX_OVERFLOW) for used in peak.values()), peak

    # /metrics adds up both processes (prometheus_client multiprocess mode)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    metrics = connection.getresponse().read().decode()
    connection.close()
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("myapp_requests_total{")
    )
    assert served >= 361, served  # the burst and the company creation, from both workers
    pids = {name.rsplit("_", 1)[1].split(".")[0] for name in os.listdir(gunicorn["metrics_dir"])}
    assert len(pids & {str(pid) for pid in peak}) == WORKERS  # both workers served requests


class Outcomes:
    """What the clients of the stop test saw; a request is *lost* when it was sent (the
    connection was established) and no response came back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.posted = 0  # POST /items answered 200
        self.in_flight = 0  # sent, not yet answered
        self.in_flight_at_sigterm = 0
        self.sent_after_sigterm = 0
        self.answered_after_sigterm = 0
        self.refused: list[str] = []  # connection refused: nothing was sent (the client is done)
        self.lost: list[str] = []  # sent, then the connection reset or closed with no response
        self.cut_off: list[str] = []  # the response began and did not finish
        self.sigterm = False

    def report(self) -> str:
        return (
            f"in flight at SIGTERM {self.in_flight_at_sigterm}, sent after it "
            f"{self.sent_after_sigterm}, answered after it {self.answered_after_sigterm}, lost "
            f"{len(self.lost)}, cut off {len(self.cut_off)}, clients refused "
            f"{len(self.refused)}; statuses {dict(self.statuses)}, POST 200 {self.posted}"
        )


def stop_client(
    port: int, keep_alive: bool, outcomes: Outcomes, stop: threading.Event, once: bool = False
) -> None:
    """POST /items and GET /items alternately until the server refuses the connection.

    A keep-alive client reuses its connection until a response says ``Connection: close``;
    the others open a new connection for every request (new arrivals during the stop).
    ``once``: one ``POST /items`` on a new connection, then the client is done.
    """
    connection: http.client.HTTPConnection | None = None
    n = 0
    while not stop.is_set() and not (once and n):
        method, path = ("POST", "/items") if n % 2 == 0 else ("GET", "/items?per_page=5")
        n += 1
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                connection.connect()
            except ConnectionRefusedError as exc:
                with outcomes.lock:
                    outcomes.refused.append(repr(exc))
                return  # nothing listens any more: this client is done
        with outcomes.lock:
            outcomes.in_flight += 1
            outcomes.sent_after_sigterm += outcomes.sigterm
        try:
            connection.request(method, path)
            response = connection.getresponse()
        except (http.client.HTTPException, OSError) as exc:  # reset, closed, timed out
            with outcomes.lock:
                outcomes.in_flight -= 1
                outcomes.lost.append(f"{method} {path}: {exc!r}")
            connection.close()
            connection = None
            continue
        try:
            response.read()
        except (http.client.HTTPException, OSError) as exc:
            with outcomes.lock:
                outcomes.in_flight -= 1
                outcomes.cut_off.append(f"{method} {path}: {exc!r}")
            connection.close()
            connection = None
            continue
        with outcomes.lock:
            outcomes.in_flight -= 1
            outcomes.statuses[response.status] += 1
            outcomes.posted += method == "POST" and response.status == 200
            outcomes.answered_after_sigterm += outcomes.sigterm
        if response.will_close or not keep_alive:
            connection.close()
            connection = None


@pytest.mark.postgresql_only  # the deployment recipe is tested on PostgreSQL
def test_sigterm_under_load_loses_no_request(gunicorn: dict[str, Any]) -> None:
    """SIGTERM while requests wait inside their unit of work and clients keep connecting.

    A connection of the test locks the ``items`` table, so every ``POST /items`` blocks at
    its INSERT until the 8 worker threads (2 workers x 4) wait there; 24 clients (12 on
    keep-alive connections, 12 opening a connection per request) keep sending meanwhile,
    and a burst of 40 new connections (one POST each) starts, the real SIGTERM to the
    gunicorn master sent halfway through it; the lock is held 1.5 s more: clients go on
    connecting while the workers drain. Then every request whose connection was
    established is answered (none reset, none closed unanswered), its unit of work
    committed exactly when it answered 200, each client ends on a refused connection
    (nothing listens any more), and gunicorn exits 0.
    """
    port, process, engine = gunicorn["port"], gunicorn["process"], gunicorn["engine"]
    outcomes = Outcomes()
    stop = threading.Event()
    clients = [
        threading.Thread(target=stop_client, args=(port, n % 2 == 0, outcomes, stop))
        for n in range(CLIENTS)
    ]
    burst: list[threading.Thread] = []
    holder = engine.connect()
    try:
        for thread in clients:
            thread.start()
        time.sleep(1.0)  # load running
        holder.begin()
        holder.execute(text("LOCK TABLE items IN EXCLUSIVE MODE"))
        # 8 threads in all; which worker accepts a connection is up to the kernel, so
        # one worker may hold most of the waiting clients: at least 6 is enough
        waiting = lock_waiters(engine, "INSERT INTO items%", at_least=8, timeout=15)
        assert waiting >= 6, f"only {waiting} requests wait on the lock"
        # a burst of new connections, one POST each, half of them started after the SIGTERM
        burst = [
            threading.Thread(target=stop_client, args=(port, False, outcomes, stop, True))
            for _ in range(BURST)
        ]
        for thread in burst[: BURST // 2]:
            thread.start()
        with outcomes.lock:
            outcomes.in_flight_at_sigterm = outcomes.in_flight
            outcomes.sigterm = True
        process.send_signal(signal.SIGTERM)
        for thread in burst[BURST // 2 :]:
            thread.start()
        time.sleep(1.5)  # clients keep connecting while the workers drain
        assert process.poll() is None, "gunicorn exited with requests waiting"
        holder.rollback()  # the waiting units of work go on
        exit_code = process.wait(timeout=40)
    finally:
        holder.close()
        clients += burst
        if not outcomes.sigterm:
            stop.set()  # failed before the stop: end the clients now
        for thread in clients:
            thread.join(timeout=10)  # each ends on its refused connection
        stop.set()
        for thread in clients:
            thread.join(timeout=70)
    with engine.connect() as conn:
        rows = conn.scalar(text("SELECT count(*) FROM items"))
        unnamed = conn.scalar(text("SELECT count(*) FROM items WHERE name IS NULL"))
    log = gunicorn["log"].read_text()
    report = outcomes.report() + f"; items {rows}; exit {exit_code}"
    print("gunicorn, SIGTERM under load:", report)
    assert outcomes.lost == [], (report, outcomes.lost[:5])
    assert outcomes.cut_off == [], (report, outcomes.cut_off[:5])
    assert set(outcomes.statuses) == {200}, report
    assert rows == outcomes.posted and unnamed == 0, report  # committed exactly when answered
    assert exit_code == 0, log[-3000:]
    assert outcomes.in_flight_at_sigterm >= waiting, report
    assert outcomes.answered_after_sigterm >= outcomes.in_flight_at_sigterm, report
    assert not any(thread.is_alive() for thread in clients)
    # every lasting client ended on a refused connection: nothing listens any more
    assert len(outcomes.refused) >= CLIENTS, report
    assert "Traceback" not in log, log[-3000:]
