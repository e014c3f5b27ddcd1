"""Database errors caught inside a unit of work: the unit cannot commit.

A failed statement aborts the whole transaction on PostgreSQL, and a later
COMMIT silently rolls everything back; SQLAlchemy only notices failed
*flushes* (``PendingRollbackError``). :class:`FailureGuard` records every
database error raised on a connection of the transaction's sessions and,
unless a savepoint taken before the error was rolled back since:

* refuses later ORM statements of the unit with :class:`TransactionFailed`
  (as Django refuses queries "until the end of the 'atomic' block");
* makes the commit raise :class:`TransactionFailed` and roll back, on every
  backend alike (SQLite would have committed the rest).

Like :class:`~myapp.db.hooks.OnCommitHooks` it is a no-op data manager
joined to the transaction, so savepoints cover it.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction

from . import compat
from .errors import TransactionFailed
from .events import listen_once
from .manager import current_transaction

#: ``Transaction.extension`` key: the :class:`FailureGuard` of the transaction.
FAILURE = "myapp.failure"
#: ``Transaction.extension`` key: the connections the transaction's sessions began on.
CONNECTIONS = "myapp.connections"


def failed(error: BaseException | None = None) -> TransactionFailed:
    """The error a unit of work raises when a database error inside it was swallowed."""
    detail = ""
    if error is not None:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else ""
        detail = f" ({type(error).__name__}: {first_line})"
    return TransactionFailed(
        "this unit of work cannot go on: a database error inside it was caught without "
        f"rolling back to a savepoint{detail}; on PostgreSQL that aborts the whole "
        "transaction, so everything it did is rolled back. Put the statement that may fail "
        "in 'with savepoint():' (or a nested db_transaction()) and catch the error outside "
        "that block to carry on"
    )


class FailureGuard:
    """Vetoes the commit of a transaction in which a database error was swallowed."""

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

    def check(self) -> None:
        error = self.error
        if error is not None:
            raise failed(error) from error

    def abort(self, txn: Any) -> None:
        self.error = None
        self.joined = False

    def tpc_begin(self, txn: Any) -> None:
        self.check()

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        self.check()

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


def swallowed_error(txn: Any) -> BaseException | None:
    """The database error swallowed in ``txn`` that no savepoint rollback undid, if any."""
    guard = txn.extension.get(FAILURE)
    return guard.error if guard is not None else None


def record_connection(txn: Any, connection: Connection) -> None:
    """``connection`` belongs to ``txn`` (a session of it began a transaction on it)."""
    connections = txn.extension.get(CONNECTIONS)
    if connections is None:
        txn.extension[CONNECTIONS] = [connection]
    elif connection not in connections:
        connections.append(connection)


def _on_error(context: ExceptionContext) -> None:
    connection = context.connection
    if connection is None or not isinstance(context.sqlalchemy_exception, DBAPIError):
        return
    txn = current_transaction()
    if txn is None or txn.status != compat.Status.ACTIVE:
        return
    if connection not in txn.extension.get(CONNECTIONS, ()):
        return
    guard = txn.extension.get(FAILURE)
    if guard is None:
        guard = txn.extension[FAILURE] = FailureGuard(txn)
    guard.record(context.sqlalchemy_exception)


_nested_marks: weakref.WeakKeyDictionary[SessionTransaction, BaseException | None] = (
    weakref.WeakKeyDictionary()
)


def remember_guard_state(session: Session, sa_txn: SessionTransaction) -> None:
    """A plain SQLAlchemy savepoint (``session.begin_nested()``) covers the guard too."""
    if sa_txn.nested:
        txn = current_transaction()
        _nested_marks[sa_txn] = swallowed_error(txn) if txn is not None else None


def restore_guard_state(session: Session, previous: SessionTransaction) -> None:
    if previous.nested and previous in _nested_marks:
        txn = current_transaction()
        guard = txn.extension.get(FAILURE) if txn is not None else None
        if guard is not None:
            guard.error = _nested_marks[previous]


def install_failure_guard(bind: Engine | Connection) -> None:
    """Watch ``bind``'s engine for database errors inside units of work (idempotent)."""
    engine = bind.engine if isinstance(bind, Connection) else bind
    if isinstance(engine, Engine):
        listen_once(engine, "handle_error", _on_error)
