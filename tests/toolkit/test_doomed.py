"""The doomed mode (@pytest.mark.doomed): one doomed transaction per test; commits refused."""

from __future__ import annotations

import textwrap

import pytest
import transaction
from sqlalchemy import func, select
from transaction.interfaces import AlreadyInTransaction, DoomedTransaction

from myapp.db import NestedTransactionError, TransactionManaged, db_transaction
from myapp.models import Company
from myapp.testing import ensure_committed, nested_savepoint, persisted_fixture
from myapp.testing.factories import CompanyFactory


def count(db):
    return db.session.scalar(select(func.count()).select_from(Company))


@pytest.mark.doomed
def test_doomed_mode_reads_and_writes_without_savepoints(db):
    assert db.doomed
    CompanyFactory.create_batch(2)
    assert count(db) == 2
    assert not db.session.in_nested_transaction()  # straight in the outer transaction
    with db_transaction() as session:  # nested units of work are savepoints: allowed
        session.add(Company(name="nested"))
    assert count(db) == 3


@pytest.mark.doomed
def test_doomed_mode_refuses_session_commit(db):
    CompanyFactory()
    with pytest.raises(TransactionManaged, match=r"doomed transaction.*@pytest\.mark\.doomed"):
        db.session.commit()


@pytest.mark.doomed
def test_doomed_mode_refuses_durable_units_and_manager_commits(db):
    with pytest.raises(NestedTransactionError, match="durable"):
        with db_transaction(durable=True):
            pass
    with pytest.raises(DoomedTransaction):
        transaction.commit()
    with pytest.raises(AlreadyInTransaction):
        with transaction.manager:
            pass


@pytest.mark.doomed
def test_doomed_mode_refuses_the_commit_helpers(db):
    with pytest.raises(RuntimeError, match=r"doomed transaction.*@pytest\.mark\.doomed"):
        with ensure_committed(db):
            pass
    with pytest.raises(TransactionManaged, match="doomed"):
        persisted_fixture(db, CompanyFactory(), Company)
    with nested_savepoint(db):  # savepoints are fine: nothing is committed
        CompanyFactory()
        db.session.commit()
    assert count(db) == 1  # the factory's company from persisted_fixture, flushed only


def test_nothing_from_the_doomed_tests_survives(db):
    assert count(db) == 0


DOOMED_TESTS = """
    import pytest
    import transaction

    from myapp.db import db_transaction
    from myapp.testing.factories import CompanyFactory

    pytestmark = pytest.mark.doomed

    def test_session_commit(db):
        CompanyFactory()
        db.session.commit()

    def test_durable_unit_of_work(db):
        with db_transaction(durable=True) as session:
            CompanyFactory()

    def test_transaction_commit(db):
        CompanyFactory()
        transaction.commit()

    def test_transaction_manager_block(db):
        with transaction.manager:
            CompanyFactory()

    def test_testapp(testapp):
        pass

    def test_flush_only_is_fine(db):
        CompanyFactory()
        db.session.flush()
"""


def test_doomed_mode_failures_say_why(inner):
    inner.pytester.makepyfile(test_inner_doomed=textwrap.dedent(DOOMED_TESTS))
    result = inner.run("-v")
    result.assert_outcomes(passed=1, failed=4, errors=1)
    out = result.stdout.str()
    # every refused commit carries the same explanation, naming the marker (counted in the
    # failure sections only: under CI=true pytest repeats full messages in the short summary)
    sections = out.split("short test summary info")[0]
    assert sections.count("[myapp] this test runs in the @pytest.mark.doomed mode") == 4
    result.stdout.fnmatch_lines(
        [
            # errors (setup) are reported before failures
            "*testapp cannot run in the @pytest.mark.doomed mode: requests commit*",
            "*TransactionManaged: session.commit() in a doomed transaction: it can never commit*",
            "*NestedTransactionError: durable db_transaction() inside a doomed transaction*",
            "*DoomedTransaction*",
            "*AlreadyInTransaction*",
        ],
        consecutive=False,
    )
