"""The database connection dies under a request; the database is gone at start-up, then back.

Killed backends: a view records its backend's pid (``pg_backend_pid()``; MySQL/MariaDB:
``CONNECTION_ID()``, killed with ``KILL CONNECTION``),
writes a first row, signals the test and waits; the test terminates that
backend from another connection (``pg_terminate_backend``), waits until
PostgreSQL reports it gone, and lets the view go on to write a second row,
which fails: the connection is lost. 100 times in a row, on the same server
thread. A connection lost *before* the commit began is safe to replay (the
server rolled the transaction back), so ``tag_retryable`` marks it and
pyramid_retry replays the request on a new connection: every request ends in
a 200 from its second attempt, with both rows written exactly once. A
connection lost *during* the commit is ambiguous (the COMMIT may have been
applied): that request is not replayed and answers a 503 JSON.

Unreachable database: the app is built while nothing listens where the
database should be (a loopback TCP proxy in front of PostgreSQL, stopped):
no connection is made at start-up, ``/healthz`` and writes answer 503 JSON;
once the proxy runs they answer 200 without a restart. A database restart
(the proxy drops every connection and comes back) is absorbed by the first
request: its stale pooled connection fails, the request is replayed on a new
one. ``@db_transaction(attempts=N)`` follows the same rule (a lost connection
before the commit is retried, one lost in the commit is raised).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import webtest
from reliability_helpers import Live, LoopbackProxy, add_view
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from myapp import main
from myapp.db import current_session, current_transaction, db_transaction, get_tm
from myapp.models import Item

# PostgreSQL (pg_terminate_backend) and MySQL/MariaDB (KILL CONNECTION)
pytestmark = pytest.mark.server_only


def _mysql(live: Live) -> bool:
    return live.engine.dialect.name in ("mysql", "mariadb")


def backend_pid(live: Live, session: Any) -> int:
    """The server's id of ``session``'s connection."""
    sql = "SELECT CONNECTION_ID()" if _mysql(live) else "SELECT pg_backend_pid()"
    return int(session.scalar(text(sql)))


KILLS = 100
AT_COMMIT_KILLS = 10


class Killer:
    """Views that wait to be killed, and the test side that kills their backend."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.pids: queue.Queue[int] = queue.Queue()
        self.go = threading.Event()
        self.attempts: dict[str, list[int]] = {}
        self.admin = live.engine  # another connection of the same pool kills

    def mid_request(self, request: Any) -> dict[str, Any]:
        n = request.matchdict["n"]
        attempt = request.environ["retry.attempt"]
        self.attempts.setdefault(n, []).append(attempt)
        session = request.dbsession
        session.add(Item(name=self.live.name(f"-{n}-first")))
        session.flush()
        pid = backend_pid(self.live, session)
        if attempt == 0:
            self._wait_for_the_kill(pid)
        session.add(Item(name=self.live.name(f"-{n}-second")))
        session.flush()  # attempt 0: the connection is gone
        return {"n": n, "attempt": attempt, "pid": pid}

    def at_commit(self, request: Any) -> dict[str, Any]:
        n = request.matchdict["n"]
        attempt = request.environ["retry.attempt"]
        self.attempts.setdefault(n, []).append(attempt)
        session = request.dbsession
        session.add(Item(name=self.live.name(f"-{n}-first")))
        session.flush()
        pid = backend_pid(self.live, session)
        # killed inside the commit: after the before-commit hooks, the COMMIT itself fails
        request.tm.get().addBeforeCommitHook(lambda: self._wait_for_the_kill(pid))
        return {"n": n, "attempt": attempt}

    def _wait_for_the_kill(self, pid: int) -> None:
        self.go.clear()
        self.pids.put(pid)
        assert self.go.wait(30), "the test never let the view go on"

    def kill_next(self) -> int:
        """Terminate the backend the waiting view reported; return its pid once it is gone."""
        pid = self.pids.get(timeout=30)
        mysql = _mysql(self.live)
        with self.admin.connect() as conn:
            if mysql:
                conn.exec_driver_sql(f"KILL CONNECTION {int(pid)}")
            else:
                assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
            deadline = time.monotonic() + 10
            while True:
                alive = conn.scalar(
                    text(
                        "SELECT count(*) FROM information_schema.processlist WHERE id = :pid"
                        if mysql
                        else "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"
                    ),
                    {"pid": pid},
                )
                conn.commit()  # pg_stat_activity is a snapshot per transaction
                if not alive:
                    break
                assert time.monotonic() < deadline, f"backend {pid} did not exit"
                time.sleep(0.005)
        self.go.set()
        return pid

    def configure(self, config: Any) -> None:
        add_view(config, "/t/kill/{n}", self.mid_request, request_method="POST")
        add_view(config, "/t/kill-at-commit/{n}", self.at_commit, request_method="POST")


