"""The bridge between SQLAlchemy sessions and the ``transaction`` manager.

zope.sqlalchemy joins a session to the current ``transaction`` so that
``transaction.commit()`` commits it and ``transaction.abort()`` rolls it back.
myapp registers it **once on the session factory** against the thread-local
``transaction.manager`` switched to explicit mode (:func:`get_tm`), so that
module-level ``transaction.savepoint()`` and ``with transaction.manager:`` act
on the very transaction a request, a script or a test is using.

This module subclasses zope.sqlalchemy's data manager and events in one
place, to fix what the library leaves open:

* Sessions are kept across units of work (``keep_session=True`` semantics),
  but the data manager really ends the SQLAlchemy transaction: it rolls back
  on abort (zope.sqlalchemy only expires objects there and leaves the
  connection checked out: its issue #14) and commits every successful unit
  of work, read-only ones included. Closing the session is the job of the
  scope that opened it.
* Writes made with Core or ``text()`` through ``session.execute`` mark the
  session changed, so they are committed (zope.sqlalchemy only notices ORM
  statements: its issue #88).
* ``transaction.savepoint()`` works on SQLite engines that carry the
  workaround of :mod:`myapp.db.sqlite`.
* Using a session outside a unit of work raises :class:`NoUnitOfWork` with a
  message saying what to do, unless the session belongs to a scope that
  allows an *implicit* unit of work (``Database.scope()``, the test
  fixtures): then one is begun, marked implicit, and is committed by
  ``session.commit()``/``save()`` or discarded when the scope ends.
* Read-only units of work and the maintenance switch refuse writes before
  the database sees them.
* :func:`on_commit` hooks follow Django's rules, savepoints included, and run
  outside the committed transaction (``transaction`` only forgets it after
  its after-commit hooks).
* A database error caught inside a unit of work without rolling back to a
  savepoint makes the commit fail with :class:`TransactionFailed`
  (:class:`FailureGuard`): PostgreSQL would otherwise turn the COMMIT of the
  aborted transaction into a silent ROLLBACK.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable
from typing import Any

import transaction
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.orm.session import SessionTransactionState
from transaction.interfaces import NoTransaction
from zope.sqlalchemy import datamanager as zdm

from .errors import (
    MaintenanceMode,
    NoUnitOfWork,
    ReadOnlyViolation,
    TransactionFailed,
    TransactionManaged,
)
from .sqlite import savepoints_supported

log = logging.getLogger("myapp.db.tx")
hook_log = logging.getLogger("myapp.db.on_commit")

#: ``Transaction.extension`` key: this transaction was begun implicitly by a scope.
IMPLICIT = "myapp.implicit"
#: ``Transaction.extension`` key: the callbacks registered with :func:`on_commit`.
HOOKS = "myapp.on_commit"
#: ``Transaction.extension`` key: the :class:`FailureGuard` of the transaction.
FAILURE = "myapp.failure"
#: ``Transaction.extension`` key: the first session joined to the transaction.
SESSION = "myapp.session"
#: ``Transaction.extension`` key: ``session.commit()`` may commit this transaction.
MANUAL = "myapp.manual_commit"
#: ``Session.info`` key: a savepoint that ``commit()`` flushes up to and ``rollback()`` returns to.
COMMIT_FLOOR = "myapp.commit_floor"
#: ``Session.info`` key: the session may begin an implicit unit of work.
AUTOBEGIN = "myapp.autobegin"
#: ``Session.info`` key: the session is read-only (set by ``db_read_only``).
READ_ONLY = "myapp.read_only"
#: ``Session.info`` key: the :class:`MaintenanceSwitch` shared by a factory's sessions.
MAINTENANCE = "myapp.maintenance"
#: ``Session.info`` key: the ``Database`` whose factory made the session (if any).
DATABASE = "myapp.database"


class MaintenanceSwitch:
    """The global read-only switch: while ``on``, every write unit of work fails cleanly."""

    def __init__(self, on: bool = False, reason: str = "") -> None:
        self.on = on
        self.reason = reason

    def __bool__(self) -> bool:
        return self.on


def get_tm() -> transaction.ThreadTransactionManager:
    """The thread-local transaction manager, in explicit mode for this thread.

    Explicit mode makes ``begin()`` inside an active transaction raise
    ``AlreadyInTransaction`` (instead of silently aborting it) and ``get()``
    outside one raise ``NoTransaction`` (instead of silently beginning one).
    """
    tm = transaction.manager
    if not tm.explicit:
        tm.explicit = True
    return tm


def current_transaction(tm: Any = None) -> transaction.interfaces.ITransaction | None:
    """The active transaction of ``tm`` (default: :func:`get_tm`), or None."""
    tm = tm if tm is not None else get_tm()
    manager = getattr(tm, "manager", tm)  # a ThreadTransactionManager: this thread's manager
    if type(manager) is transaction.TransactionManager and manager.explicit:
        # what get() returns in explicit mode, without raising NoTransaction when there
        # is none (a lookup made several times per unit of work; pinned by
        # tests/units/test_transaction.py)
        return manager._txn
    try:
        return tm.get()
    except NoTransaction:
        return None


def is_implicit(txn: Any) -> bool:
    """True if ``txn`` was begun implicitly by a scope's session (not by a unit of work)."""
    return bool(txn is not None and txn.extension.get(IMPLICIT))


