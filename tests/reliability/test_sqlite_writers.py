"""SQLite under concurrent writers: a request that reads before it writes must not fail.

In WAL mode a deferred transaction that read, then writes after another
connection committed, cannot upgrade its lock: SQLite answers "database is
locked" at once, whatever the busy timeout. The load test found a third of
the API's writes failing that way (each reads the token and the company
first). Requests that may write now begin ``BEGIN IMMEDIATE``
(``sqlite_write_intent``, set by the request guard for POST/PUT/PATCH/DELETE):
the second writer waits for the first instead. Both halves, on real threads
and a real SQLite file: without the intent the reader-turned-writer fails;
with it both commit. The end-to-end proof under load is test_load.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import add_view, build_app, client, run_threads
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from myapp.db import Database, create_engine_for, is_transient
from myapp.db.engine import sqlite_write_intent
from myapp.models import Item
from myapp.testing.plugin import run_migrations

ITEMS = Item.__table__


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'writers.sqlite'}")
    with engine.begin() as conn:
        run_migrations(conn)
    yield engine
    engine.dispose()


def _read_then_write(
    engine: Engine, read: threading.Event, other_committed: threading.Event
) -> str:
    with engine.begin() as conn:
        conn.scalar(select(func.count()).select_from(ITEMS))  # a read transaction now
        read.set()
        other_committed.wait(0.5)  # with the write intent, the other writer waits for us
        conn.execute(insert(ITEMS).values(name="reader-then-writer"))
    return "ok"


def _write(engine: Engine, read: threading.Event, committed: threading.Event) -> str:
    assert read.wait(10)
    with engine.begin() as conn:
        conn.execute(insert(ITEMS).values(name="other-writer"))
    committed.set()
    return "ok"


def test_without_the_write_intent_a_reader_turned_writer_fails(sqlite_file: Engine) -> None:
    read, committed = threading.Event(), threading.Event()
    with pytest.raises(OperationalError, match="database is locked") as info:
        run_threads(
            lambda: _read_then_write(sqlite_file, read, committed),
            lambda: _write(sqlite_file, read, committed),
        )
    assert is_transient(info.value)  # a request would have been replayed, up to its attempts


def test_with_the_write_intent_both_writers_commit(sqlite_file: Engine) -> None:
    read, committed = threading.Event(), threading.Event()

    def intent(fn: Any) -> Any:
        def run() -> Any:
            with sqlite_write_intent():
                return fn()

        return run

    results = run_threads(
        intent(lambda: _read_then_write(sqlite_file, read, committed)),
        intent(lambda: _write(sqlite_file, read, committed)),
    )
    assert results == ["ok", "ok"]
    with sqlite_file.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ITEMS)) == 2


def test_write_requests_begin_immediate_and_read_requests_do_not(sqlite_file: Engine) -> None:
    database = Database(sqlite_file)
    begins: list[str] = []

    def record(request: Any) -> dict[str, Any]:
        request.dbsession.execute(select(1))
        return {}

    def configure(config: Any) -> None:
        add_view(config, "/t/begin", record)

    from sqlalchemy import event

    def trace(dbapi_connection: Any, record: Any) -> None:
        # what SQLite itself receives (the BEGIN is sent on the driver's connection)
        def seen(statement: str) -> None:
            if statement.startswith("BEGIN"):
                begins.append(statement)

        dbapi_connection.set_trace_callback(seen)

    sqlite_file.dispose()  # new connections, traced from the start
    # reads use the read engine (same file, PRAGMA query_only): trace it too
    engines = [sqlite_file, database.read_engine]
    for engine in engines:
        event.listen(engine, "connect", trace)
    try:
        app = client(build_app(database, configure))
        for method in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"):
            app.request("/t/begin", method=method, status="*")
    finally:
        for engine in engines:
            event.remove(engine, "connect", trace)
        database.dispose()
    assert begins == ["BEGIN"] * 3 + ["BEGIN IMMEDIATE"] * 4


def test_a_begin_immediate_that_times_out_is_a_transient_sqlalchemy_error(
    sqlite_file: Engine,
) -> None:
    """``database is locked`` at BEGIN IMMEDIATE is wrapped like any statement's error."""
    with sqlite_file.connect() as holder:
        with holder.begin():
            holder.execute(insert(ITEMS).values(name="holds the write lock"))
            waiter = sqlite_file.connect()
            try:
                waiter.exec_driver_sql("PRAGMA busy_timeout=50")
                waiter.commit()
                with sqlite_write_intent(), pytest.raises(OperationalError) as caught:
                    waiter.begin()
                assert "database is locked" in str(caught.value)
                assert is_transient(caught.value)
                assert not waiter.in_transaction()
            finally:
                waiter.close()
    assert sqlite_file.pool.checkedout() == 0
