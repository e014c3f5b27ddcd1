"""The application's ``Session`` class and the session events that join it to ``transaction``.

zope.sqlalchemy joins a session to the current transaction so that
``transaction.commit()`` commits it and ``transaction.abort()`` rolls it
back. myapp registers its events **once on the session factory**
(:func:`register`), against the thread-local manager of
:func:`~myapp.db.manager.get_tm`, so that module-level
``transaction.savepoint()`` and ``with transaction.manager:`` act on the very
transaction a request, a script or a test is using. Beyond zope.sqlalchemy's
own events:

* Writes made with Core or ``text()`` through ``session.execute`` mark the
  session changed, so they are committed (zope.sqlalchemy only notices ORM
  statements: its issue #88).
* Using a session outside a unit of work raises :class:`NoUnitOfWork` with a
  message saying what to do, unless the session belongs to a scope that
  allows an *implicit* unit of work (``Database.scope()``, the test
  fixtures): then one is begun, marked implicit, and is committed by
  ``session.commit()``/``save()`` or discarded when the scope ends.
* Read-only units of work and the maintenance switch make the transaction
  read-only at the database (:mod:`myapp.db.readpath`), and refuse pending
  ORM changes and ORM/Core DML before the database sees them
  (:mod:`myapp.db.writes`).
* A unit of work marked for rollback (``set_rollback(True)``, a merged unit
  that failed) or in which a database error was swallowed
  (:mod:`myapp.db.guard`) refuses further ORM statements with
  :class:`TransactionFailed` until it ends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlalchemy.orm import Session as _SASession

from . import compat, datamanager
from .datamanager import join_transaction, mark_changed
from .errors import NoUnitOfWork, TransactionFailed, TransactionManaged
from .guard import (
    failed,
    record_connection,
    remember_guard_state,
    restore_guard_state,
    swallowed_error,
)
from .manager import UnitManager, get_tm
from .nesting import IMPLICIT, is_implicit, managed_error
from .readpath import begin_read_only
from .writes import MAINTENANCE, READ_ONLY, refuse_write, statement_is_dml, statement_writes

#: ``Session.info`` key: the session may begin an implicit unit of work.
AUTOBEGIN = "myapp.autobegin"
#: ``Session.info`` key: the ``Database`` whose factory made the session (if any).
DATABASE = "myapp.database"


def _manager() -> UnitManager:
    return get_tm().manager


def begin_implicit(manager: UnitManager) -> Any:
    """Begin a transaction for a scope's session used outside any unit of work."""
    txn = manager.begin()
    txn.extension[IMPLICIT] = True
    return txn


def _ensure_unit_of_work(session: _SASession, manager: UnitManager | None = None) -> Any:
    manager = manager if manager is not None else _manager()
    txn = manager.current
    if txn is None:
        if not session.info.get(AUTOBEGIN):
            raise NoUnitOfWork(
                "this session was used outside a unit of work: wrap the code in "
                "db_transaction() / db_read_only(), 'with transaction.manager:', or use "
                "Database.scope(); inside a request pyramid_tm provides one"
            )
        txn = begin_implicit(manager)
    return txn


def _refuse_if_broken(manager: UnitManager, txn: Any) -> None:
    """A unit marked for rollback, or with a swallowed database error, runs no more statements."""
    nesting = manager.nesting
    if nesting.needs_rollback:
        raise TransactionFailed(
            "this unit of work is marked for rollback (set_rollback(True), or an error left "
            "a nested db_transaction(savepoint=False)); no statement can run until the "
            "unit of work ends, and it will roll back"
        ) from nesting.rollback_exc
    error = swallowed_error(txn)
    if error is not None:
        raise failed(error) from error


def join_session(session: _SASession) -> None:
    """Join ``session`` to the current unit of work.

    A scope's session used outside any unit of work begins its implicit one;
    any other session outside a unit of work: :class:`NoUnitOfWork`.
    """
    _ensure_unit_of_work(session)
    datamanager.join_transaction(session)


def mark_session_changed(session: _SASession) -> None:
    """Record that ``session`` wrote to the database, so its unit of work commits it.

    For writes no session event sees (raw DBAPI calls on its connection).
    Outside a unit of work as :func:`join_session`.
    """
    _ensure_unit_of_work(session)
    datamanager.mark_changed(session)


