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


#: a safety net only: each wait below is for an event that happens in that mode
EVENT_TIMEOUT = 60


def _read_then_write(engine: Engine, read: threading.Event, go_on: threading.Event) -> str:
    with engine.begin() as conn:
        conn.scalar(select(func.count()).select_from(ITEMS))  # a read transaction now
        read.set()
        assert go_on.wait(EVENT_TIMEOUT), "the other writer never got there"
        conn.execute(insert(ITEMS).values(name="reader-then-writer"))
    return "ok"


def _write(
    engine: Engine, read: threading.Event, trying: threading.Event, committed: threading.Event
) -> str:
    assert read.wait(EVENT_TIMEOUT)
    with engine.connect() as conn:

        def seen(statement: str) -> None:  # SQLite calls it as the statement starts running
            if statement.startswith("BEGIN"):
                trying.set()

        conn.connection.driver_connection.set_trace_callback(seen)
        try:
            with conn.begin():
                conn.execute(insert(ITEMS).values(name="other-writer"))
        finally:
            conn.connection.driver_connection.set_trace_callback(None)
    committed.set()
    return "ok"


def test_without_the_write_intent_a_reader_turned_writer_fails(sqlite_file: Engine) -> None:
    """The reader writes once the other writer has committed: always "database is locked"."""
    read, trying, committed = threading.Event(), threading.Event(), threading.Event()
    with pytest.raises(OperationalError, match="database is locked") as info:
        run_threads(
            lambda: _read_then_write(sqlite_file, read, committed),
            lambda: _write(sqlite_file, read, trying, committed),
        )
    assert is_transient(info.value)  # a request would have been replayed, up to its attempts


def test_with_the_write_intent_both_writers_commit(sqlite_file: Engine) -> None:
    """The reader writes once the other writer is trying to begin: it waits for the reader."""
    read, trying, committed = threading.Event(), threading.Event(), threading.Event()

    def intent(fn: Any) -> Any:
        def run() -> Any:
            with sqlite_write_intent():
                return fn()

        return run

    results = run_threads(
        intent(lambda: _read_then_write(sqlite_file, read, trying)),
        intent(lambda: _write(sqlite_file, read, trying, committed)),
    )
    assert results == ["ok", "ok"]
    with sqlite_file.connect() as conn:
        names = list(conn.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id)))
    assert names == ["reader-then-writer", "other-writer"]  # the other writer waited


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
