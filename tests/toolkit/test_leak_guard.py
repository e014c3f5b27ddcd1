"""The leak guard: a test that leaves a connection checked out or a unit of work open fails.

Each scenario runs in an inner pytest session (pytester) on the outer test's
backend. The guard's failure is reported at the test's teardown, names the
test and where the connection was checked out, and cleans up: the tests
after it run normally.
"""

from __future__ import annotations

import textwrap

LEAKY_TESTS = """
    import transaction
    from sqlalchemy import func, select, text

    from myapp.db import get_tm
    from myapp.models import Company

    LEAKED = []

    def test_leaks_a_connection(db):
        conn = db.engine.connect()
        # it even holds a write: on SQLite that locks the database for everyone else
        conn.execute(text("INSERT INTO companies (name, created, updated) "
                          "VALUES ('leaked', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        LEAKED.append(conn)

    def test_after_the_connection_leak(db):
        # the leaked connection was invalidated: its write is gone, the database is free
        assert db.engine.pool.checkedout() == 1  # only this test's own connection
        db.session.add(Company(name="after"))
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(Company)) == 1

    def test_leaves_a_unit_of_work_open(db):
        transaction.manager.begin()
        db.session.add(Company(name="never committed"))

    def test_after_the_open_unit_of_work(db):
        from myapp.db import current_transaction
        txn = current_transaction()
        assert txn is None
        assert db.session.scalar(select(func.count()).select_from(Company)) == 0

    def test_request_thread_left_open(db, request_thread):
        request_thread.run(lambda: get_tm().begin())

    def test_after_the_request_thread(db, request_thread):
        assert request_thread.open_transaction() is None

    def test_closed_connections_are_fine(db):
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
"""


def test_leak_guard_names_the_leaking_tests(inner):
    inner.pytester.makepyfile(test_inner_leaks=textwrap.dedent(LEAKY_TESTS))
    result = inner.run("-v")
    # the leaking tests run, then fail at their teardown; the others pass
    result.assert_outcomes(passed=7, errors=3)
    backend = inner.backend
    result.stdout.fnmatch_lines(
        [
            f"*ERROR at teardown of test_leaks_a_connection[[]{backend}[]]*",
            f"leak guard: test_inner_leaks.py::test_leaks_a_connection[[]{backend}[]] left 1 "
            "connection(s) checked out (checked out at test_inner_leaks.py:10 in "
            "test_leaks_a_connection; invalidated and returned to the pool)",
            f"*ERROR at teardown of test_leaves_a_unit_of_work_open[[]{backend}[]]*",
            f"leak guard: test_inner_leaks.py::test_leaves_a_unit_of_work_open[[]{backend}[]] "
            "left transaction.manager with an open unit of work (begun explicitly and never "
            "committed or aborted; it was aborted)",
            f"*ERROR at teardown of test_request_thread_left_open[[]{backend}[]]*",
            f"leak guard: test_inner_leaks.py::test_request_thread_left_open[[]{backend}[]] "
            "a request left its transaction open (it was aborted)",
        ]
    )
    for name in (
        "test_after_the_connection_leak",
        "test_after_the_open_unit_of_work",
        "test_after_the_request_thread",
        "test_closed_connections_are_fine",
    ):
        result.stdout.fnmatch_lines([f"*::{name}[[]{backend}[]] PASSED*"])


RAW_LEAKS = """
    from sqlalchemy import text

    LEAKED = []

    def test_raw_dbengine_leak(dbengine):
        conn = dbengine.connect()
        conn.execute(text("SELECT 1"))
        LEAKED.append(conn)

    def test_after_the_raw_leak(dbengine):
        assert dbengine.pool.checkedout() == 0  # reclaimed by the guard

    def test_committed_rows_engine_leak(committed_rows):
        LEAKED.append(committed_rows.engine.connect())

    def test_closed_raw_connection_is_fine(dbengine):
        with dbengine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def test_no_database_at_all():
        assert True
"""


def test_leak_guard_covers_every_engine_the_toolkit_made(inner):
    """Not only tests that use ``db``: a raw ``dbengine.connect()`` that is kept fails too."""
    inner.pytester.makepyfile(test_inner_raw=textwrap.dedent(RAW_LEAKS))
    result = inner.run("-v", "-p", "no:randomly")
    backend = inner.backend
    result.stdout.fnmatch_lines(
        [
            f"*ERROR at teardown of test_raw_dbengine_leak[[]{backend}[]]*",
            f"leak guard: test_inner_raw.py::test_raw_dbengine_leak[[]{backend}[]] left 1 "
            "connection(s) checked out (checked out at test_inner_raw.py:6 in "
            "test_raw_dbengine_leak; invalidated and returned to the pool)",
            f"*ERROR at teardown of test_committed_rows_engine_leak[[]{backend}[]]*",
            f"leak guard: test_inner_raw.py::test_committed_rows_engine_leak[[]{backend}[]] left 1 "
            "connection(s) of its committed_rows engines checked out (checked out at "
            "test_inner_raw.py:14 in test_committed_rows_engine_leak; invalidated and returned "
            "to the pool)",
        ]
    )
    for name in (
        f"test_after_the_raw_leak[[]{backend}[]]",
        f"test_closed_raw_connection_is_fine[[]{backend}[]]",
        "test_no_database_at_all",
    ):
        result.stdout.fnmatch_lines([f"*::{name} PASSED*"])
    result.assert_outcomes(passed=5, errors=2)