def begin_implicit(tm: Any) -> Any:
    txn = tm.begin()
    txn.extension[IMPLICIT] = True
    return txn


# ---------------------------------------------------------------------------
# on_commit hooks


class OnCommitHooks:
    """A transaction's :func:`on_commit` callbacks, joined to it as a data manager.

    Being a (no-op) data manager is what makes savepoints cover the hooks:
    ``transaction.savepoint()`` asks every joined resource for a savepoint,
    and one taken before the first hook was registered rolls back by aborting
    the resources that joined later. So whichever way a savepoint rolls back
    (a nested ``db_transaction``, ``savepoint()``, ``transaction.savepoint()``),
    the hooks registered after it are dropped, in this one place.
    """

    transaction_manager = None

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.hooks: list[Callable[[], Any]] = []
        self.joined = False
        txn.addAfterCommitHook(self._after_commit)

    def add(self, fn: Callable[[], Any]) -> None:
        if not self.joined:
            self.txn.join(self)
            self.joined = True
        self.hooks.append(fn)

    def _after_commit(self, committed: bool) -> None:
        hooks, self.hooks = self.hooks, []
        if not committed:
            return
        # transaction forgets a committed transaction only after its
        # after-commit hooks: forget it now, so that hooks run outside it (as
        # in Django) and may open their own units of work.
        free = getattr(self.txn, "_free_manager", None)
        if free is not None:
            try:
                free()
            except ValueError:  # an earlier after-commit hook began another transaction
                pass
        for fn in hooks:
            try:
                fn()
            except Exception:  # a failing hook never undoes the commit
                hook_log.exception("on_commit hook %r failed after the commit", fn)

    # IDataManager: nothing to write; an abort (of the transaction, or of a
    # savepoint taken before this joined) drops every hook.
    def abort(self, txn: Any) -> None:
        del self.hooks[:]
        self.joined = False

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        pass

    def tpc_finish(self, txn: Any) -> None:
        pass

    def tpc_abort(self, txn: Any) -> None:
        pass

    def sortKey(self) -> str:
        return "myapp.on_commit"

    def savepoint(self) -> _HooksSavepoint:
        return _HooksSavepoint(self, len(self.hooks))


class _HooksSavepoint:
    def __init__(self, manager: OnCommitHooks, mark: int) -> None:
        self.manager = manager
        self.mark = mark

    def rollback(self) -> None:
        del self.manager.hooks[self.mark :]


def on_commit(fn: Callable[[], Any], tm: Any = None) -> None:
    """Run ``fn()`` after the outermost transaction commits (Django's semantics).

    Dropped if the transaction aborts, or if a savepoint it was registered
    after rolls back. Outside any transaction it runs at once. Hooks run in
    registration order, outside the committed transaction (a hook may use
    ``db_transaction()``); one that raises is logged and does not undo the
    commit nor stop the next hooks.
    """
    txn = current_transaction(tm)
    if txn is None:
        fn()
        return
    hooks = txn.extension.get(HOOKS)
    if hooks is None:
        hooks = txn.extension[HOOKS] = OnCommitHooks(txn)
    hooks.add(fn)


# ---------------------------------------------------------------------------
# database errors caught inside a unit of work