@pytest.fixture
def server_thread() -> Iterator[ThreadPoolExecutor]:
    """One long-lived "server thread" for every request of a test."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="server")
    yield executor
    executor.shutdown(wait=True)


def _count(names: list[str], live: Live, n: int, which: str) -> int:
    return names.count(live.name(f"-{n}-{which}"))


@pytest.mark.slow
def test_backend_killed_mid_request_100_times(live: Live, server_thread: Any) -> None:
    killer = Killer(live)
    testapp = webtest.TestApp(live.app(killer.configure), extra_environ={"HTTP_HOST": "x"})
    outcomes: list[tuple[int, int]] = []
    for n in range(KILLS):
        future = server_thread.submit(lambda n=n: testapp.post(f"/t/kill/{n}", expect_errors=True))
        killed = killer.kill_next()
        response = future.result(timeout=60)
        assert response.content_type == "application/json", response.text
        if response.status_int == 200:
            assert response.json["attempt"] == 1  # replayed once, on a new connection
            assert response.json["pid"] != killed
        else:  # the only other clean outcome
            assert response.status_int == 503, response.text
            assert response.json == {"error": "database unavailable, try again shortly"}
        outcomes.append((n, response.status_int))
        assert live.engine.pool.checkedout() == 0
    retried = sum(1 for _, status in outcomes if status == 200)
    assert retried == KILLS, outcomes  # every kill happened before the commit: all replayed
    names = live.item_names()
    for n, status in outcomes:  # nothing half-written: both rows once, or neither
        expected = 1 if status == 200 else 0
        assert _count(names, live, n, "first") == _count(names, live, n, "second") == expected
    assert all(tries == [0, 1] for tries in killer.attempts.values())
    # the pool recovered: the next requests on that thread just work
    created = server_thread.submit(lambda: testapp.post("/items", status=200)).result(60)
    server_thread.submit(lambda: testapp.get(f"/items/{created.json['id']}", status=200)).result(60)
    assert live.engine.pool.checkedout() == 0
    with live.engine.begin() as conn:  # the row /items created has no token: remove it
        conn.execute(Item.__table__.delete().where(Item.id == created.json["id"]))


def test_backend_killed_during_the_commit_is_a_503_not_a_replay(
    live: Live, server_thread: Any
) -> None:
    killer = Killer(live)
    testapp = webtest.TestApp(live.app(killer.configure), extra_environ={"HTTP_HOST": "x"})
    for n in range(AT_COMMIT_KILLS):
        future = server_thread.submit(
            lambda n=n: testapp.post(f"/t/kill-at-commit/{n}", expect_errors=True)
        )
        killer.kill_next()
        response = future.result(timeout=60)
        assert response.status_int == 503, response.text
        assert response.content_type == "application/json"
        assert response.json == {"error": "database unavailable, try again shortly"}
        assert response.headers["Retry-After"] == "5"
        assert killer.attempts[str(n)] == [0]  # ambiguous: never replayed
        assert live.engine.pool.checkedout() == 0
    assert live.item_names() == []  # the server never committed those transactions
    response = server_thread.submit(lambda: testapp.get("/healthz", status=200)).result(60)
    assert response.json == {"status": "ok", "database": live.engine.dialect.name}


def _terminate(live: Live, pid: int) -> None:
    """Terminate backend ``pid`` from another connection and wait until it is gone."""
    killer = Killer(live)
    killer.pids.put(pid)
    killer.kill_next()


def test_a_unit_of_work_that_lost_its_connection_is_retried_once(live: Live) -> None:
    """``@db_transaction(attempts=2)`` (scripts, commands): replayed on a new connection."""
    calls: list[int] = []

    @db_transaction(attempts=2)
    def work() -> None:
        session = current_session()
        calls.append(len(calls))
        session.add(Item(name=live.name("-first")))
        session.flush()
        if len(calls) == 1:
            _terminate(live, backend_pid(live, session))
        session.add(Item(name=live.name("-second")))
        session.flush()

    with live.database.scope():
        work()
    assert calls == [0, 1]
    assert live.item_names() == [live.name("-first"), live.name("-second")]


def test_a_unit_of_work_that_lost_its_connection_in_the_commit_is_not_retried(
    live: Live,
) -> None:
    calls: list[int] = []

    @db_transaction(attempts=3)
    def work() -> None:
        session = current_session()
        calls.append(len(calls))
        session.add(Item(name=live.name("-first")))
        session.flush()
        pid = backend_pid(live, session)
        get_tm().get().addBeforeCommitHook(lambda: _terminate(live, pid))

    with live.database.scope():
        with pytest.raises(OperationalError) as info:
            work()
    assert info.value.connection_invalidated
    assert calls == [0]  # the COMMIT may have been applied: never replayed
    assert live.item_names() == []
    assert current_transaction() is None


# ---------------------------------------------------------------------------
# the database unreachable at start-up, then back


@pytest.fixture
def proxied_app(
    dbengine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, LoopbackProxy]]:
    """``myapp.main`` whose database URL goes through a (stopped) loopback proxy."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    target = make_url(dbengine.url.render_as_string(hide_password=False))
    default_port = 3306 if target.get_backend_name() in ("mysql", "mariadb") else 5432
    proxy = LoopbackProxy(("127.0.0.1", target.port or default_port))
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = main(
        {},
        **{
            "sqlalchemy.url": url,
            "myapp.env": "testing",  # no pre-ping: stale connections reach the request
            "myapp.expose_errors": "false",
            "myapp.session_secret": "reliability-tests-session-secret-0123456789",
        },
    )
    try:
        yield app, proxy
    finally:
        proxy.stop()
        app.registry["db"].dispose()


