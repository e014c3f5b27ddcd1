# Ported from Django's test suite: tests/transactions/tests.py (Django 5.2 sdist).
#
# Copyright (c) Django Software Foundation and individual contributors.
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without modification,
# are permitted provided that the following conditions are met:
#
#     1. Redistributions of source code must retain the above copyright notice,
#        this list of conditions and the following disclaimer.
#
#     2. Redistributions in binary form must reproduce the above copyright
#        notice, this list of conditions and the following disclaimer in the
#        documentation and/or other materials provided with the distribution.
#
#     3. Neither the name of Django nor the names of its contributors may be used
#        to endorse or promote products derived from this software without
#        specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND
# ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED
# WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
# DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE FOR
# ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES
# (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES;
# LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON
# ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT
# (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
# SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""Django's ``tests/transactions/tests.py``, ported to pytest against myapp's API.

Mapping: ``transaction.atomic`` is :class:`myapp.db.db_transaction` (bare
decorator, decorator, context manager, ``savepoint=False``, ``durable=True``);
``get_rollback``/``set_rollback``/``mark_for_rollback_on_error`` are the same
names in :mod:`myapp.db`; ``transaction.savepoint()``/``savepoint_rollback``
are the ``transaction`` package's own ``transaction.savepoint()`` and its
``rollback()``; ``connection.commit()``/``rollback()`` inside a block are the
manager's ``transaction.commit()``/``transaction.abort()`` and the session's
``commit()``/``rollback()``; Django's ``TransactionManagementError`` is
:class:`~myapp.db.TransactionManaged` (a commit or rollback refused inside a
unit), :class:`~myapp.db.TransactionFailed` (a statement in a unit that must
roll back), :class:`~myapp.db.NoUnitOfWork` (the rollback flag outside any
unit) or :class:`~myapp.db.NestedTransactionError` (a nested durable block,
Django's ``RuntimeError``); ``DatabaseError``/``IntegrityError``/``Error`` are
SQLAlchemy's. ``Reporter`` is this directory's own model (see conftest.py).
Every test runs on SQLite and PostgreSQL with real commits.

Ported classes: ``AtomicTests`` (:class:`TestAtomic`, autocommit: a bare
``Database.scope()``), ``AtomicInsideTransactionTests``
(:class:`TestAtomicInsideTransaction`: the same tests inside
``with transaction.manager:``), ``AtomicWithoutAutocommitTests``
(:class:`TestAtomicWithoutAutocommit`: inside a scope's implicit transaction),
``AtomicMergeTests``, ``AtomicErrorsTests``, ``AtomicMiscTests``,
``NonAutocommitTests``, ``DurableTransactionTests`` (real commits) and
``DurableTests`` (inside the test toolkit's ``db`` fixture, as Django's runs
inside ``TestCase``'s transaction).

Not ported:

* ``AtomicErrorsTests.test_atomic_prevents_setting_autocommit``: myapp has no
  autocommit switch (``transaction.set_autocommit``); the unit of work is the
  only way to begin and end a transaction.
* ``AtomicErrorsTests.test_atomic_allows_queries_after_fixing_transaction``:
  Django skips it on SQLite and PostgreSQL (``skipIfDBFeature("atomic_transactions")``:
  it runs on MySQL and Oracle only).
* ``AtomicMySQLTests.test_implicit_savepoint_rollback``: MySQL-specific
  (``skipUnless(connection.vendor == "mysql")``).
* ``using=`` (multi-database) has no equivalent: one database per scope.
"""

from __future__ import annotations

from typing import Any

import pytest
import transaction
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, text, update

from myapp.db import (
    NestedTransactionError,
    NoUnitOfWork,
    TransactionFailed,
    TransactionManaged,
    current_session,
    db_transaction,
    get_rollback,
    get_tm,
    is_in_transaction,
    mark_for_rollback_on_error,
    set_rollback,
)


class TestAtomic:
    """Django: transactions.tests.AtomicTests (a TransactionTestCase: real commits).

    Tests for the atomic decorator and context manager. Each test here is
    also run by :class:`TestAtomicInsideTransaction` and
    :class:`TestAtomicWithoutAutocommit`, as Django's subclasses inherit them.
    """

    def test_decorator_syntax_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_decorator_syntax_commit."""

        @db_transaction
        def make_reporter() -> Any:
            return ctx.create(first_name="Tintin")

        reporter = make_reporter()
        ctx.assert_all([reporter])

    def test_decorator_syntax_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_decorator_syntax_rollback."""

        @db_transaction
        def make_reporter() -> None:
            ctx.create(first_name="Haddock")
            raise Exception("Oops, that's his last name")

        with pytest.raises(Exception, match="Oops"):
            make_reporter()
        ctx.assert_all([])

    def test_alternate_decorator_syntax_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_alternate_decorator_syntax_commit."""

        @db_transaction()
        def make_reporter() -> Any:
            return ctx.create(first_name="Tintin")

        reporter = make_reporter()
        ctx.assert_all([reporter])

    def test_alternate_decorator_syntax_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_alternate_decorator_syntax_rollback."""

        @db_transaction()
        def make_reporter() -> None:
            ctx.create(first_name="Haddock")
            raise Exception("Oops, that's his last name")

        with pytest.raises(Exception, match="Oops"):
            make_reporter()
        ctx.assert_all([])

    def test_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_commit."""
        with db_transaction():
            reporter = ctx.create(first_name="Tintin")
        ctx.assert_all([reporter])

    def test_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_rollback."""
        with pytest.raises(Exception, match="Oops"):
            with db_transaction():
                ctx.create(first_name="Haddock")
                raise Exception("Oops, that's his last name")
        ctx.assert_all([])

    def test_nested_commit_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_nested_commit_commit."""
        with db_transaction():
            reporter1 = ctx.create(first_name="Tintin")
            with db_transaction():
                reporter2 = ctx.create(first_name="Archibald", last_name="Haddock")
        ctx.assert_all([reporter2, reporter1])

    def test_nested_commit_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_nested_commit_rollback."""
        with db_transaction():
            reporter = ctx.create(first_name="Tintin")
            with pytest.raises(Exception, match="Oops"):
                with db_transaction():
                    ctx.create(first_name="Haddock")
                    raise Exception("Oops, that's his last name")
        ctx.assert_all([reporter])

    def test_nested_rollback_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_nested_rollback_commit."""
        with pytest.raises(Exception, match="Oops"):
            with db_transaction():
                ctx.create(last_name="Tintin")
                with db_transaction():
                    ctx.create(last_name="Haddock")
                raise Exception("Oops, that's his first name")
        ctx.assert_all([])

    def test_nested_rollback_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_nested_rollback_rollback."""
        with pytest.raises(Exception, match="Oops"):
            with db_transaction():
                ctx.create(last_name="Tintin")
                with pytest.raises(Exception, match="Oops"):
                    with db_transaction():
                        ctx.create(first_name="Haddock")
                    raise Exception("Oops, that's his last name")
                raise Exception("Oops, that's his first name")
        ctx.assert_all([])

    def test_merged_commit_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_merged_commit_commit."""
        with db_transaction():
            reporter1 = ctx.create(first_name="Tintin")
            with db_transaction(savepoint=False):
                reporter2 = ctx.create(first_name="Archibald", last_name="Haddock")
        ctx.assert_all([reporter2, reporter1])

    def test_merged_commit_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_merged_commit_rollback.

        The outer block ends without an exception and rolls back silently:
        the merged block's error marked it for rollback.
        """
        with db_transaction():
            ctx.create(first_name="Tintin")
            with pytest.raises(Exception, match="Oops"):
                with db_transaction(savepoint=False):
                    ctx.create(first_name="Haddock")
                    raise Exception("Oops, that's his last name")
        # Writes in the outer block are rolled back too.
        ctx.assert_all([])

    def test_merged_rollback_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_merged_rollback_commit."""
        with pytest.raises(Exception, match="Oops"):
            with db_transaction():
                ctx.create(last_name="Tintin")
                with db_transaction(savepoint=False):
                    ctx.create(last_name="Haddock")
                raise Exception("Oops, that's his first name")
        ctx.assert_all([])

    def test_merged_rollback_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_merged_rollback_rollback."""
        with pytest.raises(Exception, match="Oops"):
            with db_transaction():
                ctx.create(last_name="Tintin")
                with pytest.raises(Exception, match="Oops"):
                    with db_transaction(savepoint=False):
                        ctx.create(first_name="Haddock")
                    raise Exception("Oops, that's his last name")
                raise Exception("Oops, that's his first name")
        ctx.assert_all([])

    def test_reuse_commit_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_reuse_commit_commit."""
        atomic = db_transaction()
        with atomic:
            reporter1 = ctx.create(first_name="Tintin")
            with atomic:
                reporter2 = ctx.create(first_name="Archibald", last_name="Haddock")
        ctx.assert_all([reporter2, reporter1])

    def test_reuse_commit_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_reuse_commit_rollback."""
        atomic = db_transaction()
        with atomic:
            reporter = ctx.create(first_name="Tintin")
            with pytest.raises(Exception, match="Oops"):
                with atomic:
                    ctx.create(first_name="Haddock")
                    raise Exception("Oops, that's his last name")
        ctx.assert_all([reporter])

    def test_reuse_rollback_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_reuse_rollback_commit."""
        atomic = db_transaction()
        with pytest.raises(Exception, match="Oops"):
            with atomic:
                ctx.create(last_name="Tintin")
                with atomic:
                    ctx.create(last_name="Haddock")
                raise Exception("Oops, that's his first name")
        ctx.assert_all([])

    def test_reuse_rollback_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_reuse_rollback_rollback."""
        atomic = db_transaction()
        with pytest.raises(Exception, match="Oops"):
            with atomic:
                ctx.create(last_name="Tintin")
                with pytest.raises(Exception, match="Oops"):
                    with atomic:
                        ctx.create(first_name="Haddock")
                    raise Exception("Oops, that's his last name")
                raise Exception("Oops, that's his first name")
        ctx.assert_all([])

    def test_force_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_force_rollback."""
        with db_transaction():
            ctx.create(first_name="Tintin")
            # atomic block shouldn't rollback, but force it.
            assert get_rollback() is False
            set_rollback(True)
        ctx.assert_all([])

    def test_prevent_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_prevent_rollback.

        Django's ``transaction.savepoint()``/``savepoint_rollback(sid)`` are
        the ``transaction`` package's ``transaction.savepoint()`` and the
        savepoint's ``rollback()``; the failing query is a ``text()`` SELECT
        of a column that does not exist.
        """
        with db_transaction() as session:
            reporter = ctx.create(first_name="Tintin")
            sid = transaction.savepoint()
            # trigger a database error inside an inner atomic without savepoint
            with pytest.raises(sa_exc.DatabaseError):
                with db_transaction(savepoint=False):
                    session.execute(text("SELECT no_such_col FROM ported_django_reporter"))
            # prevent atomic from rolling back since we're recovering manually
            assert get_rollback() is True
            set_rollback(False)
            sid.rollback()
        ctx.assert_all([reporter])

    def test_failure_on_exit_transaction(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicTests.test_failure_on_exit_transaction.

        Django pushes a wrong savepoint id so that the inner block's RELEASE
        fails; here the inner block's own savepoint is released behind
        SQLAlchemy's back (its name read from the SAVEPOINT statement sent),
        so the unit's RELEASE at exit fails in the database. The inner
        block raises the database error, the outer unit is marked for
        rollback (Django's ``needs_rollback``), its next statement raises
        :class:`TransactionFailed` (Django's TransactionManagementError) and
        it ends rolled back without raising.
        """
        with db_transaction():
            with pytest.raises(sa_exc.DatabaseError):
                with db_transaction() as session:
                    ctx.create(last_name="Tintin")
                    assert len(ctx.all()) == 1
                    # Release the savepoint early to provoke a database error at exit.
                    name = ctx.savepoint_names[-1]
                    session.connection().exec_driver_sql(f"RELEASE SAVEPOINT {name}")
            with pytest.raises(TransactionFailed):
                len(ctx.all())
            assert get_rollback() is True
        ctx.assert_all([])


class TestAtomicInsideTransaction(TestAtomic):
    """Django: transactions.tests.AtomicInsideTransactionTests.

    All basic tests for atomic should also pass within an existing
    transaction: Django enters an outer ``atomic()``; here the tests run inside
    ``with transaction.manager:`` (the thread's explicit-mode manager, as
    pyramid_tm and scripts use it), so every ``db_transaction()`` is nested.
    After each test the manager's transaction commits and exactly what the
    session saw last is committed.
    """

    @pytest.fixture
    def mode(self) -> str:
        return "inside"


class TestAtomicWithoutAutocommit(TestAtomic):
    """Django: transactions.tests.AtomicWithoutAutocommitTests.

    All basic tests for atomic should also pass when autocommit is turned
    off. myapp has no autocommit switch; the nearest is a scope's *implicit*
    transaction (a session used outside any unit of work, as in a script),
    which each test begins with a read.

    Differs from Django: an outermost ``db_transaction()`` adopts the
    scope's implicit transaction and commits it (with what was pending in
    it), because the implicit transaction is the scope's way of running
    without a unit of work, not a transaction someone manages by hand; with
    autocommit off, Django's outermost ``atomic()`` is only a savepoint and
    commits nothing. So here, after each outermost block, the committed state
    equals what the test sees.
    """

    @pytest.fixture
    def mode(self) -> str:
        return "implicit"


class TestAtomicMerge:
    """Django: transactions.tests.AtomicMergeTests (merging transactions with savepoint=False)."""

    def test_merged_outer_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicMergeTests.test_merged_outer_rollback."""
        with db_transaction():
            ctx.create(first_name="Tintin")
            with db_transaction(savepoint=False):
                ctx.create(first_name="Archibald", last_name="Haddock")
                with pytest.raises(Exception, match="Oops"):
                    with db_transaction(savepoint=False):
                        ctx.create(first_name="Calculus")
                        raise Exception("Oops, that's his last name")
                # The third insert couldn't be roll back. Temporarily mark the
                # connection as not needing rollback to check it.
                assert get_rollback() is True
                set_rollback(False)
                assert ctx.count() == 3
                set_rollback(True)
            # The second insert couldn't be roll back. Temporarily mark the
            # connection as not needing rollback to check it.
            assert get_rollback() is True
            set_rollback(False)
            assert ctx.count() == 3
            set_rollback(True)
        # The first block has a savepoint and must roll back.
        ctx.assert_all([])

    def test_merged_inner_savepoint_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicMergeTests.test_merged_inner_savepoint_rollback."""
        with db_transaction():
            reporter = ctx.create(first_name="Tintin")
            with db_transaction():
                ctx.create(first_name="Archibald", last_name="Haddock")
                with pytest.raises(Exception, match="Oops"):
                    with db_transaction(savepoint=False):
                        ctx.create(first_name="Calculus")
                        raise Exception("Oops, that's his last name")
                # The third insert couldn't be roll back. Temporarily mark the
                # connection as not needing rollback to check it.
                assert get_rollback() is True
                set_rollback(False)
                assert ctx.count() == 3
                set_rollback(True)
            # The second block has a savepoint and must roll back.
            assert ctx.count() == 1
        ctx.assert_all([reporter])


class TestAtomicErrors:
    """Django: transactions.tests.AtomicErrorsTests."""

    def test_atomic_prevents_calling_transaction_methods(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicErrorsTests.test_atomic_prevents_calling_transaction_methods.

        Django's ``transaction.commit()``/``rollback()`` are the manager's
        ``transaction.commit()``/``transaction.abort()`` (also called on
        ``get_tm()``, which is what ``request.tm`` is) and the session's
        ``commit()``/``rollback()``: each raises :class:`TransactionManaged`
        and changes nothing (the unit's work is neither committed nor
        discarded, and the unit still commits at its end).
        """  # noqa: E501
        with db_transaction() as session:
            reporter = ctx.create(first_name="Tintin")
            with pytest.raises(TransactionManaged):
                transaction.commit()
            with pytest.raises(TransactionManaged):
                transaction.abort()
            with pytest.raises(TransactionManaged):
                get_tm().commit()
            with pytest.raises(TransactionManaged):
                get_tm().abort()
            with pytest.raises(TransactionManaged):
                session.commit()
            with pytest.raises(TransactionManaged):
                session.rollback()
            assert ctx.committed() == []  # nothing was committed
            assert ctx.all() == [reporter]  # nothing was thrown away
            assert is_in_transaction()
        ctx.assert_all([reporter])

    def test_atomic_prevents_queries_in_broken_transaction(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction.

        The failed INSERT (a duplicate primary key) breaks the unit: its next
        statement raises :class:`TransactionFailed` (Django's
        TransactionManagementError "You can't execute queries until the end
        of the 'atomic' block"), caused by the IntegrityError.

        Differs from Django: the unit then ends with :class:`TransactionFailed`
        instead of Django's silent rollback, because a database error caught
        inside a unit without a savepoint means the unit's work cannot be
        committed, and saying so beats a block that silently did nothing.
        """  # noqa: E501
        r1 = ctx.create(first_name="Archibald", last_name="Haddock")
        Reporter = ctx.Reporter
        with pytest.raises(TransactionFailed):
            with db_transaction() as session:
                with pytest.raises(sa_exc.IntegrityError):
                    # r2 = Reporter(first_name="Cuthbert", last_name="Calculus", id=r1.id)
                    # r2.save(force_insert=True)
                    session.execute(
                        insert(Reporter).values(
                            id=r1.id, first_name="Cuthbert", last_name="Calculus"
                        )
                    )
                # The transaction is marked as needing rollback.
                with pytest.raises(TransactionFailed) as cm:
                    # r2.save(force_update=True)
                    session.execute(
                        update(Reporter).where(Reporter.id == r1.id).values(last_name="Calculus")
                    )
        assert isinstance(cm.value.__cause__, sa_exc.IntegrityError)
        assert ctx.committed() == [r1]
        assert ctx.committed()[0].last_name == "Haddock"

    def test_atomic_prevents_queries_in_broken_transaction_after_client_close(
        self, ctx: Any
    ) -> None:
        """Django: transactions.tests.AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction_after_client_close.

        Django's ``connection.close()`` is closing the DBAPI connection under
        the unit's session (``session.connection().connection.dbapi_connection``).
        The next statement raises a database error (Django's ``Error``).

        Differs from Django: the unit then ends with :class:`TransactionFailed`
        instead of Django's silent rollback, because a database error caught
        inside a unit without a savepoint means its work cannot be committed.
        """  # noqa: E501
        with pytest.raises(TransactionFailed):
            with db_transaction() as session:
                ctx.create(first_name="Archibald", last_name="Haddock")
                session.connection().connection.dbapi_connection.close()
                # The connection is closed and the transaction is marked as
                # needing rollback.
                with pytest.raises(sa_exc.DBAPIError):
                    ctx.create(first_name="Cuthbert", last_name="Calculus")
        # The connection is usable again.
        assert ctx.count() == 0
        assert ctx.committed() == []
        with db_transaction():
            reporter = ctx.create(first_name="Tintin")
        ctx.assert_all([reporter])


class TestAtomicMisc:
    """Django: transactions.tests.AtomicMiscTests."""

    def test_wrap_callable_instance(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicMiscTests.test_wrap_callable_instance.

        #20028 -- Atomic must support wrapping callable instances. Beyond
        Django's check (no exception), the wrapped instance runs in a unit.
        """
        seen = []

        class Callable:
            def __call__(self) -> None:
                seen.append(is_in_transaction())

        # Must not raise an exception
        wrapped = db_transaction(Callable())
        wrapped()
        assert seen == [True]

    def test_atomic_does_not_leak_savepoints_on_failure(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicMiscTests.test_atomic_does_not_leak_savepoints_on_failure.

        #23074 -- Savepoints must be released after rollback. Django reads
        the savepoint id from ``connection.savepoint_ids``; here its name
        comes from the SAVEPOINT statement sent, and the rollback to it is
        raw SQL on the unit's connection.
        """  # noqa: E501
        # Expect an error when rolling back a savepoint that doesn't exist.
        # Done outside of the transaction block to ensure proper recovery.
        with pytest.raises(sa_exc.DBAPIError):
            # Start a plain transaction.
            with db_transaction() as session:
                # Swallow the intentional error raised in the sub-transaction.
                with pytest.raises(Exception, match="Oops"):
                    # Start a sub-transaction with a savepoint.
                    with db_transaction():
                        session.execute(select(1))  # the SAVEPOINT is on the server
                        sid = ctx.savepoint_names[-1]
                        raise Exception("Oops")

                # This is expected to fail because the savepoint no longer exists.
                session.connection().exec_driver_sql(f"ROLLBACK TO SAVEPOINT {sid}")

    def test_mark_for_rollback_on_error_in_transaction(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicMiscTests.test_mark_for_rollback_on_error_in_transaction.

        Django's test asserts ``get_rollback()`` inside the
        ``assertRaisesMessage`` block after the raising statement, where it
        never runs; here it is asserted after that block, as the comment
        intends. The unit marked for rollback ends without raising.
        """  # noqa: E501
        with db_transaction(savepoint=False):
            # Swallow the intentional error raised.
            with pytest.raises(Exception, match="Oops"):
                # Wrap in `mark_for_rollback_on_error` to check if the
                # transaction is marked broken.
                with mark_for_rollback_on_error():
                    # Ensure that we are still in a good state.
                    assert get_rollback() is False
                    raise Exception("Oops")

            # mark_for_rollback_on_error marked the transaction as broken …
            assert get_rollback() is True

            # … and further queries fail.
            with pytest.raises(TransactionFailed):
                ctx.create()

        # Transaction errors are reset at the end of an transaction, so this
        # should just work.
        reporter = ctx.create()
        ctx.assert_all([reporter])

    def test_mark_for_rollback_on_error_in_autocommit(self, ctx: Any) -> None:
        """Django: transactions.tests.AtomicMiscTests.test_mark_for_rollback_on_error_in_autocommit.

        Django reads ``connection.needs_rollback``; myapp has no rollback
        flag outside a unit of work: ``get_rollback()`` raises
        :class:`NoUnitOfWork` there (as Django's ``get_rollback()`` raises
        TransactionManagementError outside an atomic block).
        """
        assert not is_in_transaction()

        # Swallow the intentional error raised.
        with pytest.raises(Exception, match="Oops"):
            # Wrap in `mark_for_rollback_on_error` to check if the transaction
            # is marked broken.
            with mark_for_rollback_on_error():
                # Ensure that we are still in a good state.
                with pytest.raises(NoUnitOfWork):
                    get_rollback()
                raise Exception("Oops")

        # Ensure that `mark_for_rollback_on_error` did not mark the transaction
        # as broken, since we are in autocommit mode …
        assert not is_in_transaction()
        with pytest.raises(NoUnitOfWork):
            get_rollback()

        # … and further queries work nicely.
        reporter = ctx.create()
        ctx.assert_all([reporter])


class TestNonAutocommit:
    """Django: transactions.tests.NonAutocommitTests.

    Django turns autocommit off; the nearest in myapp is a scope's implicit
    transaction (a session used outside any unit of work, as in a script),
    which ``session.commit()``/``session.rollback()`` end.
    """

    @pytest.fixture
    def mode(self) -> str:
        return "implicit"

    def test_orm_query_after_error_and_rollback(self, ctx: Any) -> None:
        """Django: transactions.tests.NonAutocommitTests.test_orm_query_after_error_and_rollback.

        ORM queries are allowed after an error and a rollback in a scope's
        implicit transaction (#27504).
        """
        Reporter = ctx.Reporter
        session = current_session()
        r1 = Reporter(first_name="Archibald", last_name="Haddock")
        session.add(r1)
        session.flush()
        with pytest.raises(sa_exc.IntegrityError):
            # r2 = Reporter(first_name="Cuthbert", last_name="Calculus", id=r1.id)
            # r2.save(force_insert=True)
            session.execute(
                insert(Reporter).values(id=r1.id, first_name="Cuthbert", last_name="Calculus")
            )
        session.rollback()
        assert session.scalars(select(Reporter).order_by(Reporter.id.desc())).first() is None
        assert not is_in_transaction()
        assert ctx.committed() == []

    def test_orm_query_without_autocommit(self, ctx: Any) -> None:
        """Django: transactions.tests.NonAutocommitTests.test_orm_query_without_autocommit.

        #24921 -- ORM queries must be possible in a scope's implicit
        transaction; nothing is committed until ``session.commit()``.
        """
        session = current_session()
        session.add(ctx.Reporter(first_name="Tintin"))
        session.flush()
        assert [r.first_name for r in ctx.all()] == ["Tintin"]
        assert ctx.committed() == []
        session.commit()
        assert [r.first_name for r in ctx.committed()] == ["Tintin"]


class DurableTestsBase:
    """Django: transactions.tests.DurableTestsBase (run by the two classes below)."""

    def test_commit(self, ctx: Any) -> None:
        """Django: transactions.tests.DurableTestsBase.test_commit (DurableTests, DurableTransactionTests)."""  # noqa: E501
        with db_transaction(durable=True):
            reporter = ctx.create(first_name="Tintin")
        ctx.assert_all([reporter])

    def test_nested_outer_durable(self, ctx: Any) -> None:
        """Django: transactions.tests.DurableTestsBase.test_nested_outer_durable (both classes)."""
        with db_transaction(durable=True):
            reporter1 = ctx.create(first_name="Tintin")
            with db_transaction():
                reporter2 = ctx.create(first_name="Archibald", last_name="Haddock")
        ctx.assert_all([reporter2, reporter1])

    def test_nested_both_durable(self, ctx: Any) -> None:
        """Django: transactions.tests.DurableTestsBase.test_nested_both_durable (both classes).

        Django's RuntimeError is :class:`NestedTransactionError`.
        """
        with db_transaction(durable=True):
            with pytest.raises(NestedTransactionError, match="durable"):
                with db_transaction(durable=True):
                    pass

    def test_nested_inner_durable(self, ctx: Any) -> None:
        """Django: transactions.tests.DurableTestsBase.test_nested_inner_durable (both classes)."""
        with db_transaction():
            with pytest.raises(NestedTransactionError, match="durable"):
                with db_transaction(durable=True):
                    pass

    def test_sequence_of_durables(self, ctx: Any) -> None:
        """Django: transactions.tests.DurableTestsBase.test_sequence_of_durables (both classes)."""
        with db_transaction(durable=True):
            reporter = ctx.create(first_name="Tintin 1")
        assert [r for r in ctx.all() if r.first_name == "Tintin 1"] == [reporter]
        with db_transaction(durable=True):
            reporter = ctx.create(first_name="Tintin 2")
        assert [r for r in ctx.all() if r.first_name == "Tintin 2"] == [reporter]


class TestDurableTransaction(DurableTestsBase):
    """Django: transactions.tests.DurableTransactionTests (TransactionTestCase: real commits)."""


class TestDurable(DurableTestsBase):
    """Django: transactions.tests.DurableTests (TestCase: inside the test's own transaction).

    Django's ``TestCase`` wraps each test in atomic blocks that durable
    blocks ignore; here the test runs in the test toolkit's ``db`` fixture,
    whose outer, rolled-back transaction does not count either: a durable
    unit there is outermost. Nothing reaches the database for real: the
    committed state read on a separate connection stays empty.
    """

    @pytest.fixture
    def mode(self) -> str:
        return "testcase"
