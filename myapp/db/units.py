"""Units of work for business code: ``db_transaction``, ``savepoint``, ``db_read_only``,
``db_batch_operation``.

All of them drive the ``transaction`` manager; none calls ``session.commit()``.
The nesting rule lives in :func:`_enclosing`: a unit of work started while
another one is active becomes a ``transaction.savepoint()`` inside it;
otherwise it begins (or adopts the scope's implicit) transaction and commits
it at the end.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import ContextDecorator, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from transaction.interfaces import TransientError

from .bridge import (
    IMPLICIT,
    MANUAL,
    READ_ONLY,
    SessionSavepoint,
    current_transaction,
    drop_hooks_since,
    get_tm,
    hooks_mark,
    is_implicit,
    join_transaction,
)
from .bridge import (
    Session as SessionT,
)
from .errors import BatchFailed, NestedTransactionError, NoUnitOfWork
from .scope import current_scope

log = logging.getLogger("myapp.db")
F = TypeVar("F", bound=Callable[..., Any])

#: PostgreSQL SQLSTATEs worth retrying the whole transaction for.
RETRYABLE_SQLSTATES = {"40001", "40P01"}


def is_transient(exc: BaseException) -> bool:
    """True for errors that a fresh attempt of the whole transaction may not meet.

    Serialization failures and deadlocks (SQLSTATE 40001, 40P01), SQLite's
    "database is locked", ``transaction``'s TransientError, stale ORM data.
    """
    if isinstance(exc, TransientError | StaleDataError):
        return True
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate in RETRYABLE_SQLSTATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(orig):
            return True
    return False


def is_in_transaction() -> bool:
    """True inside a unit of work (request, ``db_transaction``, ``with transaction.manager:``)."""
    txn = current_transaction()
    return txn is not None and not is_implicit(txn)


def _enclosing() -> Any:
    """The nesting rule: the explicit transaction to nest in, or None to be outermost."""
    txn = current_transaction()
    if txn is None or is_implicit(txn):
        return None
    return txn


def _take_savepoint(txn: Any, session: SessionT) -> Any:
    join_transaction(session)  # so the savepoint covers this session's changes
    return txn.savepoint()


def _release(savepoint: Any) -> None:
    # transaction.Savepoint has no release; RELEASE our SQL savepoints so deep
    # loops of nested units do not pile up open savepoints on the server.
    for dm_savepoint in getattr(savepoint, "_savepoints", ()):
        if isinstance(dm_savepoint, SessionSavepoint):
            dm_savepoint.release()


@dataclass
class _Frame:
    outermost: bool
    txn: Any
    savepoint: Any = None
    hooks_mark: int = 0


class db_transaction(ContextDecorator):
    """A unit of work: a context manager and a decorator.

    Outermost (no transaction active, or only a scope's implicit one): begins
    a transaction through the manager and commits it at the end; an
    exception aborts it. As a decorator, ``attempts=N`` retries the whole
    function on transient errors (serialization failures, deadlocks).

    Nested (inside a request, ``with transaction.manager:`` or another
    ``db_transaction``): a ``transaction.savepoint()``. Success releases it and
    nothing is committed before the outermost commits; an exception rolls
    back to the savepoint only (``auto_rollback``) and propagates
    (``reraise=True``) or is logged and swallowed (``reraise=False``).

    ``auto_commit=False``: the block gets the session and commits itself with
    ``session.commit()`` (as often as it likes); what it did not commit is
    rolled back at the end. ``durable=True``: refuse to run nested, so that a
    commit really is a commit.
    """

    def __init__(
        self,
        auto_commit: bool = True,
        auto_rollback: bool = True,
        reraise: bool = True,
        durable: bool = False,
        attempts: int = 1,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.auto_commit = auto_commit
        self.auto_rollback = auto_rollback
        self.reraise = reraise
        self.durable = durable
        self.attempts = attempts
        self._frames: list[_Frame] = []
        self._decorating = False

    def _recreate_cm(self) -> db_transaction:
        clone = db_transaction(
            self.auto_commit, self.auto_rollback, self.reraise, self.durable, self.attempts
        )
        clone._decorating = True
        return clone

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, self.attempts + 1):
                unit = self._recreate_cm()
                try:
                    with unit:
                        return func(*args, **kwargs)
                except Exception as exc:
                    if attempt < self.attempts and unit._was_outermost and is_transient(exc):
                        log.warning(
                            "%s: transient error, retrying (%d/%d): %s",
                            func.__qualname__,
                            attempt,
                            self.attempts,
                            exc,
                        )
                        continue
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

        return inner  # type: ignore[return-value]

    _was_outermost = False

    def __enter__(self) -> SessionT:
        if self.attempts > 1 and not self._decorating:
            raise TypeError(
                "db_transaction(attempts=...) retries by calling the function again: "
                "use it as a decorator, not as a 'with' block"
            )
        scope = current_scope()
        session = scope.session
        tm = get_tm()
        txn = _enclosing()
        if txn is not None:
            if self.durable:
                raise NestedTransactionError(
                    "durable db_transaction() inside another transaction: a durable unit of "
                    "work must be outermost so that its commit is final (it was called from "
                    "a request, 'with transaction.manager:' or another db_transaction)"
                )
            if not self.auto_commit:
                raise NestedTransactionError(
                    "db_transaction(auto_commit=False) commits by itself and cannot be nested "
                    "inside another transaction"
                )
            mark = hooks_mark(txn)
            frame = _Frame(False, txn, _take_savepoint(txn, session), mark)
        else:
            txn = current_transaction(tm)
            if txn is None:
                txn = tm.begin()
            else:  # adopt the scope's implicit transaction: its pending work commits with us
                txn.extension.pop(IMPLICIT, None)
            if not self.auto_commit:
                txn.extension[MANUAL] = True
            frame = _Frame(True, txn)
            self._was_outermost = True
        self._frames.append(frame)
        return session

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        frame = self._frames.pop()
        if frame.outermost:
            return self._exit_outermost(exc)
        return self._exit_nested(frame, exc)

    def _exit_nested(self, frame: _Frame, exc: BaseException | None) -> bool:
        if exc is None:
            _release(frame.savepoint)
            return False
        if self.auto_rollback:
            frame.savepoint.rollback()
            drop_hooks_since(frame.txn, frame.hooks_mark)
        return self._swallow(exc)

    def _exit_outermost(self, exc: BaseException | None) -> bool:
        tm = get_tm()
        if exc is None:
            txn = current_transaction(tm)
            if txn is None:  # the block ended the transaction itself
                return False
            if self.auto_commit:
                try:
                    tm.commit()
                except BaseException as commit_error:
                    tm.abort()
                    if self.reraise or not isinstance(commit_error, Exception):
                        raise
                    log.exception("db_transaction: the commit failed and was rolled back")
                    return False
            else:  # auto_commit=False: what the block did not commit is discarded
                tm.abort()
            return False
        if current_transaction(tm) is not None:
            tm.abort()
        return self._swallow(exc)

    def _swallow(self, exc: BaseException) -> bool:
        if self.reraise or not isinstance(exc, Exception):
            return False
        log.exception("db_transaction: error rolled back and not re-raised", exc_info=exc)
        return True


class savepoint(db_transaction):
    """A nested unit of work that must run inside an active transaction (seed 003).

    ``with savepoint():`` rolls back only its own changes on error and
    re-raises; it raises :class:`NoUnitOfWork` when no transaction is active.
    """

    def __init__(self, reraise: bool = True) -> None:
        super().__init__(reraise=reraise)

    def _recreate_cm(self) -> savepoint:
        clone = savepoint(self.reraise)
        clone._decorating = True
        return clone

    def __enter__(self) -> SessionT:
        if _enclosing() is None:
            raise NoUnitOfWork(
                "savepoint() needs an active transaction; use db_transaction() to start one"
            )
        return super().__enter__()


@contextmanager
def db_read_only() -> Iterator[SessionT]:
    """A read-only unit of work: yields a session; nothing it does is ever committed.

    Flushing pending changes or executing DML raises ``ReadOnlyViolation``
    before the database sees it; on PostgreSQL the transaction is also
    ``READ ONLY``, so raw SQL writes fail in the database. Outermost, it reads
    from the replica when ``sqlalchemy.replica.url`` is configured. Inside a
    transaction it runs in a savepoint that is rolled back at the end.
    """
    scope = current_scope()
    tm = get_tm()
    txn = current_transaction(tm)
    replica = scope.database.replica_factory if scope.database is not None else None
    own_session = None
    if txn is None and replica is not None:
        session = own_session = replica()
    else:
        session = scope.session
    previous = session.info.get(READ_ONLY)
    sp = None
    try:
        if txn is None:
            txn = tm.begin()
            session.info[READ_ONLY] = True
        else:
            sp = _take_savepoint(txn, session)
            session.info[READ_ONLY] = True
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        yield session
    finally:
        try:
            if sp is not None:
                sp.rollback()
            elif current_transaction(tm) is not None:
                tm.abort()
        finally:
            session.info[READ_ONLY] = previous
            if own_session is not None:
                own_session.close()


@dataclass
class BatchProgress:
    """What a batch operation has committed so far (passed to ``progress``)."""

    batches: int = 0
    rows: int = 0
    pending: int = 0
    done: bool = False
    history: list[int] = field(default_factory=list)


@contextmanager
def db_batch_operation(
    batch_size: int = 100,
    auto_commit_batch: bool = True,
    progress: Callable[[BatchProgress], Any] | None = None,
) -> Iterator[tuple[SessionT, Callable[..., None]]]:
    """Write many rows in batches, each batch its own committed transaction (seed 000).

    Yields ``(session, commit_batch)``. With ``auto_commit_batch=True``,
    ``commit_batch()`` commits once ``batch_size`` objects were added since the
    last commit (call it after every row, or every N rows);
    ``commit_batch(force=True)`` and ``auto_commit_batch=False`` commit at every
    call. Each commit is real and empties the identity map, so memory stays
    flat. The remainder commits at the end.

    On error the uncommitted batch is rolled back, committed batches stay, and
    :class:`BatchFailed` says how many batches and rows were committed.
    Refused inside another transaction (intermediate commits would break its
    atomicity). Under the test toolkit each commit is a savepoint release.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if _enclosing() is not None:
        raise NestedTransactionError(
            "db_batch_operation() commits every batch and cannot run inside another "
            "transaction (a request, 'with transaction.manager:' or db_transaction()): "
            "run it from a management command or a script"
        )
    scope = current_scope()
    session = scope.session
    tm = get_tm()
    state = BatchProgress()
    added = 0

    def count_added(_session: Any, _instance: Any) -> None:
        nonlocal added
        added += 1

    def commit_batch(force: bool = False) -> None:
        nonlocal added
        if auto_commit_batch and not force and added < batch_size:
            return
        pending = added
        tm.commit()
        session.expunge_all()
        added = 0
        state.batches += 1
        state.rows += pending
        state.history.append(pending)
        tm.begin()
        if progress is not None:
            progress(state)

    txn = current_transaction(tm)
    if txn is None:
        tm.begin()
    else:
        txn.extension.pop(IMPLICIT, None)
    event.listen(session, "after_attach", count_added)
    try:
        yield session, commit_batch
        if added or session.new or session.dirty or session.deleted:
            commit_batch(force=True)
        state.done = True
        if progress is not None:
            progress(state)
    except Exception as exc:
        rolled_back = added
        raise BatchFailed(
            f"batch operation failed after committing {state.batches} batch(es) "
            f"({state.rows} rows); the current batch ({rolled_back} rows) was rolled back: {exc}",
            batches=state.batches,
            rows=state.rows,
            rolled_back_rows=rolled_back,
        ) from exc
    finally:
        event.remove(session, "after_attach", count_added)
        if current_transaction(tm) is not None:
            tm.abort()