def test_unreachable_at_startup_then_back_then_restarted(
    proxied_app: tuple[Any, LoopbackProxy], request_thread: Any, live: Live
) -> None:
    from myapp.testing.plugin import threaded_wsgi

    app, proxy = proxied_app
    engine = app.registry["db"].engine
    testapp = webtest.TestApp(threaded_wsgi(app, request_thread), extra_environ={"HTTP_HOST": "x"})
    created: list[int] = []

    def down() -> None:
        for _ in range(3):
            response = testapp.get("/healthz", status=503)
            assert response.json == {
                "status": "unavailable",
                "error": "database unreachable: OperationalError",
            }
            response = testapp.post("/items", status=503)
            assert response.json == {"error": "database unavailable, try again shortly"}
            assert engine.pool.checkedout() == 0

    def up() -> None:
        assert testapp.get("/healthz", status=200).json["status"] == "ok"
        created.append(testapp.post("/items", status=200).json["id"])
        assert testapp.get(f"/items/{created[-1]}", status=200).json["id"] == created[-1]
        assert engine.pool.checkedout() == 0

    try:
        # 1. started while the database is unreachable: nothing connected at start-up
        assert not proxy.running and proxy.accepted == 0
        down()
        assert proxy.accepted == 0
        # 2. the database comes back: the same process recovers by itself
        proxy.start()
        up()
        assert proxy.accepted >= 1
        # 3. a database restart: every pooled connection dies; the first request
        #    after it meets a stale connection and is replayed on a new one
        accepted = proxy.accepted
        proxy.stop()
        proxy.start()
        up()
        assert proxy.accepted > accepted
        # 4. down for a while, then back again
        proxy.stop()
        down()
        proxy.start()
        up()
        assert request_thread.open_transaction() is None
        with live.engine.connect() as conn:  # every 200 POST committed once
            rows = conn.execute(Item.__table__.select().where(Item.id.in_(created))).fetchall()
        assert len(rows) == len(created) == 3
    finally:
        with live.engine.begin() as conn:
            conn.execute(Item.__table__.delete().where(Item.id.in_(created)))
