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
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm.exc import StaleDataError
from transaction._transaction import Status
from transaction.interfaces import TransientError

from .bridge import (
    IMPLICIT,
    MANUAL,
    READ_ONLY,
    SessionSavepoint,
    current_transaction,
    get_tm,
    is_implicit,
    join_transaction,
    refuse_in_maintenance,
    statement_writes,
)
from .bridge import (
    Session as SessionT,
)
from .errors import (
    BatchFailed,
    NestedTransactionError,
    NoUnitOfWork,
    TransactionFailed,
)
from .scope import Scope, current_scope

log = logging.getLogger("myapp.db")
F = TypeVar("F", bound=Callable[..., Any])

#: PostgreSQL SQLSTATEs worth retrying the whole transaction for.
RETRYABLE_SQLSTATES = {"40001", "40P01"}


def is_transient(exc: BaseException) -> bool:
    """True for errors that a fresh attempt of the whole transaction may not meet.

    Serialization failures and deadlocks (SQLSTATE 40001, 40P01), SQLite's
    "database is locked", ``transaction``'s TransientError, stale ORM data,
    and :class:`TransactionFailed` caused by one of those.
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
    return False


def is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` is a lost database connection (SQLAlchemy invalidated it).

    The server rolls back the transaction of a connection it lost, so a unit
    of work that had not begun to commit may be run again from scratch, on a
    new connection. Once the commit began, a lost connection is ambiguous (the
    COMMIT may or may not have been applied): never retry that.
    """
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _live_transaction(tm: Any) -> Any:
    """The current transaction; one whose commit failed earlier is aborted first.

    ``transaction`` keeps a transaction whose commit raised until someone
    aborts it (a script's ``with transaction.manager:`` does not), and in
    explicit mode nothing can begin meanwhile. Units of work clean it up.
    """
    txn = current_transaction(tm)
    if txn is not None and txn.status == Status.COMMITFAILED:
        log.warning(
            "aborting a transaction whose commit failed earlier and was left open "
            "(after a failed commit in 'with transaction.manager:', call transaction.abort())"
        )
        tm.abort()
        return None
    return txn


def is_in_transaction() -> bool:
    """True inside a unit of work (request, ``db_transaction``, ``with transaction.manager:``).

    A scope's implicit transaction (a session used outside any unit of work
    in a script or a test) does not count.
    """
    txn = current_transaction()
    return txn is not None and not is_implicit(txn) and txn.status != Status.COMMITFAILED


def _enclosing(tm: Any = None) -> Any:
    """The nesting rule: the explicit transaction to nest in, or None to be outermost."""
    txn = _live_transaction(tm if tm is not None else get_tm())
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


def _failed() -> TransactionFailed:
    return TransactionFailed(
        "this unit of work cannot go on: an earlier database error inside it was caught "
        "without rolling back, which left its transaction failed; everything it did was "
        "rolled back. Put the statement that may fail in 'with savepoint():' (or a nested "
        "db_transaction()) and catch the error outside that block to carry on"
    )


@dataclass
class _Frame:
    outermost: bool
    txn: Any
    savepoint: Any = None


