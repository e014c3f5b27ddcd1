"""Beyond Django's suites: the holes issue 11 found in myapp's own tests (items 2 and 6).

Same fixtures as the ported suites (this directory's models, a real engine,
real commits, SQLite and PostgreSQL):

* an ``on_commit`` hook must not run when the COMMIT itself fails (a
  foreign key checked at COMMIT);
* 1,000 failing nested units in one transaction leave no savepoint open on
  the server, and the transaction's own work is intact and commits (and
  200 succeeding ones leave none either);
* the manager's own ``commit()``/``abort()`` is refused inside every kind of
  unit-of-work block and changes nothing;
* a non-robust hook that raises after the commit: the data is committed, the
  exception leaves the commit call, the hooks after it are discarded; outside
  any unit of work a hook runs at once and its error propagates unless robust;
* ``with transaction.manager:`` (no unit): hooks wait for its commit and the
  rollback flag works there; ``mark_for_rollback_on_error()`` in a nested
  unit rolls back that unit only; after a failed ``savepoint=False`` unit,
  reads and writes are refused until the enclosing unit ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
import transaction
from sqlalchemy import event, select
from sqlalchemy import exc as sa_exc

from myapp.db import (
    TransactionFailed,
    TransactionManaged,
    current_session,
    db_read_only,
    db_transaction,
    get_rollback,
    get_tm,
    is_in_transaction,
    mark_for_rollback_on_error,
    on_commit,
    savepoint,
    set_rollback,
)


@contextmanager
def commit_events(engine: Any) -> Iterator[list[str]]:
    """``"commit"`` each time SQLAlchemy is about to send a COMMIT on ``engine``."""
    seen: list[str] = []

    def on_commit_event(conn: Any) -> None:
        seen.append("commit")

    event.listen(engine, "commit", on_commit_event)
    try:
        yield seen
    finally:
        event.remove(engine, "commit", on_commit_event)


def _defer_foreign_keys(session: Any, backend: str) -> None:
    """Make this transaction check its foreign keys at COMMIT."""
    if backend == "sqlite":
        session.connection().exec_driver_sql("PRAGMA defer_foreign_keys=ON")
    else:
        session.connection().exec_driver_sql("SET CONSTRAINTS ALL DEFERRED")


@pytest.mark.not_mysql(
    reason="InnoDB has no deferred constraints: no COMMIT fails on a foreign key (a COMMIT that "
    "fails on MySQL/MariaDB is a lost connection: tests/db/units/test_mysql.py)"
)
@pytest.mark.parametrize("deferred_by", ["constraint", "transaction"])
def test_on_commit_hook_does_not_run_when_the_commit_fails(ctx: Any, deferred_by: str) -> None:
    """A foreign key violated at COMMIT: the unit raises, nothing commits, no hook runs.

    ``constraint``: the foreign key is ``DEFERRABLE INITIALLY DEFERRED`` (both
    backends). ``transaction``: an immediate foreign key deferred for the
    transaction (SQLite ``PRAGMA defer_foreign_keys=ON``, PostgreSQL ``SET
    CONSTRAINTS ALL DEFERRED``). The INSERT itself succeeds inside the block;
    the failure comes from the COMMIT (issue 11, item 6: flipping the
    ``committed`` check of the hook runner survived every other test).
    """
    child = ctx.DeferredChild if deferred_by == "constraint" else ctx.ImmediateChild
    ran: list[str] = []
    with commit_events(ctx.engine) as commits:
        with pytest.raises(sa_exc.IntegrityError) as failure:
            with db_transaction() as session:
                if deferred_by == "transaction":
                    _defer_foreign_keys(session, ctx.backend)
                session.add(child(id=1, parent_id=404))
                session.flush()  # accepted: checked at COMMIT
                assert session.scalar(select(child.id)) == 1
                on_commit(lambda: ran.append("hook"))
                assert commits == []
    assert commits == ["commit"], "the error must come from the COMMIT"
    assert failure.value.statement is None  # no statement failed: the COMMIT did
    assert ran == []
    assert not is_in_transaction()
    with ctx.engine.connect() as conn:
        assert list(conn.scalars(select(child.id))) == []

    # the thread and the session are clean: the next unit commits and runs its hook
    with db_transaction() as session:
        session.add(ctx.Parent(id=404))
        session.flush()
        session.add(child(id=2, parent_id=404))
        on_commit(lambda: ran.append("next"))
    assert ran == ["next"]
    with ctx.engine.connect() as conn:
        assert list(conn.scalars(select(child.id))) == [2]


def test_a_thousand_failing_nested_units_leave_no_savepoint_open(ctx: Any) -> None:
    """1,000 failing nested ``db_transaction()`` units in one transaction: none is left open.

    Half fail with a Python exception, half with a database error (a
    duplicate primary key). Every unit took its own SQL savepoint (names from
    the statements sent); afterwards ``ROLLBACK TO SAVEPOINT``
    of the first and of the last fails on the server (it would succeed, and
    undo everything since, if they were still open: Django's ticket 23074),
    and the transaction's own work is intact and commits.
    """
    Reporter = ctx.Reporter
    with db_transaction() as session:
        kept = ctx.create(first_name="kept")
        start = len(ctx.savepoint_names)
        for i in range(1000):
            if i % 2:
                with pytest.raises(sa_exc.IntegrityError):
                    with db_transaction():
                        session.add(Reporter(id=kept.id, first_name=f"duplicate {i}"))
                        session.flush()
            else:
                with pytest.raises(ctx.ForcedError):
                    with db_transaction():
                        ctx.create(first_name=f"lost {i}")
                        raise ctx.ForcedError()
        names = ctx.savepoint_names[start:]
        assert len(set(names)) == len(names) == 1000
        assert not session.in_nested_transaction()
        for name in (names[0], names[-1]):
            # In a probe unit of its own, so that the expected error is rolled back.
            with pytest.raises(sa_exc.DBAPIError) as failure:
                with db_transaction() as probe:
                    probe.connection().exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
            assert failure.value.statement == f"ROLLBACK TO SAVEPOINT {name}"
            assert name in str(failure.value.orig)
        assert ctx.all() == [kept]
        later = ctx.create(first_name="later")
    ctx.assert_all([kept, later])


def test_succeeding_nested_units_leave_no_savepoint_open(ctx: Any) -> None:
    """200 nested ``db_transaction()`` units that succeed: each RELEASEs its savepoint.

    Afterwards ``ROLLBACK TO SAVEPOINT`` of the first and of the last fails on
    the server, and everything commits. (200: more than PostgreSQL's 64 cached
    subtransactions, and bounded, since savepoints left open nest ever deeper
    and each costs more than the last.)
    """
    with db_transaction():
        start = len(ctx.savepoint_names)
        for i in range(200):
            with db_transaction():
                ctx.create(first_name=f"kept {i:04}")
        names = ctx.savepoint_names[start:]
        assert len(set(names)) == len(names) == 200
        for name in (names[0], names[-1]):
            with pytest.raises(sa_exc.DBAPIError) as failure:
                with db_transaction() as probe:
                    probe.connection().exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
            assert failure.value.statement == f"ROLLBACK TO SAVEPOINT {name}"
        assert ctx.count() == 200
    assert [r.first_name for r in ctx.committed()] == [f"kept {i:04}" for i in range(200)]


@contextmanager
def _in_db_transaction() -> Iterator[None]:
    with db_transaction():
        yield


@contextmanager
def _in_nested_unit_of_manager_transaction() -> Iterator[None]:
    with get_tm():  # 'with transaction.manager:' as in a script
        with db_transaction():
            yield


@contextmanager
def _in_savepoint() -> Iterator[None]:
    with db_transaction():
        with savepoint():
            yield


@contextmanager
def _in_db_read_only() -> Iterator[None]:
    with db_read_only():
        yield


BLOCKS: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "db_transaction": _in_db_transaction,
    "db_transaction_in_manager": _in_nested_unit_of_manager_transaction,
    "savepoint": _in_savepoint,
    "db_read_only": _in_db_read_only,
}


@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize(
    "call",
    [
        "transaction.commit",
        "transaction.abort",
        "tm.commit",
        "tm.abort",
        "transaction.manager.commit",
    ],
)
def test_manager_commit_and_abort_refused_inside_a_unit(ctx: Any, block: str, call: str) -> None:
    """The manager's own commit/abort inside a unit-of-work block: TransactionManaged, no change.

    ``tm`` is ``myapp.db.get_tm()`` (what ``request.tm`` is). The block's
    transaction is still the same one afterwards, its work neither committed
    nor thrown away, and it ends as it would have (a write block commits).
    """
    functions = {
        "transaction.commit": transaction.commit,
        "transaction.abort": transaction.abort,
        "tm.commit": lambda: get_tm().commit(),
        "tm.abort": lambda: get_tm().abort(),
        "transaction.manager.commit": lambda: transaction.manager.commit(),
    }
    writes = block != "db_read_only"
    with BLOCKS[block]():
        txn = get_tm().get()
        if writes:
            reporter = ctx.create(first_name="Tintin")
        else:
            assert current_session().execute(select(ctx.Reporter)).all() == []
        with pytest.raises(TransactionManaged):
            functions[call]()
        assert get_tm().get() is txn
        assert is_in_transaction()
        assert ctx.committed() == []
        if writes:
            assert ctx.all() == [reporter]
    assert ctx.committed() == ([reporter] if writes else [])


def test_non_robust_hook_error_leaves_the_commit_call(ctx: Any) -> None:
    """A hook without ``robust`` that raises: out of the unit, data committed, later hooks dropped.

    Django's rule (``run_and_clear_commit_hooks``), which CONTRACT.md adopts.
    The next transaction starts with no hooks left over.
    """
    with pytest.raises(ctx.ForcedError):
        with db_transaction():
            ctx.do(1)
            on_commit(lambda: ctx.notify("error"))
            ctx.do(2)
    ctx.assert_notified([1])  # hook 1 ran; the failing one raised; hook 2 was discarded
    assert ctx.committed_nums() == [1, 2]  # the data is committed
    assert not is_in_transaction()

    with db_transaction():
        ctx.do(3)
    assert ctx.notified == [1, 3]


def test_non_robust_hook_outside_a_unit_of_work_propagates(ctx: Any) -> None:
    """Outside any unit of work a hook runs at once; its exception propagates unless robust."""
    with pytest.raises(ctx.ForcedError):
        on_commit(lambda: ctx.notify("error"))
    on_commit(lambda: ctx.notify("error"), robust=True)  # logged, not raised
    on_commit(lambda: ctx.notify(1))
    assert ctx.notified == [1]
    assert not is_in_transaction()


def test_hooks_and_rollback_flag_in_a_manager_block(ctx: Any) -> None:
    """``with transaction.manager:`` (no unit): hooks wait for its commit; ``set_rollback`` works.

    As pyramid_tm and scripts use it: ``get_rollback()``/``set_rollback()``
    act on the manager's transaction, and a block whose flag is set ends
    rolled back without raising (its hooks dropped).
    """
    with get_tm():
        ctx.do(1)
        assert get_rollback() is False
        ctx.assert_notified([])
    ctx.assert_done([1])

    with get_tm():
        ctx.do(2)
        set_rollback(True)
        assert get_rollback() is True
    ctx.assert_done([1])
    assert not is_in_transaction()


def test_mark_for_rollback_on_error_in_a_nested_unit(ctx: Any) -> None:
    """``mark_for_rollback_on_error()`` inside a nested unit marks that unit only.

    The nested unit ends rolled back (to its savepoint) without raising; the
    enclosing unit goes on and commits its own work (Django: the flag is
    cleared by the savepoint rollback of the innermost ``atomic``).
    """
    with db_transaction():
        kept = ctx.create(first_name="kept")
        with db_transaction():
            ctx.create(first_name="lost")
            with pytest.raises(ctx.ForcedError):
                with mark_for_rollback_on_error():
                    raise ctx.ForcedError()
            assert get_rollback() is True
        assert get_rollback() is False
        assert ctx.all() == [kept]
        later = ctx.create(first_name="later")
    ctx.assert_all([kept, later])


def test_statements_refused_after_a_failed_merged_unit(ctx: Any) -> None:
    """After an error leaves a ``savepoint=False`` unit, no statement runs until the unit ends.

    Reads and writes alike raise :class:`TransactionFailed` (Django's
    TransactionManagementError "You can't execute queries until the end of
    the 'atomic' block"), caused by the error; the enclosing unit then ends
    rolled back without raising.
    """
    with db_transaction():
        ctx.create(first_name="Tintin")
        with pytest.raises(ctx.ForcedError):
            with db_transaction(savepoint=False):
                raise ctx.ForcedError("Oops")
        with pytest.raises(TransactionFailed) as read:
            ctx.count()
        with pytest.raises(TransactionFailed):
            ctx.create(first_name="Haddock")
    assert isinstance(read.value.__cause__, ctx.ForcedError)
    ctx.assert_all([])
