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
* :func:`on_commit` hooks follow Django's rules, savepoints included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import transaction
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.orm.session import SessionTransactionState
from transaction.interfaces import NoTransaction
from zope.sqlalchemy import datamanager as zdm

from .errors import MaintenanceMode, NoUnitOfWork, ReadOnlyViolation, TransactionManaged
from .sqlite import savepoints_supported

log = logging.getLogger("myapp.db.tx")
hook_log = logging.getLogger("myapp.db.on_commit")

#: ``Transaction.extension`` key: this transaction was begun implicitly by a scope.
IMPLICIT = "myapp.implicit"
#: ``Transaction.extension`` key: the callbacks registered with :func:`on_commit`.
HOOKS = "myapp.on_commit"
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


def _hooks(txn: Any) -> list[Callable[[], Any]]:
    hooks = txn.extension.get(HOOKS)
    if hooks is None:
        hooks = txn.extension[HOOKS] = []
        txn.addAfterCommitHook(_run_hooks, (hooks,))
    return hooks


def _run_hooks(committed: bool, hooks: list[Callable[[], Any]]) -> None:
    if not committed:
        return
    for fn in list(hooks):
        try:
            fn()
        except Exception:  # a failing hook never undoes the commit
            hook_log.exception("on_commit hook %r failed after the commit", fn)


def hooks_mark(txn: Any) -> int:
    """How many hooks are registered on ``txn`` (a savepoint remembers this)."""
    return len(txn.extension.get(HOOKS) or ())


def drop_hooks_since(txn: Any, mark: int) -> None:
    """Forget the hooks registered after ``mark`` (their savepoint rolled back)."""
    hooks = txn.extension.get(HOOKS)
    if hooks is not None:
        del hooks[mark:]


def on_commit(fn: Callable[[], Any], tm: Any = None) -> None:
    """Run ``fn()`` after the outermost transaction commits.

    Dropped if the transaction aborts, or if the savepoint it was registered
    in rolls back. Outside any transaction it runs at once. A hook that
    raises is logged and does not undo the commit (Django's semantics).
    """
    txn = current_transaction(tm)
    if txn is None:
        fn()
        return
    _hooks(txn).append(fn)


# ---------------------------------------------------------------------------
# data manager


class SessionSavepoint(zdm.SessionSavepoint):
    """A ``transaction.savepoint()`` for one session: SAVEPOINT, rollback drops later hooks."""

    def __init__(self, session: _SASession, txn: Any) -> None:
        super().__init__(session)
        self._txn = txn
        self._mark = hooks_mark(txn)

    def rollback(self) -> None:
        super().rollback()
        drop_hooks_since(self._txn, self._mark)

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
        return SessionSavepoint(self.session, self._txn)


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
    if state.is_insert or state.is_update or state.is_delete:
        return True
    if state.is_select:
        return False
    text = getattr(state.statement, "text", None)
    if text is None:  # some other executable (DDL, ...): assume it writes
        return True
    return bool(_WRITE_SQL.match(text))


def _refuse_write(session: _SASession, what: str) -> None:
    switch = session.info.get(MAINTENANCE)
    if switch:
        reason = f" ({switch.reason})" if switch.reason else ""
        raise MaintenanceMode(
            f"the service is in read-only maintenance mode{reason}: {what} was refused "
            "and nothing was written"
        )
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
        if (session.new or session.dirty or session.deleted) and (
            session.info.get(READ_ONLY) or session.info.get(MAINTENANCE)
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
            return super().commit()
        manual = txn.extension.get(MANUAL)
        tm = get_tm()
        tm.commit()
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