class db_transaction(ContextDecorator):
    """A unit of work: a context manager and a decorator.

    Outermost (no transaction active, or only a scope's implicit one, whose
    pending work it adopts): begins a transaction through the manager and
    commits it at the end; an exception aborts it. As a decorator,
    ``attempts=N`` retries the whole function on transient errors
    (serialization failures, deadlocks), and on a lost connection
    (:func:`is_disconnect`) raised before the commit began, when it runs
    outermost.

    Nested (inside a request, ``with transaction.manager:`` or another
    ``db_transaction``): a ``transaction.savepoint()``. Success releases it and
    nothing is committed before the outermost commits; an exception rolls
    back to the savepoint only (``auto_rollback``) and propagates
    (``reraise=True``) or is logged and swallowed (``reraise=False``).
    ``auto_rollback=False`` only matters nested: the failed block's changes
    then stay in the enclosing transaction, which decides. An outermost unit
    that fails is always rolled back.

    ``auto_commit=False`` (outermost only): the block gets the session and
    commits itself with ``session.commit()`` (as often as it likes); what it
    did not commit is rolled back at the end. ``durable=True``: refuse to run
    nested, so that the commit at the end really is a commit.

    A ``PendingRollbackError`` (an error caught inside the unit without a
    savepoint) never leaves it: it is rolled back and :class:`TransactionFailed`
    says what to do.
    """

    def __init__(
        self,
        auto_commit: bool = True,
        auto_rollback: bool = True,
        reraise: bool = True,
        durable: bool = False,
        attempts: int = 1,
    ) -> None:
        if callable(auto_commit):
            raise TypeError("write @db_transaction() with parentheses")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.auto_commit = auto_commit
        self.auto_rollback = auto_rollback
        self.reraise = reraise
        self.durable = durable
        self.attempts = attempts
        self._frames: list[_Frame] = []
        self._decorating = False
        self._was_outermost = False
        self._commit_started = False

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
                    transient = is_transient(exc)
                    lost = not transient and is_disconnect(exc) and not unit._commit_started
                    if attempt < self.attempts and unit._was_outermost and (transient or lost):
                        log.warning(
                            "%s: %s, retrying (%d/%d): %s",
                            func.__qualname__,
                            "transient error" if transient else "connection lost before the commit",
                            attempt,
                            self.attempts,
                            exc,
                        )
                        continue
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

        return inner  # type: ignore[return-value]

    def __enter__(self) -> SessionT:
        if self.attempts > 1 and not self._decorating:
            raise TypeError(
                "db_transaction(attempts=...) retries by calling the function again: "
                "use it as a decorator, not as a 'with' block"
            )
        tm = get_tm()
        txn = _enclosing(tm)
        session = current_scope().session
        if txn is not None:
            if self.durable and txn.isDoomed():
                raise NestedTransactionError(
                    "durable db_transaction() inside a doomed transaction, which can never "
                    "commit (in the test suite: the @pytest.mark.doomed mode, for tests that "
                    "never commit; drop the marker to test code that commits)"
                )
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
            frame = _Frame(False, txn, _take_savepoint(txn, session))
        else:
            txn = current_transaction(tm)
            if txn is None:
                txn = tm.begin()
            else:  # adopt the scope's implicit transaction: its pending work commits with us
                txn.extension.pop(IMPLICIT, None)
            if not self.auto_commit:
                txn.extension[MANUAL] = True
            # Join now, so that changes made without SQL (an attribute set on a
            # loaded object, then save()) are flushed by the commit.
            join_transaction(session)
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
        if self.auto_rollback or isinstance(exc, PendingRollbackError):
            frame.savepoint.rollback()
        return self._swallow(exc)

    def _exit_outermost(self, exc: BaseException | None) -> bool:
        tm = get_tm()
        if exc is None:
            txn = current_transaction(tm)
            if txn is None:  # the block ended the transaction itself
                return False
            if self.auto_commit:
                self._commit_started = True  # from here a lost connection is ambiguous
                try:
                    tm.commit()
                except BaseException as commit_error:
                    if current_transaction(tm) is not None:
                        tm.abort()
                    return self._swallow(commit_error, raise_it=True)
            else:  # auto_commit=False: what the block did not commit is discarded
                tm.abort()
            return False
        if current_transaction(tm) is not None:
            tm.abort()
        return self._swallow(exc)

    def _swallow(self, exc: BaseException, raise_it: bool = False) -> bool:
        """Decide the fate of ``exc`` once rolled back: re-raise it, or log and swallow it."""
        if self.reraise or not isinstance(exc, Exception):
            if isinstance(exc, PendingRollbackError):
                raise _failed() from exc
            if raise_it:
                raise exc
            return False
        log.error("db_transaction: error rolled back and not re-raised", exc_info=exc)
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
    ``READ ONLY``, so raw SQL writes fail in the database.

    Outermost, it uses a session of its own (the scope's session is guarded
    too), from the replica when ``sqlalchemy.replica.url`` is configured; the
    session is current inside the block and closed at the end, so the objects
    read stay usable, detached, with what was loaded. Inside a transaction it
    runs in a savepoint of the current session that is rolled back at the end
    (PostgreSQL's ``READ ONLY`` goes with it).
    """
    tm = get_tm()
    txn = _live_transaction(tm)
    scope = current_scope()
    if txn is not None:
        session = scope.session
        previous = session.info.get(READ_ONLY)
        sp = _take_savepoint(txn, session)
        try:
            # Emit BEGIN/SAVEPOINT now, before the session turns read-only:
            # READ ONLY must apply to the savepoint only, never to the transaction.
            connection = session.connection()
            session.info[READ_ONLY] = True
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield session
        finally:
            try:
                sp.rollback()
            finally:
                session.info[READ_ONLY] = previous
        return

    database = scope.database
    factory = (database.replica_factory if database is not None else None) or scope.factory
    own = factory is not None
    session = factory() if factory is not None else scope.session
    guarded = [session] + ([scope.session] if own and scope.has_session else [])
    previous = [(s, s.info.get(READ_ONLY)) for s in guarded]
    for s in guarded:
        s.info[READ_ONLY] = True
    tm.begin()
    try:
        if own:
            ro_scope = Scope(session=session, database=database, autobegin=False, kind="read-only")
            with ro_scope.activate():
                yield session
        else:
            yield session
    finally:
        try:
            if own:  # end the SQL transaction without expiring what was read
                session.close()
        finally:
            try:
                if current_transaction(tm) is not None:
                    tm.abort()
            finally:
                for s, flag in previous:
                    s.info[READ_ONLY] = flag


@dataclass
class BatchProgress:
    """What a batch operation has committed so far (a snapshot passed to ``progress``).

    ``batches``/``rows``: committed so far; ``history``: rows per committed
    batch; ``done``: the operation finished (the last call).
    """

    batches: int = 0
    rows: int = 0
    done: bool = False
    history: list[int] = field(default_factory=list)


def _pending_changes(session: SessionT) -> int:
    """``len(session.new) + len(session.dirty) + len(session.deleted)``, without copying.

    ``commit_batch()`` runs after every row; the public properties build a new
    set of every pending object at each call, which made a batch of N rows
    cost O(N²). This reads the same bookkeeping those properties read
    (``Session._new``, ``Session._deleted`` and the identity map's modified
    states, of which ``dirty`` is the part not deleted);
    ``tests/units/test_batch.py`` checks both counts agree.
    """
    new, deleted = session._new, session._deleted
    modified = session.identity_map._modified
    dirty = sum(1 for state in modified if state not in deleted) if deleted else len(modified)
    return len(new) + len(deleted) + dirty


@contextmanager
def db_batch_operation(
    batch_size: int = 100,
    auto_commit_batch: bool = True,
    progress: Callable[[BatchProgress], Any] | None = None,
) -> Iterator[tuple[SessionT, Callable[..., None]]]:
    """Write many rows in batches, each batch its own committed transaction (seed 000).

    Yields ``(session, commit_batch)``. A *row* is an object added, changed
    or deleted, or a parameter set of a Core/``text()`` write statement. With
    ``auto_commit_batch=True``, ``commit_batch()`` commits once ``batch_size``
    rows are pending (call it after every row, or every N rows);
    ``commit_batch(force=True)``, and every call with ``auto_commit_batch=False``,
    commits at once. Each commit is real and expunges the objects the batch
    wrote, so the identity map never holds more than one batch and memory
    stays flat (written objects are detached after their commit; objects only
    read stay attached, expired if ``expire_on_commit``). The remainder commits
    at the end. ``progress(state)`` is called after every
    committed batch and once more at the end (``state.done``).

    On error the uncommitted batch is rolled back, committed batches stay, and
    :class:`BatchFailed` says how many batches and rows were committed.
    Refused inside another transaction (intermediate commits would break its
    atomicity) and in maintenance mode. Under the test toolkit each commit is
    a savepoint release.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tm = get_tm()
    if _enclosing(tm) is not None:
        raise NestedTransactionError(
            "db_batch_operation() commits every batch and cannot run inside another "
            "transaction (a request, 'with transaction.manager:' or db_transaction()): "
            "run it from a management command or a script"
        )
    scope = current_scope()
    session = scope.session
    refuse_in_maintenance(session, "db_batch_operation()", "before writing anything")
    state = BatchProgress()
    counted = 0  # rows flushed or written with statements since the last commit
    committing: int | None = None
    written: list[Any] = []  # objects flushed since the last commit

    def after_flush(s: Any, flush_context: Any) -> None:
        nonlocal counted
        counted += _pending_changes(s)  # still the pre-flush state here
        written.extend(s.new)
        written.extend(s.dirty)

    def on_execute(orm_state: ORMExecuteState) -> None:
        nonlocal counted
        if statement_writes(orm_state):
            params = orm_state.parameters
            counted += len(params) if isinstance(params, list | tuple) else 1

    def pending_rows() -> int:
        return counted + _pending_changes(session)

    def commit(rows: int) -> None:
        nonlocal counted, committing
        committing = rows
        tm.commit()
        committing = None
        for obj in written:
            if obj in session:
                session.expunge(obj)
        written.clear()
        counted = 0
        if rows:
            state.batches += 1
            state.rows += rows
            state.history.append(rows)

    def commit_batch(force: bool = False) -> None:
        rows = pending_rows()
        if auto_commit_batch and not force and rows < batch_size:
            return
        commit(rows)
        tm.begin()
        join_transaction(session)
        if progress is not None and rows:
            progress(replace(state, history=list(state.history)))

    txn = current_transaction(tm)
    if txn is None:
        tm.begin()
    else:  # adopt the scope's implicit transaction
        txn.extension.pop(IMPLICIT, None)
    join_transaction(session)
    event.listen(session, "after_flush", after_flush)
    event.listen(session, "do_orm_execute", on_execute)
    try:
        yield session, commit_batch
        commit(pending_rows())
        state.done = True
        if progress is not None:
            progress(replace(state, history=list(state.history)))
    except Exception as exc:
        rolled_back = committing if committing is not None else pending_rows()
        if current_transaction(tm) is not None:
            tm.abort()
        raise BatchFailed(
            f"batch operation failed after committing {state.batches} batch(es) "
            f"({state.rows} rows); the current batch ({rolled_back} rows) was rolled back: "
            f"{type(exc).__name__}: {exc}",
            batches=state.batches,
            rows=state.rows,
            rolled_back_rows=rolled_back,
        ) from exc
    finally:
        event.remove(session, "after_flush", after_flush)
        event.remove(session, "do_orm_execute", on_execute)
        if current_transaction(tm) is not None:
            tm.abort()
