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
from myapp.testing.plugin import PostgresTestDatabase, run_migrations
from myapp.testing.server import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL_SIZE, MAX_OVERFLOW = 3, 2  # small on purpose: the bound is what is checked
WORKERS = 2


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
def test_two_workers_serve_mixed_requests_within_their_pools_and_stop_gracefully(
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

    # graceful stop: SIGTERM in the middle of a burst. Every request is answered, or refused
    # at the connection level with no effect (so a client may safely send it again): gunicorn
    # closes its listening socket at once, and connections still waiting to be read are reset.
    # docs/deployment.md: drain first (fail readiness, wait), then SIGTERM.
    burst: list[int | str] = []

    def client_in_burst() -> None:
        try:
            burst.append(call(port, "POST", "/items"))
        except ConnectionRefusedError:
            burst.append("refused")  # after the listener closed
        except (ConnectionResetError, http.client.RemoteDisconnected):
            burst.append("reset")  # accepted by the kernel, never read by a worker
        except Exception as exc:
            burst.append(repr(exc))

    threads = [threading.Thread(target=client_in_burst) for _ in range(40)]
    for n, thread in enumerate(threads):
        thread.start()
        if n == 20:
            process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert process.wait(timeout=60) == 0, gunicorn["log"].read_text()
    outcomes = Counter(burst)
    print("graceful stop, 40 POSTs, SIGTERM after the 21st started:", dict(outcomes))
    assert set(outcomes) <= {200, "refused", "reset"}, outcomes
    with gunicorn["engine"].connect() as conn:
        stored = conn.scalar(text("SELECT count(*) FROM items"))
    # every answered POST committed, and a refused or reset one did nothing
    assert stored == 60 + outcomes[200]