class FailureGuard:
    """Vetoes the commit of a transaction in which a database error was swallowed.

    A failed statement aborts the whole transaction on PostgreSQL, and a
    later COMMIT silently rolls everything back; SQLAlchemy only notices
    failed *flushes* (``PendingRollbackError``). The guard records every
    database error raised on a connection of the transaction's sessions and,
    unless a savepoint taken before the error was rolled back since, makes
    the commit raise :class:`TransactionFailed` and roll back, on every
    backend alike (SQLite would have committed the rest). Like
    :class:`OnCommitHooks` it is a no-op data manager, so savepoints cover it.
    """

    transaction_manager = None

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.error: BaseException | None = None
        self.joined = False

    def record(self, error: BaseException) -> None:
        if not self.joined:
            self.txn.join(self)
            self.joined = True
        if self.error is None:
            self.error = error

    def _check(self) -> None:
        error = self.error
        if error is not None:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise TransactionFailed(
                "this unit of work cannot commit: a database error inside it was caught "
                f"without rolling back to a savepoint ({type(error).__name__}: {first_line}); "
                "on PostgreSQL that aborts the whole transaction, so everything was rolled "
                "back. Put the statement that may fail in 'with savepoint():' (or a nested "
                "db_transaction()) and catch the error outside that block to carry on"
            ) from error

    def abort(self, txn: Any) -> None:
        self.error = None
        self.joined = False

    def tpc_begin(self, txn: Any) -> None:
        self._check()

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        self._check()

    def tpc_finish(self, txn: Any) -> None:
        pass

    def tpc_abort(self, txn: Any) -> None:
        pass

    def sortKey(self) -> str:
        return "!myapp.failure"  # first: veto before any session flushes or commits

    def savepoint(self) -> _FailureSavepoint:
        return _FailureSavepoint(self, self.error)


class _FailureSavepoint:
    def __init__(self, guard: FailureGuard, error: BaseException | None) -> None:
        self.guard = guard
        self.error = error

    def rollback(self) -> None:
        self.guard.error = self.error


def _uses_connection(txn: Any, connection: Connection) -> bool:
    dbapi = getattr(connection, "connection", None)
    dbapi = getattr(dbapi, "dbapi_connection", None)
    for resource in list(getattr(txn, "_resources", ())):
        tx = getattr(resource, "tx", None) if isinstance(resource, SessionDataManager) else None
        if tx is None:
            continue
        for conn, *_rest in list(tx._connections.values()):
            if conn is connection:
                return True
            fairy = getattr(conn, "connection", None)
            if dbapi is not None and getattr(fairy, "dbapi_connection", None) is dbapi:
                return True
    return False


def _on_error(context: ExceptionContext) -> None:
    connection = context.connection
    if connection is None or not isinstance(context.sqlalchemy_exception, DBAPIError):
        return
    txn = current_transaction()
    if txn is None or txn.status != transaction._transaction.Status.ACTIVE:
        return
    if not _uses_connection(txn, connection):
        return
    guard = txn.extension.get(FAILURE)
    if guard is None:
        guard = txn.extension[FAILURE] = FailureGuard(txn)
    guard.record(context.sqlalchemy_exception)


_nested_marks: weakref.WeakKeyDictionary[SessionTransaction, BaseException | None] = (
    weakref.WeakKeyDictionary()
)


def _remember_guard_state(session: _SASession, sa_txn: SessionTransaction) -> None:
    """A plain SQLAlchemy savepoint (``session.begin_nested()``) covers the guard too."""
    if sa_txn.nested:
        txn = current_transaction()
        guard = txn.extension.get(FAILURE) if txn is not None else None
        _nested_marks[sa_txn] = guard.error if guard is not None else None


def _restore_guard_state(session: _SASession, previous: SessionTransaction) -> None:
    if previous.nested and previous in _nested_marks:
        txn = current_transaction()
        guard = txn.extension.get(FAILURE) if txn is not None else None
        if guard is not None:
            guard.error = _nested_marks[previous]


def install_failure_guard(bind: Engine | Connection) -> None:
    """Watch ``bind``'s engine for database errors inside units of work (idempotent)."""
    engine = bind.engine if isinstance(bind, Connection) else bind
    if not isinstance(engine, Engine) or event.contains(engine, "handle_error", _on_error):
        return
    event.listen(engine, "handle_error", _on_error)


# ---------------------------------------------------------------------------
# data manager


class SessionSavepoint(zdm.SessionSavepoint):
    """A ``transaction.savepoint()`` for one session: a SQL SAVEPOINT that can also be released."""

    def release(self) -> None:
        """RELEASE the SAVEPOINT early (the transaction package has no such call)."""
        if self.transaction.is_active:
            self.transaction.commit()


