"""MySQL/MariaDB (``myapp/db/mysql.py``): what every connection is, and the transactional
guarantees on real InnoDB (real deadlocks, real lock waits, real ``KILL CONNECTION``).

Where a guarantee differs from PostgreSQL's it is tested as it is (the documented
differences of docs/architecture.md, "MySQL/MariaDB").
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from myapp.db import (
    ReadOnlyViolation,
    current_session,
    current_transaction,
    db_read_only,
    db_transaction,
    get_tm,
    is_transient,
)
from myapp.db.mysql import READ_ONLY_CODE, error_code, is_mysql
from myapp.db.readpath import is_read_engine
from myapp.models import Event, Item

pytestmark = pytest.mark.mysql_only


def new_items(real: Any, *names: str) -> list[int]:
    """Commit items named ``names`` (with the test's token); their ids."""
    ids = []
    with real.engine.begin() as conn:
        for name in names:
            result = conn.execute(Item.__table__.insert().values(name=real.id(name)))
            ids.append(result.inserted_primary_key[0])
    return ids


def names(real: Any, ids: list[int]) -> list[str]:
    with real.engine.connect() as conn:
        return [conn.scalar(select(Item.name).where(Item.id == i)) for i in ids]


# ---------------------------------------------------------------------------
# every connection


def test_every_connection_is_strict_utc_utf8mb4_read_committed(real: Any, backend: str) -> None:
    assert is_mysql(real.engine.dialect)
    with real.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT @@session.sql_mode, @@session.time_zone, @@character_set_client, "
                "@@character_set_connection, @@character_set_results, @@session.tx_isolation"
            )
        ).one()
    sql_mode, zone, client, connection, results, isolation = row
    assert "STRICT_ALL_TABLES" in sql_mode and "STRICT_TRANS_TABLES" in sql_mode
    assert "NO_ZERO_DATE" in sql_mode
    assert zone == "+00:00"
    assert (client, connection, results) == ("utf8mb4", "utf8mb4", "utf8mb4")
    assert isolation == "READ-COMMITTED"


def test_strict_mode_refuses_what_would_be_truncated(real: Any, backend: str) -> None:
    with real.database.scope(), pytest.raises(DataError, match="Data too long"):
        with db_transaction() as session:
            session.add(Item(name=real.id("x" * 100)))  # String(64)
    assert real.item_count() == 0


def test_four_byte_characters_and_exact_comparisons(real: Any, backend: str) -> None:
    name = real.id("🚕 ünïcödé")
    with real.database.scope():
        with db_transaction() as session:
            session.add(Item(name=name))
        with db_read_only() as session:
            assert session.scalar(select(Item.name).where(Item.name == name)) == name
            # utf8mb4_nopad_bin: case and trailing spaces count, as on PostgreSQL
            assert session.scalar(select(Item.id).where(Item.name == name.upper())) is None
            assert session.scalar(select(Item.id).where(Item.name == name + " ")) is None


# ---------------------------------------------------------------------------
# the read path


def test_reads_use_a_read_engine_the_server_keeps_read_only(real: Any, backend: str) -> None:
    [item_id] = new_items(real, "a")
    with real.database.scope():
        with db_read_only() as session:
            assert is_read_engine(session.connection().engine)
            assert session.scalar(text("SELECT @@session.tx_read_only")) == 1
            assert session.get(Item, item_id) is not None
            for sql in (
                "UPDATE items SET name = 'x'",
                "/* hi */ DELETE FROM items",
                "INSERT INTO items (name) VALUES ('raw')",
            ):
                with pytest.raises(ReadOnlyViolation) as info:
                    session.connection().exec_driver_sql(sql)
                assert isinstance(info.value, DBAPIError)
                assert error_code(info.value) == READ_ONLY_CODE  # the server refused it
    assert names(real, [item_id]) == [real.id("a")]
    assert real.item_count() == 1


def test_a_read_only_savepoint_is_not_read_only_at_the_database(real: Any, backend: str) -> None:
    """The documented difference: inside a transaction under way, MySQL/MariaDB refuses to
    change its characteristics (error 1568), so a ``db_read_only()`` nested in a write unit
    is guarded by the ORM only; a raw SQL write there reaches the database."""
    [item_id] = new_items(real, "a")
    with real.database.scope():
        with db_transaction() as outer:
            outer.get(Item, item_id)
            with pytest.raises(ReadOnlyViolation):  # the ORM's refusal holds
                with db_read_only() as session:
                    session.add(Item(name=real.id("orm")))
                    session.flush()
            with db_read_only() as session:
                assert session.scalar(text("SELECT @@session.tx_read_only")) == 0
                session.connection().exec_driver_sql(
                    "UPDATE items SET name = %s WHERE id = %s", (real.id("raw"), item_id)
                )  # not refused by the database...
                assert session.scalar(select(Item.name).where(Item.id == item_id)) == real.id("raw")
    # ... but a read-only unit never keeps anything: its savepoint was rolled back
    assert names(real, [item_id]) == [real.id("a")]


