"""Exceptions raised by the database layer. Each one says what to do instead."""

from __future__ import annotations

from transaction.interfaces import NoTransaction


class DatabaseError(Exception):
    """Base class for myapp.db's own errors."""


class NoUnitOfWork(DatabaseError, NoTransaction):
    """The database was used outside any unit of work (request, scope, transaction)."""


class NoScope(DatabaseError, LookupError):
    """No database scope is active in this context."""


class TransactionManaged(DatabaseError):
    """``session.commit()``/``rollback()`` inside a unit of work the transaction manager owns."""


class TransactionFailed(DatabaseError):
    """A unit of work could not go on after an error caught inside it; it was rolled back.

    Raised instead of SQLAlchemy's ``PendingRollbackError``: a database error
    was caught without a savepoint around the failing statement.
    """


class NestedTransactionError(DatabaseError):
    """A durable unit of work or a batch operation was started inside another transaction."""


class ReadOnlyViolation(DatabaseError):
    """A write was attempted in a read-only unit of work; nothing reached the database."""


class MaintenanceMode(ReadOnlyViolation):
    """The global read-only (maintenance) switch is on; writes are refused."""


class BatchFailed(DatabaseError):
    """A batch operation failed; the committed batches stay, the current one was rolled back."""

    def __init__(self, message: str, *, batches: int, rows: int, rolled_back_rows: int) -> None:
        super().__init__(message)
        self.batches = batches
        self.rows = rows
        self.rolled_back_rows = rolled_back_rows