class SessionDataManager(zdm.SessionDataManager):
    """zope.sqlalchemy's one-phase data manager, ending the SQL transaction itself."""

    def __init__(self, session: _SASession, status: str, transaction_manager: Any) -> None:
        super().__init__(session, status, transaction_manager, keep_session=True)
        self._txn = transaction_manager.get()
        self._txn.extension.setdefault(SESSION, session)

    def commit(self, trans: Any) -> None:
        # zope.sqlalchemy ends a session that wrote nothing here ("no work") and
        # rolls it back. myapp commits every successful unit of work instead:
        # writes it could not see (raw DBAPI calls) are not silently lost,
        # expire_on_commit is honoured, and the cost is the same.
        if zdm._SESSION_STATE[self.session] is not zdm.STATUS_CHANGED:
            self.tx.commit()
            self._finish("committed")

    def _finish(self, final_state: str) -> None:
        session, tx = self.session, self.tx
        del zdm._SESSION_STATE[session]
        self.tx = self.session = None
        self.state = final_state
        if final_state != "committed" and tx._state is not SessionTransactionState.CLOSED:
            # Abort: really roll back and release the connection (zope.sqlalchemy#14).
            tx.rollback()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s",
                "COMMIT" if final_state == "committed" else "ROLLBACK",
                getattr(self._txn, "description", "") or "",
            )

    @property
    def savepoint(self) -> Callable[[], SessionSavepoint]:
        for bind in self.tx._connections:
            engine = getattr(bind, "engine", bind)
            if not savepoints_supported(engine):
                raise AttributeError("savepoint")
        return self._savepoint

    def _savepoint(self) -> SessionSavepoint:
        return SessionSavepoint(self.session)


def join_transaction(session: _SASession, status: str = zdm.STATUS_ACTIVE) -> None:
    """Join ``session`` to the current transaction (idempotent)."""
    if zdm._SESSION_STATE.get(session) is None:
        if session.twophase:
            raise NotImplementedError("two-phase sessions are not supported by myapp.db")
        SessionDataManager(session, status, get_tm())


def mark_changed(session: _SASession) -> None:
    """Record that ``session`` wrote to the database, so the transaction commits it."""
    join_transaction(session, zdm.STATUS_CHANGED)
    zdm._SESSION_STATE[session] = zdm.STATUS_CHANGED


# ---------------------------------------------------------------------------
# write detection and guards

_WRITE_SQL = re.compile(
    r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*"
    r"(insert|update|delete|merge|replace|upsert|create|drop|alter|truncate|grant|revoke|"
    r"copy|with|call|do|lock|comment|reindex|vacuum|cluster|refresh|set\s+(?!transaction))\b",
    re.IGNORECASE | re.DOTALL,
)


def statement_writes(state: ORMExecuteState) -> bool:
    """Does this ``session.execute`` write? ORM/Core DML yes, SELECT no, ``text()`` by keyword."""
    if state.is_select:  # the common case first
        return False
    if state.is_insert or state.is_update or state.is_delete:
        return True
    text = getattr(state.statement, "text", None)
    if text is None:  # some other executable (DDL, ...): assume it writes
        return True
    return bool(_WRITE_SQL.match(text))


def refuse_in_maintenance(
    session: _SASession, what: str, outcome: str = "and nothing was written"
) -> None:
    """Raise :class:`MaintenanceMode` if ``session``'s maintenance switch is on."""
    switch = session.info.get(MAINTENANCE)
    if switch:
        reason = f" ({switch.reason})" if switch.reason else ""
        raise MaintenanceMode(
            f"the service is in read-only maintenance mode{reason}: {what} was refused {outcome}"
        )


def _refuse_write(session: _SASession, what: str) -> None:
    refuse_in_maintenance(session, what)
    if session.info.get(READ_ONLY):
        raise ReadOnlyViolation(
            f"{what} inside db_read_only(): read-only units of work cannot write; "
            "nothing was written. Use db_transaction() for writes."
        )


def _ensure_unit_of_work(session: _SASession) -> Any:
    tm = get_tm()
    txn = current_transaction(tm)
    if txn is None:
        if not session.info.get(AUTOBEGIN):
            raise NoUnitOfWork(
                "this session was used outside a unit of work: wrap the code in "
                "db_transaction() / db_read_only(), 'with transaction.manager:', or use "
                "Database.scope(); inside a request pyramid_tm provides one"
            )
        txn = begin_implicit(tm)
    return txn