def test_a_read_only_unit_first_in_a_write_unit_leaves_it_writable(real: Any, backend: str):
    """``SET TRANSACTION READ ONLY`` applies to the *next* transaction: sent for a savepoint
    before the outer transaction's first statement, it would make the outer one read-only."""
    [item_id] = new_items(real, "a")
    with real.database.scope():
        with db_transaction() as outer:
            with db_read_only() as session:  # the very first thing the unit does
                assert session.get(Item, item_id) is not None
            assert outer.scalar(text("SELECT @@session.tx_read_only")) == 0
            outer.execute(update(Item).where(Item.id == item_id).values(name=real.id("b")))
    assert names(real, [item_id]) == [real.id("b")]


def test_an_outermost_read_only_unit_on_the_primary_is_read_only(real: Any, backend: str):
    """No read engine (a scope reading from the primary after a write): SET TRANSACTION
    READ ONLY before the transaction's first statement."""
    [item_id] = new_items(real, "a")
    with real.database.scope():
        with db_transaction() as session:  # the scope now reads from the primary
            session.get(Item, item_id)
        with db_read_only() as session:
            with pytest.raises(ReadOnlyViolation):
                session.connection().exec_driver_sql("DELETE FROM items")
    assert real.item_count() == 1


# ---------------------------------------------------------------------------
# isolation: READ COMMITTED, and snapshots on request


def test_read_committed_sees_other_commits_and_a_snapshot_does_not(real: Any, backend: str) -> None:
    [item_id] = new_items(real, "v0")
    seen: list[str] = []
    with real.database.scope():
        with db_transaction() as session:
            seen.append(session.scalar(select(Item.name).where(Item.id == item_id)))
            with real.engine.begin() as other:
                other.execute(update(Item).where(Item.id == item_id).values(name=real.id("v1")))
            seen.append(session.scalar(select(Item.name).where(Item.id == item_id)))
        with db_read_only(snapshot=True) as session:
            seen.append(session.scalar(select(Item.name).where(Item.id == item_id)))
            with real.engine.begin() as other:
                other.execute(update(Item).where(Item.id == item_id).values(name=real.id("v2")))
            seen.append(session.scalar(select(Item.name).where(Item.id == item_id)))
    # READ COMMITTED: the second read sees v1; the snapshot keeps v1 after v2's commit
    assert seen == [real.id("v0"), real.id("v1"), real.id("v1"), real.id("v1")]
    assert names(real, [item_id]) == [real.id("v2")]


# ---------------------------------------------------------------------------
# retries: real InnoDB deadlocks and lock wait timeouts


