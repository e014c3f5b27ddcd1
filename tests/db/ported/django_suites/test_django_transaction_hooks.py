# Ported from Django's test suite: tests/transaction_hooks/tests.py (Django 5.2 sdist).
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
"""Django's ``tests/transaction_hooks/tests.py`` (``TestConnectionOnCommit``), ported to myapp.

``transaction.on_commit(fn, robust=...)`` is :func:`myapp.db.on_commit`;
``transaction.atomic`` is :class:`myapp.db.db_transaction`. ``Thing`` is this
directory's own model (see conftest.py); ``do(num)`` creates one and registers
a hook that notifies about it, and ``assert_done(nums)`` checks both the
notifications and the committed rows (read on a separate connection). Real
commits, on SQLite and PostgreSQL.

Every test of the class is ported. Two adapt a Django-only notion:

* ``test_hooks_cleared_on_reconnect``: Django's ``connection.close()`` and
  ``connect()`` are closing the DBAPI connection under the unit's session and
  the next unit getting a fresh one from the pool.
* ``test_raises_exception_non_autocommit_mode``: Django refuses ``on_commit``
  with autocommit off outside ``atomic``; myapp's nearest, a scope's implicit
  transaction, has a defined commit, so the hook waits for it (see the test).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from myapp.db import current_session, db_transaction, on_commit


def _error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


class TestConnectionOnCommit:
    """Django: transaction_hooks.tests.TestConnectionOnCommit (a TransactionTestCase).

    Creation/checking of database objects in parallel with callback tracking
    is to verify that the behavior of the two match in all tested cases.
    """

    def test_executes_immediately_if_no_transaction(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_executes_immediately_if_no_transaction."""  # noqa: E501
        ctx.do(1)
        ctx.assert_done([1])

    def test_robust_if_no_transaction(self, ctx: Any, caplog: pytest.LogCaptureFixture) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_robust_if_no_transaction.

        Django logs on ``django.db.backends.base`` with a fixed message; here
        the error is logged on a ``myapp.db`` logger with the exception and a
        message naming the callback.
        """

        def robust_callback() -> None:
            raise ctx.ForcedError("robust callback")

        with caplog.at_level(logging.ERROR):
            on_commit(robust_callback, robust=True)
            ctx.do(1)

        ctx.assert_done([1])
        [log_record] = _error_records(caplog)
        assert log_record.name.startswith("myapp.db")
        assert "robust_callback" in log_record.getMessage()
        assert log_record.exc_info is not None
        raised_exception = log_record.exc_info[1]
        assert isinstance(raised_exception, ctx.ForcedError)
        assert str(raised_exception) == "robust callback"

    def test_robust_transaction(self, ctx: Any, caplog: pytest.LogCaptureFixture) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_robust_transaction."""

        def robust_callback() -> None:
            raise ctx.ForcedError("robust callback")

        with caplog.at_level(logging.ERROR):
            with db_transaction():
                on_commit(robust_callback, robust=True)
                ctx.do(1)

        ctx.assert_done([1])
        [log_record] = _error_records(caplog)
        assert log_record.name.startswith("myapp.db")
        assert "robust_callback" in log_record.getMessage()
        assert log_record.exc_info is not None
        raised_exception = log_record.exc_info[1]
        assert isinstance(raised_exception, ctx.ForcedError)
        assert str(raised_exception) == "robust callback"

    def test_delays_execution_until_after_transaction_commit(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_delays_execution_until_after_transaction_commit."""  # noqa: E501
        with db_transaction():
            ctx.do(1)
            ctx.assert_notified([])
        ctx.assert_done([1])

    def test_does_not_execute_if_transaction_rolled_back(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_does_not_execute_if_transaction_rolled_back."""  # noqa: E501
        try:
            with db_transaction():
                ctx.do(1)
                raise ctx.ForcedError()
        except ctx.ForcedError:
            pass

        ctx.assert_done([])

    def test_executes_only_after_final_transaction_committed(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_executes_only_after_final_transaction_committed."""  # noqa: E501
        with db_transaction():
            with db_transaction():
                ctx.do(1)
                ctx.assert_notified([])
            ctx.assert_notified([])
        ctx.assert_done([1])

    def test_discards_hooks_from_rolled_back_savepoint(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_discards_hooks_from_rolled_back_savepoint."""  # noqa: E501
        with db_transaction():
            # one successful savepoint
            with db_transaction():
                ctx.do(1)
            # one failed savepoint
            try:
                with db_transaction():
                    ctx.do(2)
                    raise ctx.ForcedError()
            except ctx.ForcedError:
                pass
            # another successful savepoint
            with db_transaction():
                ctx.do(3)

        # only hooks registered during successful savepoints execute
        ctx.assert_done([1, 3])

    def test_no_hooks_run_from_failed_transaction(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_no_hooks_run_from_failed_transaction.

        If outer transaction fails, no hooks from within it run.
        """  # noqa: E501
        try:
            with db_transaction():
                with db_transaction():
                    ctx.do(1)
                raise ctx.ForcedError()
        except ctx.ForcedError:
            pass

        ctx.assert_done([])

    def test_inner_savepoint_rolled_back_with_outer(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_inner_savepoint_rolled_back_with_outer."""  # noqa: E501
        with db_transaction():
            try:
                with db_transaction():
                    with db_transaction():
                        ctx.do(1)
                    raise ctx.ForcedError()
            except ctx.ForcedError:
                pass
            ctx.do(2)

        ctx.assert_done([2])

    def test_no_savepoints_atomic_merged_with_outer(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_no_savepoints_atomic_merged_with_outer."""  # noqa: E501
        with db_transaction():
            with db_transaction():
                ctx.do(1)
                try:
                    with db_transaction(savepoint=False):
                        raise ctx.ForcedError()
                except ctx.ForcedError:
                    pass

        ctx.assert_done([])

    def test_inner_savepoint_does_not_affect_outer(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_inner_savepoint_does_not_affect_outer."""  # noqa: E501
        with db_transaction():
            with db_transaction():
                ctx.do(1)
                try:
                    with db_transaction():
                        raise ctx.ForcedError()
                except ctx.ForcedError:
                    pass

        ctx.assert_done([1])

    def test_runs_hooks_in_order_registered(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_runs_hooks_in_order_registered."""  # noqa: E501
        with db_transaction():
            ctx.do(1)
            with db_transaction():
                ctx.do(2)
            ctx.do(3)

        ctx.assert_done([1, 2, 3])

    def test_hooks_cleared_after_successful_commit(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_hooks_cleared_after_successful_commit."""  # noqa: E501
        with db_transaction():
            ctx.do(1)
        with db_transaction():
            ctx.do(2)

        ctx.assert_done([1, 2])  # not [1, 1, 2]

    def test_hooks_cleared_after_rollback(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_hooks_cleared_after_rollback."""  # noqa: E501
        try:
            with db_transaction():
                ctx.do(1)
                raise ctx.ForcedError()
        except ctx.ForcedError:
            pass

        with db_transaction():
            ctx.do(2)

        ctx.assert_done([2])

    def test_hooks_cleared_on_reconnect(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_hooks_cleared_on_reconnect.

        Django's ``connection.close()`` inside the block is closing the DBAPI
        connection under the unit's session; the next unit gets a working
        connection from the pool (Django's ``connection.connect()``).

        Differs from Django: the unit whose connection was closed raises the
        database error of its failed COMMIT (SQLAlchemy's ``DBAPIError``: the
        driver's "connection is closed") instead of Django's silent end,
        because the caller must learn that its work was not committed.
        """
        with pytest.raises(sa_exc.DBAPIError):
            with db_transaction() as session:
                ctx.do(1)
                session.connection().connection.dbapi_connection.close()

        with db_transaction():
            ctx.do(2)

        ctx.assert_done([2])

    def test_error_in_hook_doesnt_prevent_clearing_hooks(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_error_in_hook_doesnt_prevent_clearing_hooks."""  # noqa: E501
        try:
            with db_transaction():
                on_commit(lambda: ctx.notify("error"))
        except ctx.ForcedError:
            pass

        with db_transaction():
            ctx.do(1)

        ctx.assert_done([1])

    def test_db_query_in_hook(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_db_query_in_hook.

        The hook reads with the scope's session, outside the committed
        transaction.
        """
        Thing = ctx.Thing
        with db_transaction() as session:
            session.add(Thing(num=1))
            session.flush()
            on_commit(
                lambda: [ctx.notify(num) for num in current_session().scalars(select(Thing.num))]
            )

        ctx.assert_done([1])

    def test_transaction_in_hook(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_transaction_in_hook."""

        def hook() -> None:
            with db_transaction():
                t = ctx.create(ctx.Thing, num=1)
                ctx.notify(t.num)

        with db_transaction():
            on_commit(hook)

        ctx.assert_done([1])

    def test_hook_in_hook(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_hook_in_hook."""

        def hook(i: int, add_hook: bool) -> None:
            with db_transaction():
                if add_hook:
                    on_commit(lambda: hook(i + 10, False))
                t = ctx.create(ctx.Thing, num=i)
                ctx.notify(t.num)

        with db_transaction():
            on_commit(lambda: hook(1, True))
            on_commit(lambda: hook(2, True))

        ctx.assert_done([1, 11, 2, 12])

    def test_raises_exception_non_autocommit_mode(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_raises_exception_non_autocommit_mode.

        Differs from Django: Django refuses ``on_commit()`` with autocommit
        off outside ``atomic`` (a transaction managed by hand, whose end it
        cannot see). myapp's nearest is a scope's implicit transaction (a
        session used outside any unit of work), whose end myapp does see:
        ``session.commit()`` commits it (the hook then runs) and the end of
        the scope discards it (the hook is dropped). So the hook is accepted
        and waits for that commit; it never runs before the data it follows
        is committed.
        """  # noqa: E501
        Thing = ctx.Thing
        notified: list[str] = []
        session = current_session()
        session.add(Thing(num=1))
        session.flush()  # the scope's implicit transaction is open, with a pending row
        on_commit(lambda: notified.append("committed"))
        assert notified == []
        assert ctx.committed_nums() == []
        session.commit()
        assert notified == ["committed"]
        assert ctx.committed_nums() == [1]

        # discarded: the hook is dropped with the implicit transaction
        session.add(Thing(num=2))
        session.flush()
        on_commit(lambda: notified.append("discarded"))
        session.rollback()
        assert notified == ["committed"]
        assert ctx.committed_nums() == [1]

    def test_raises_exception_non_callable(self, ctx: Any) -> None:
        """Django: transaction_hooks.tests.TestConnectionOnCommit.test_raises_exception_non_callable.

        Outside and inside a unit of work alike.
        """  # noqa: E501
        with pytest.raises(TypeError, match="callable"):
            on_commit(None)  # type: ignore[arg-type]
        with db_transaction():
            with pytest.raises(TypeError, match="callable"):
                on_commit(None)  # type: ignore[arg-type]
        assert ctx.committed_nums() == []
