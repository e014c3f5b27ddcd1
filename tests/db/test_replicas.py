"""Read replicas on a real streaming replica (a private primary + replica: pgcluster).

Which server answered is proved on the serving connection itself:
``pg_is_in_recovery()`` is true on the replica only.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from sqlalchemy import func, select, text

from myapp.db import Database, db_read_only, db_transaction, init_db
from myapp.db.replicas import ReplicaSet, replica_report
from myapp.models import Base, Item
from myapp.testing.pgcluster import PgCluster, pg_cluster_fixture
from myapp.testing.server import ServerProcess

replica_cluster = pg_cluster_fixture(replica=True)

_names = itertools.count()


@pytest.fixture
def app_db(replica_cluster: PgCluster) -> Iterator[tuple[str, str]]:
    """A fresh database with the schema on the primary, replicated: (primary URL, replica URL)."""
    name = f"rp_app_{next(_names)}"
    primary_url = replica_cluster.create_database(name)
    database = Database.from_url(primary_url)
    try:
        init_db(database.engine, Base.metadata)
    finally:
        database.dispose()
    replica_cluster.wait_for_replica()
    assert replica_cluster.replica is not None
    yield primary_url, replica_cluster.replica.url(name)


def _database(primary_url: str, replica_url: str, **options: Any) -> Database:
    database = Database.from_url(primary_url)
    database.replicas = ReplicaSet(**{"check_interval": 0.0, **options})
    database.replicas.primary = database.read_engine
    database.add_replica(replica_url)
    return database


def _in_recovery(session: Any) -> bool:
    return bool(session.scalar(text("SELECT pg_is_in_recovery()")))


def test_read_only_units_read_from_the_replica_and_writes_go_to_the_primary(
    app_db: tuple[str, str], replica_cluster: PgCluster
) -> None:
    database = _database(*app_db)
    try:
        with database.scope():
            with db_transaction() as session:
                assert not _in_recovery(session)
                session.add(Item(name="on the primary"))
        replica_cluster.wait_for_replica()
        with database.scope():  # a new scope: no write of its own yet
            with db_read_only() as session:
                assert _in_recovery(session)
                assert session.scalars(select(Item.name)).all() == ["on the primary"]
                # a read-only connection on the replica too
                assert session.scalar(text("SHOW transaction_read_only")) == "on"
            with db_transaction() as session:  # writes: the primary
                assert not _in_recovery(session)
                session.add(Item(name="second"))
            with db_read_only() as session:  # read-your-writes: this scope wrote
                assert not _in_recovery(session)
                assert session.scalar(select(func.count()).select_from(Item)) == 2
        (state,) = replica_report(database)
        assert state.state == "ok" and state.in_recovery and state.lag is not None
    finally:
        database.dispose()


def _app(database: Database) -> Any:
    config = Configurator(settings={"myapp.database": database, "retry.attempts": 3})
    config.include("myapp.db.pyramid")

    def where(request: Any) -> dict[str, Any]:
        session = request.dbsession
        return {
            "replica": _in_recovery(session),
            "count": session.scalar(select(func.count()).select_from(Item)),
        }

    def write(request: Any) -> dict[str, Any]:
        request.dbsession.add(Item(name="posted"))
        request.dbsession.flush()
        return {"replica": _in_recovery(request.dbsession)}

    config.add_route("where", "/where")
    config.add_view(where, route_name="where", request_method="GET", renderer="json")
    config.add_view(write, route_name="where", request_method="POST", renderer="json")
    config.scan("myapp.views.errors")
    return config.make_wsgi_app()


def test_requests_read_your_writes_after_a_post(
    app_db: tuple[str, str], replica_cluster: PgCluster
) -> None:
    database = _database(*app_db, read_your_writes=1.0)
    try:
        app = webtest.TestApp(_app(database))
        assert app.get("/where").json == {"replica": True, "count": 0}
        response = app.post("/where")
        assert response.json == {"replica": False}
        assert "myapp_wrote" in app.cookies
        # within the window: the primary, which has the write (whatever the replica's lag)
        assert app.get("/where").json == {"replica": False, "count": 1}
        # another client, without the cookie: the replica
        other = webtest.TestApp(_app(database))
        assert other.get("/where").json["replica"] is True
        time.sleep(1.1)  # the window is over: the replica again
        replica_cluster.wait_for_replica()
        assert app.get("/where").json == {"replica": True, "count": 1}
    finally:
        database.dispose()


def test_a_lagging_replica_is_skipped_then_used_again(
    app_db: tuple[str, str], replica_cluster: PgCluster
) -> None:
    database = _database(*app_db, max_lag=0.5)
    app = webtest.TestApp(_app(database))
    try:
        assert app.get("/where").json["replica"] is True
        replica_cluster.pause_replay()
        try:
            app.post("/where")  # WAL the replica receives and does not replay
            deadline = time.monotonic() + 30
            while database.replicas.check(database.replicas.replicas[0]).state != "lagging":
                assert time.monotonic() < deadline, "the replica never reported its lag"
                time.sleep(0.1)
            # no cookie: only the lag sends this read to the primary, which has the write
            fresh = webtest.TestApp(_app(database))
            assert fresh.get("/where").json == {"replica": False, "count": 1}
            (state,) = replica_report(database)
            assert state.state == "lagging" and state.lag is not None and state.lag > 0.5
        finally:
            replica_cluster.resume_replay()
        replica_cluster.wait_for_replica()
        fresh = webtest.TestApp(_app(database))
        assert fresh.get("/where").json == {"replica": True, "count": 1}
    finally:
        database.dispose()


def test_a_replica_that_goes_down_is_skipped_without_an_error(
    app_db: tuple[str, str], replica_cluster: PgCluster
) -> None:
    database = _database(*app_db, check_interval=0.2)
    app = webtest.TestApp(_app(database))
    try:
        assert app.get("/where").json["replica"] is True  # a pooled replica connection
        replica_cluster.stop_replica()
        try:
            # the pooled connection is dead, then new ones are refused: replayed on the primary
            for _ in range(5):
                assert app.get("/where").json["replica"] is False
            (state,) = replica_report(database)
            assert state.state == "down" and state.error
        finally:
            replica_cluster.start_replica()
        replica_cluster.wait_for_replica()
        time.sleep(0.3)  # past the check interval: checked again at the next read
        assert app.get("/where").json["replica"] is True
    finally:
        database.dispose()


@pytest.mark.slow
def test_replica_stopped_under_mixed_load_on_a_real_server(
    replica_cluster: PgCluster, tmp_path: Path
) -> None:
    """pserve with a replica; the replica stops mid-load: 0 failed reads, 0 lost writes."""
    dbname = f"rp_server_{next(_names)}"
    primary_url = replica_cluster.create_database(dbname)  # the server's alembic migrates it
    assert replica_cluster.replica is not None
    replica_url = replica_cluster.replica.url(dbname)
    settings = {
        "sqlalchemy.url": primary_url,
        "sqlalchemy.replica_urls": replica_url,
        "sqlalchemy.replica_check_interval": "0.5",
        "sqlalchemy.replica_max_lag": "30",
    }

    def replica_clients() -> int:
        assert replica_cluster.replica is not None
        with replica_cluster.replica.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchone()
        return int(row[0]) if row is not None else 0

    failures: list[Any] = []
    written: list[int] = []
    reads = [0]
    phase = ["before"]
    stop = threading.Event()
    with ServerProcess(tmp_path / "server", settings=settings) as server:
        seeded = Database.from_url(primary_url)
        try:
            with seeded.scope(), db_transaction() as session:
                items = [Item(name=f"seed {i}") for i in range(20)]
                session.add_all(items)
                session.flush()
                seed_ids = [item.id for item in items]
        finally:
            seeded.dispose()
        replica_cluster.wait_for_replica()

        def load(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 4 == 0:
                    status, _, body = server.request("POST", "/items")
                    if status == 200:
                        written.append(body["id"])
                    else:
                        failures.append(("POST", status, body))
                else:
                    item_id = seed_ids[(worker + n) % len(seed_ids)]
                    status, _, body = server.request("GET", f"/items/{item_id}")
                    if status != 200 or body["id"] != item_id:
                        failures.append(("GET", item_id, status, body, phase[0]))
                    reads[0] += 1

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2)
            assert replica_clients() > 0, "the server does not read from the replica"
            phase[0] = "stopping"
            replica_cluster.stop_replica(mode="immediate")
            phase[0] = "down"
            time.sleep(3)
            phase[0] = "starting"
            replica_cluster.start_replica()
            replica_cluster.wait_for_replica()
            phase[0] = "back"
            deadline = time.monotonic() + 30
            while replica_clients() == 0:  # used again once back (checked every 0.5 s)
                assert time.monotonic() < deadline, "the replica was not used again"
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert failures == []
        assert reads[0] > 50 and len(written) > 10
        check = Database.from_url(primary_url)
        try:
            with check.engine.connect() as conn:
                stored = set(conn.scalars(select(Item.id).where(Item.id.in_(written))))
        finally:
            check.dispose()
        assert stored == set(written)  # 0 lost writes


def test_myapp_check_reports_each_replica(replica_cluster: PgCluster) -> None:
    import os
    import subprocess
    import sys

    dbname = f"rp_check_{next(_names)}"
    primary_url = replica_cluster.create_database(dbname)
    assert replica_cluster.replica is not None
    replica_url = replica_cluster.replica.url(dbname)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DATABASE_URL": primary_url, "DATABASE_REPLICA_URLS": replica_url}
    env.pop("MYAPP_ENV", None)
    myapp = [sys.executable, "-m", "myapp.commands", "-c", str(root / "development.ini")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*myapp, *args], env=env, cwd=root, capture_output=True, text=True, timeout=120
        )

    assert run("initdb").returncode == 0
    replica_cluster.wait_for_replica()
    checked = run("check")
    assert checked.returncode == 0, checked.stderr
    (line,) = [x for x in checked.stdout.splitlines() if x.startswith("replica ")]
    assert f"127.0.0.1:{replica_cluster.replica.port}/{dbname}: ok, lag 0.000 s" in line
    replica_cluster.stop_replica()
    try:
        checked = run("check")
        assert checked.returncode == 0, checked.stderr  # the service still works: a report
        (line,) = [x for x in checked.stdout.splitlines() if x.startswith("replica ")]
        assert ": down, lag unknown: " in line
    finally:
        replica_cluster.start_replica()