class _Events:
    """The session events myapp registers, once, on a session factory."""

    def after_attach(self, session: _SASession, instance: Any) -> None:
        _ensure_unit_of_work(session)
        join_transaction(session)

    def after_begin(self, session: _SASession, sa_txn: SessionTransaction, connection: Any) -> None:
        txn = _ensure_unit_of_work(session)
        join_transaction(session)
        record_connection(txn, connection)
        if session.info.get(READ_ONLY) or session.info.get(MAINTENANCE):
            begin_read_only(session, txn, connection)

    def before_flush(self, session: _SASession, flush_context: Any, instances: Any) -> None:
        # the flags first: session.dirty scans the identity map
        if (session.info.get(READ_ONLY) or session.info.get(MAINTENANCE)) and (
            session.new or session.dirty or session.deleted
        ):
            pending = len(session.new) + len(session.dirty) + len(session.deleted)
            refuse_write(session, f"flushing {pending} pending change(s)")
        manager = _manager()
        _refuse_if_broken(manager, _ensure_unit_of_work(session, manager))

    def after_flush(self, session: _SASession, flush_context: Any) -> None:
        mark_changed(session)

    def do_orm_execute(self, state: ORMExecuteState) -> None:
        session = state.session
        writes = statement_writes(state)
        if (
            writes
            and (session.info.get(READ_ONLY) or session.info.get(MAINTENANCE))
            and statement_is_dml(state)
        ):  # the early refusal; any other write is refused by the database
            refuse_write(session, "executing a write statement")
        manager = _manager()
        _refuse_if_broken(manager, _ensure_unit_of_work(session, manager))
        if writes:
            mark_changed(session)

    def before_commit(self, session: _SASession) -> None:
        if session.in_nested_transaction():
            return
        if compat.session_status(session) is None:
            return
        txn = _manager().current
        if txn is None or txn.status != compat.Status.COMMITTING:
            raise TransactionManaged(
                "this session's transaction belongs to the transaction manager: "
                "let the unit of work commit it"
            )


def register(factory: Any) -> None:
    """Join every session of ``factory`` (a sessionmaker or Session class) to ``transaction``."""
    events = _Events()
    event.listen(factory, "after_attach", events.after_attach)
    event.listen(factory, "after_begin", events.after_begin)
    event.listen(factory, "before_flush", events.before_flush)
    event.listen(factory, "after_flush", events.after_flush)
    event.listen(factory, "do_orm_execute", events.do_orm_execute)
    event.listen(factory, "before_commit", events.before_commit)
    event.listen(factory, "after_transaction_create", remember_guard_state)
    event.listen(factory, "after_soft_rollback", restore_guard_state)


class Session(_SASession):
    """The application's session class.

    Inside a unit of work the transaction manager owns the transaction:
    ``commit()`` and ``rollback()`` raise :class:`TransactionManaged` there.
    In an *implicit* unit of work (a ``Database.scope()`` or a test fixture
    used without ``db_transaction``) and in ``db_transaction(auto_commit=False)``
    they commit or abort that unit of work through the transaction manager,
    so ``session.commit()`` reads as in plain SQLAlchemy and still runs the
    two-phase machinery (hooks, the failure guard). What they mean inside a
    unit of work is the innermost unit's decision
    (:meth:`~myapp.db.nesting.Unit.session_commit`).
    """

    def _managed(self) -> bool:
        return compat.session_status(self) is not None or bool(self.info.get(AUTOBEGIN))

    def commit(self) -> None:
        if not self._managed():
            return super().commit()
        manager = _manager()
        nesting = manager.nesting
        unit = nesting.innermost()
        if unit is not None:
            unit.session_commit(nesting, self)
            return None
        txn = manager.current
        if txn is None:
            txn = begin_implicit(manager)
        elif not is_implicit(txn):
            raise managed_error(txn, "commit")
        # Join now: changes made without any SQL yet (an attribute set on a
        # loaded object) belong to this unit of work and must be flushed.
        join_transaction(self)
        nesting.commit(txn)  # a failed commit does not leave the transaction open
        return None

    def rollback(self) -> None:
        if not self._managed():
            return super().rollback()
        manager = _manager()
        nesting = manager.nesting
        unit = nesting.innermost()
        if unit is not None:
            unit.session_rollback(nesting, self)
            return None
        txn = manager.current
        if txn is None:
            return super().rollback()
        if not is_implicit(txn):
            raise managed_error(txn, "rollback")
        txn.abort()
        return None