class _Events:
    """The session events myapp registers, once, on a session factory."""

    def after_attach(self, session: _SASession, instance: Any) -> None:
        _ensure_unit_of_work(session)
        join_transaction(session)

    def after_begin(self, session: _SASession, sa_txn: SessionTransaction, connection: Any) -> None:
        _ensure_unit_of_work(session)
        join_transaction(session)
        if session.info.get(READ_ONLY) and connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")

    def before_flush(self, session: _SASession, flush_context: Any, instances: Any) -> None:
        # the flags first: session.dirty scans the identity map
        if (session.info.get(READ_ONLY) or session.info.get(MAINTENANCE)) and (
            session.new or session.dirty or session.deleted
        ):
            pending = len(session.new) + len(session.dirty) + len(session.deleted)
            _refuse_write(session, f"flushing {pending} pending change(s)")
        _ensure_unit_of_work(session)

    def after_flush(self, session: _SASession, flush_context: Any) -> None:
        mark_changed(session)

    def do_orm_execute(self, state: ORMExecuteState) -> None:
        session = state.session
        writes = statement_writes(state)
        if writes and (session.info.get(READ_ONLY) or session.info.get(MAINTENANCE)):
            _refuse_write(session, "executing a write statement")
        _ensure_unit_of_work(session)
        if writes:
            mark_changed(session)

    def before_commit(self, session: _SASession) -> None:
        if session.in_nested_transaction():
            return
        if zdm._SESSION_STATE.get(session) is None:
            return
        if get_tm().get().status != transaction._transaction.Status.COMMITTING:
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
    event.listen(factory, "after_transaction_create", _remember_guard_state)
    event.listen(factory, "after_soft_rollback", _restore_guard_state)


class Session(_SASession):
    """The application's session class.

    Inside a unit of work the transaction manager owns the transaction:
    ``commit()`` and ``rollback()`` raise :class:`TransactionManaged` there.
    In an *implicit* unit of work (a ``Database.scope()`` or a test fixture
    used without ``db_transaction``) and in ``db_transaction(auto_commit=False)``
    they commit or abort that unit of work through the transaction manager,
    so ``session.commit()`` reads as in plain SQLAlchemy and still runs the
    two-phase machinery (hooks, savepoint releases in tests).
    """

    def commit(self) -> None:
        if self.info.get(COMMIT_FLOOR) is not None:
            self.flush()
            return None
        txn = self._own_transaction("commit")
        if txn is None:
            if not (self.info.get(AUTOBEGIN) and current_transaction() is None):
                return super().commit()
            txn = begin_implicit(get_tm())
        # Join now: changes made without any SQL yet (an attribute set on a
        # loaded object) belong to this unit of work and must be flushed.
        join_transaction(self)
        manual = txn.extension.get(MANUAL)
        tm = get_tm()
        try:
            tm.commit()
        except BaseException:
            # A failed commit must not leave the transaction open (the manager
            # keeps a failed transaction until it is aborted).
            if current_transaction(tm) is not None:
                tm.abort()
            raise
        finally:
            if manual is not None:  # keep the auto_commit=False block in a transaction
                tm.begin().extension[MANUAL] = manual
        return None

    def rollback(self) -> None:
        floor = self.info.get(COMMIT_FLOOR)
        if floor is not None:
            floor.rollback()
            return None
        txn = self._own_transaction("rollback")
        if txn is None:
            return super().rollback()
        manual = txn.extension.get(MANUAL)
        tm = get_tm()
        tm.abort()
        if manual is not None:
            tm.begin().extension[MANUAL] = manual
        return None

    def _own_transaction(self, verb: str) -> Any:
        if zdm._SESSION_STATE.get(self) is None and not self.info.get(AUTOBEGIN):
            return None
        txn = current_transaction()
        if txn is None:
            return None
        if is_implicit(txn) or txn.extension.get(MANUAL):
            return txn
        if txn.isDoomed():
            raise TransactionManaged(
                f"session.{verb}() in a doomed transaction: it can never commit. In the test "
                "suite this is the @pytest.mark.doomed mode, for tests that never commit; "
                "drop the marker to test code that commits"
            )
        raise TransactionManaged(
            f"session.{verb}() inside a unit of work owned by the transaction manager "
            "(a request, db_transaction(), 'with transaction.manager:'): "
            + (
                "it commits when the unit of work ends without an error"
                if verb == "commit"
                else "raise an exception to abort it, or use savepoint()/db_transaction() "
                "to roll back part of it"
            )
        )
