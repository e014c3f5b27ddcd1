"""Which errors a new attempt of the whole unit of work may not meet.

One classification for every retry path: ``db_transaction(attempts=N)``,
the request's pyramid_retry (through :func:`myapp.db.pyramid.tag_retryable`),
and ``transaction``'s own ``TransactionManager.attempts()``/``run()`` and
``Transaction.isRetryableError()``, which ask the joined data managers'
``should_retry`` (myapp's answers with :func:`is_retryable`).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from transaction.interfaces import TransientError

from . import mysql
from .errors import TransactionFailed

#: PostgreSQL SQLSTATEs worth retrying the whole transaction for.
RETRYABLE_SQLSTATES = {"40001", "40P01"}


def is_transient(exc: BaseException) -> bool:
    """True for errors that a fresh attempt of the whole transaction may not meet.

    Serialization failures and deadlocks (SQLSTATE 40001, 40P01), SQLite's
    "database is locked", MySQL/MariaDB's deadlock (1213), lock wait timeout
    (1205) and "record has changed" (1020) (:mod:`myapp.db.mysql`),
    ``transaction``'s TransientError, stale ORM data, and
    :class:`TransactionFailed` caused by one of those.
    """
    if isinstance(exc, TransientError | StaleDataError):
        return True
    if isinstance(exc, TransactionFailed) and exc.__cause__ is not None:
        return is_transient(exc.__cause__)  # the swallowed error decides
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate in RETRYABLE_SQLSTATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(orig):
            return True
        if mysql.retryable_error(exc):
            return True
    return False


def is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` is a lost database connection (SQLAlchemy invalidated it).

    The server rolls back the transaction of a connection it lost, so a unit
    of work that had not begun to commit may be run again from scratch, on a
    new connection. Once the commit began, a lost connection is ambiguous (the
    COMMIT may or may not have been applied): never retry that.
    """
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def is_retryable(exc: BaseException, *, commit_started: bool) -> bool:
    """May the whole unit of work be run again after ``exc``?

    Transient errors always; a lost connection only before the commit began.
    """
    return is_transient(exc) or (is_disconnect(exc) and not commit_started)
