"""``isolated_db`` used directly: the leak guard's bookkeeping and its cleanup.

The ``db`` fixture is a thin wrapper around :func:`isolated_db`; these tests
drive the context manager by hand (outside any ``db`` fixture) on the
session's ``database``, so they can watch what it does when a block leaks,
fails, or leaves state behind. ``test_leak_guard.py`` proves the same
through real pytest runs.
"""

from __future__ import annotations

import sys

import pytest
import transaction
from sqlalchemy import func, select

from myapp.db import current_transaction, get_tm
from myapp.models import Company
from myapp.testing.plugin import ConnectionTracker, LeakError, isolated_db


def _here(offset: int = 0) -> str:
    """``file:line`` of the caller's line, plus ``offset`` lines."""
    frame = sys._getframe(1)
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno + offset}"


def test_a_leaked_connection_is_named_invalidated_and_returned(database):
    pool = database.engine.pool
    baseline = pool.checkedout()
    with pytest.raises(LeakError) as info:
        with isolated_db(database, label="the block") as db:
            where = _here(1)
            leaked = db.engine.connect().connection  # the pooled connection
            leaked.cursor().execute("SELECT 1")
    message = str(info.value)
    assert message.startswith("leak guard: the block left 1 connection(s) checked out")
    assert where in message and "in test_a_leaked_connection_is_named" in message
    assert "invalidated and returned to the pool" in message
    assert leaked.dbapi_connection is None  # invalidated: the DBAPI connection was closed
    assert pool.checkedout() == baseline


def test_the_blocks_own_connection_is_tracked_without_being_blamed(database):
    tracker = ConnectionTracker.for_engine(database.engine)
    with isolated_db(database) as db:
        record = db.connection.connection._connection_record
        assert record in tracker.out  # tracked like any other checkout
        assert "isolated_db" in tracker.out[record][2][2]
    assert record not in tracker.out


def test_connections_checked_out_before_the_block_are_not_blamed(database):
    tracker = ConnectionTracker.for_engine(database.engine)
    earlier = database.engine.connect()
    try:
        with isolated_db(database) as db:
            db.session.execute(select(1))
        assert earlier.connection.dbapi_connection is not None  # left alone
        assert earlier.connection._connection_record in tracker.out
    finally:
        earlier.close()


def test_every_leak_of_a_block_is_reported(database):
    with pytest.raises(LeakError) as info:
        with isolated_db(database) as db:
            first = db.engine.connect().connection
            second = db.engine.connect().connection
            with db.engine.connect():  # closed in time: fine
                pass
    assert "left 2 connection(s) checked out" in str(info.value)
    assert first.dbapi_connection is None and second.dbapi_connection is None


def test_a_failing_block_keeps_its_error_and_still_reclaims(database):
    pool = database.engine.pool
    baseline = pool.checkedout()
    with pytest.raises(ZeroDivisionError):
        with isolated_db(database) as db:
            leaked = db.engine.connect().connection
            transaction.manager.begin()  # an open unit of work: aborted too
            1 / 0  # noqa: B018
    assert leaked.dbapi_connection is None
    assert pool.checkedout() == baseline
    assert current_transaction(get_tm()) is None


def test_a_unit_of_work_left_open_is_reported_and_aborted(database):
    with pytest.raises(LeakError, match=r"left transaction\.manager with an open unit of work"):
        with isolated_db(database) as db:
            get_tm().begin()
            db.session.add(Company(name="never committed"))
    assert current_transaction(get_tm()) is None
    with isolated_db(database) as db:
        assert db.session.scalar(select(func.count()).select_from(Company)) == 0


def test_the_factory_is_restored_after_the_block(database):
    factory = database.session_factory
    before = (factory.kw.get("bind"), factory.kw.get("join_transaction_mode"))
    with isolated_db(database) as db:
        assert factory.kw["bind"] is db.connection
        assert factory.kw["join_transaction_mode"] == "create_savepoint"
    assert factory.kw["bind"] is before[0]
    assert factory.kw["join_transaction_mode"] == (before[1] or "conditional_savepoint")
    with isolated_db(database, doomed=True) as db:
        assert factory.kw["join_transaction_mode"] == "rollback_only"
    assert factory.kw["bind"] is before[0]


def test_commits_are_savepoint_releases_rolled_back_at_exit(database):
    with isolated_db(database) as db:
        db.session.add(Company(name="committed"))
        db.session.commit()
        assert current_transaction(get_tm()) is None  # the commit went through the manager
        assert db.session.scalar(select(func.count()).select_from(Company)) == 1
    with isolated_db(database) as db:
        assert db.session.scalar(select(func.count()).select_from(Company)) == 0


def test_the_doomed_mode_can_read_but_never_commit(database):
    with isolated_db(database, doomed=True) as db:
        assert get_tm().get().isDoomed()
        db.session.add(Company(name="doomed"))
        db.session.flush()
        with pytest.raises(transaction.interfaces.DoomedTransaction):
            get_tm().commit()
    assert current_transaction(get_tm()) is None