def test_a_real_deadlock_is_retried_and_both_units_succeed_once(real: Any, backend: str):
    a, b = new_items(real, "a", "b")
    barrier = threading.Barrier(2, timeout=20)
    calls: dict[str, int] = {"first": 0, "second": 0}
    errors: list[BaseException] = []
    codes: list[int | None] = []

    def worker(label: str, first: int, second: int) -> None:
        @db_transaction(attempts=3)
        def lock_both() -> None:
            calls[label] += 1
            session = current_session()
            session.execute(
                text("UPDATE items SET name = CONCAT(name, :tag) WHERE id = :id"),
                {"tag": f"+{label}", "id": first},
            )
            if calls[label] == 1:
                barrier.wait()  # both hold their first row: each now wants the other's
            try:
                session.execute(
                    text("UPDATE items SET name = CONCAT(name, :tag) WHERE id = :id"),
                    {"tag": f"+{label}", "id": second},
                )
            except OperationalError as exc:
                codes.append(error_code(exc))
                raise

        try:
            with real.database.scope():
                lock_both()
            assert current_transaction(get_tm()) is None
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=("first", a, b)),
        threading.Thread(target=worker, args=("second", b, a)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert codes == [1213]  # one victim, InnoDB's deadlock
    assert sorted(calls.values()) == [1, 2]  # the victim ran twice, the other once
    for name in names(real, [a, b]):  # each unit's update is in each row exactly once
        assert name.count("+first") == 1 and name.count("+second") == 1


def test_a_lock_wait_timeout_is_retried(real: Any, backend: str) -> None:
    [item_id] = new_items(real, "a")
    holder = real.engine.connect()
    holder_txn = holder.begin()
    holder.execute(update(Item).where(Item.id == item_id).values(name=real.id("held")))
    calls: list[int] = []

    @db_transaction(attempts=2)
    def rename() -> None:
        calls.append(len(calls))
        session = current_session()
        session.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        if len(calls) == 2:
            holder_txn.commit()  # the lock is gone for the second attempt
        session.execute(
            update(Item).where(Item.id == item_id).values(name=real.id("mine"))
        )  # attempt 1: error 1205 after 1 s

    try:
        with real.database.scope():
            rename()
    finally:
        if holder_txn.is_active:
            holder_txn.rollback()
        holder.close()
    assert calls == [0, 1]
    assert names(real, [item_id]) == [real.id("mine")]


def test_the_retryable_errors_are_the_documented_ones(real: Any, backend: str) -> None:
    with real.engine.connect() as conn:
        with pytest.raises(DBAPIError) as info:
            conn.exec_driver_sql("SELECT * FROM no_such_table")
    assert error_code(info.value) == 1146 and not is_transient(info.value)
    [item_id] = new_items(real, "a")
    with real.engine.connect() as conn:
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
        conn.commit()
        with real.engine.begin() as holder:
            holder.execute(update(Item).where(Item.id == item_id).values(name=real.id("h")))
            with pytest.raises(OperationalError) as info:
                with conn.begin():
                    conn.execute(update(Item).where(Item.id == item_id).values(name="x"))
    assert error_code(info.value) == 1205 and is_transient(info.value)


# ---------------------------------------------------------------------------
# lost connections: KILL CONNECTION


def _kill(real: Any, connection_id: int) -> None:
    with real.engine.connect() as killer:
        killer.exec_driver_sql(f"KILL CONNECTION {int(connection_id)}")


def test_a_unit_that_lost_its_connection_before_the_commit_is_retried(real: Any, backend: str):
    calls: list[int] = []

    @db_transaction(attempts=3)
    def work() -> None:
        session = current_session()
        calls.append(len(calls))
        session.add(Event(id=real.id(len(calls)), title="t"))
        session.flush()
        if len(calls) == 1:
            _kill(real, session.scalar(text("SELECT CONNECTION_ID()")))
            session.execute(text("SELECT 1"))  # the killed connection: a disconnect

    with real.database.scope():
        work()
    assert calls == [0, 1]
    assert real.event_ids() == {real.id(2)}  # the first attempt's row was rolled back


def test_a_unit_that_lost_its_connection_in_the_commit_is_not_retried(real: Any, backend: str):
    calls: list[int] = []

    @db_transaction(attempts=3)
    def work() -> None:
        session = current_session()
        calls.append(len(calls))
        session.add(Event(id=real.id("first"), title="t"))
        session.flush()
        connection_id = session.scalar(text("SELECT CONNECTION_ID()"))
        get_tm().get().addBeforeCommitHook(lambda: _kill(real, connection_id))

    with real.database.scope():
        with pytest.raises(OperationalError) as info:
            work()
    assert info.value.connection_invalidated
    assert calls == [0]  # the COMMIT may have been applied: never replayed
    assert real.event_ids() == set()
    assert current_transaction() is None


# ---------------------------------------------------------------------------
# round trips (benchmarks/roundtrips.py's counting proxy in front of the server)


def test_round_trips_of_a_read_and_a_write(real: Any, backend: str) -> None:
    """A read on the read engine: 1 round trip (no COMMIT/ROLLBACK: the server's status says
    no transaction is open). A write: its statements + the COMMIT (no BEGIN is ever sent)."""
    from sqlalchemy.engine import make_url

    from benchmarks.roundtrips import CountingProxy
    from myapp.db import Database, create_engine_for

    url = make_url(real.engine.url.render_as_string(hide_password=False))
    [item_id] = new_items(real, "a")
    with CountingProxy(url.host or "127.0.0.1", url.port or 3306) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        database = Database(create_engine_for(proxied.render_as_string(hide_password=False)))
        try:
            counts: dict[str, list[int]] = {"read": [], "write": []}
            for _ in range(3):  # the first of each connects (and sets the session up)
                with proxy.window("read") as w, database.scope():
                    with db_read_only() as session:
                        assert session.get(Item, item_id).name == real.id("a")
                counts["read"].append(w.round_trips)
                with proxy.window("write") as w, database.scope():
                    with db_transaction() as session:
                        item = Item(name=real.id("w"))
                        session.add(item)
                        session.flush()  # INSERT
                        item.name = real.id("w2")  # UPDATE at the commit's flush
                counts["write"].append(w.round_trips)
        finally:
            database.dispose()
    assert counts["read"][1:] == [1, 1], counts
    assert counts["write"][1:] == [3, 3], counts  # INSERT, UPDATE, COMMIT
