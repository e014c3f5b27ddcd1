"""Units of work for business code: ``db_transaction``, ``savepoint``, ``db_read_only``,
the rollback flag (``get_rollback``, ``set_rollback``, ``mark_for_rollback_on_error``) and
``on_commit`` (its rules: :mod:`myapp.db.hooks`).

All of them drive the thread's :class:`~myapp.db.nesting.Nesting`, which
decides whether a unit begins a transaction, adopts a scope's implicit one,
takes a savepoint or merges into the enclosing unit; none calls
``session.commit()``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import ContextDecorator, contextmanager
from typing import Any, TypeVar

from sqlalchemy.exc import PendingRollbackError

from .errors import NoUnitOfWork
from .guard import FAILURE, failed, swallowed_error
from .hooks import HOOKS, OnCommitHooks, run_hooks
from .manager import current_transaction, unit_manager
from .nesting import Unit
from .readpath import begin_snapshot, end_block, enforce_read_only, lift_read_only, read_intent
from .retry import is_retryable
from .scope import Scope, current_scope
from .session import Session as SessionT
from .writes import READ_ONLY

log = logging.getLogger("myapp.db")
F = TypeVar("F", bound=Callable[..., Any])


def is_in_transaction() -> bool:
    """True inside a unit of work (request, ``db_transaction``, ``with transaction.manager:``).

    A scope's implicit transaction (a session used outside any unit of work
    in a script or a test) does not count.
    """
    return unit_manager().nesting.in_unit_of_work()


def get_rollback() -> bool:
    """Is the current unit of work marked to roll back? (``NoUnitOfWork`` outside one.)"""
    return unit_manager().nesting.get_rollback()


def set_rollback(rollback: bool) -> None:
    """Mark the current unit of work to roll back at its end, without raising (or unmark it).

    The innermost unit with a savepoint rolls back to it; the outermost
    unit, a request or a ``with transaction.manager:`` block aborts instead
    of committing. While the flag is set, ORM statements raise
    :class:`~myapp.db.errors.TransactionFailed`. ``NoUnitOfWork`` outside a
    unit of work.
    """
    unit_manager().nesting.set_rollback(rollback)


@contextmanager
def mark_for_rollback_on_error() -> Iterator[None]:
    """An exception passing out of the block marks the current unit of work for rollback.

    For code that catches errors of a block it does not own (a library call
    that may fail half-way): the exception propagates, and the enclosing unit
    will roll back even if someone catches it. Outside a unit of work the
    exception just propagates.
    """
    try:
        yield
    except Exception as exc:
        nesting = unit_manager().nesting
        if nesting.in_unit_of_work():
            nesting.needs_rollback = True
            nesting.rollback_exc = exc
        raise


class db_transaction(ContextDecorator):
    """A unit of work: a context manager and a decorator (also bare: ``@db_transaction``).

    Outermost (no transaction active, or only a scope's implicit one, whose
    pending work it adopts): begins a transaction through the manager and
    commits it at the end; an exception or ``set_rollback(True)`` aborts it.
    As a decorator, ``attempts=N`` runs the whole function again on transient
    errors (serialization failures, deadlocks) and on a lost connection
    raised before the commit began, when it runs outermost.

    Nested (inside a request, ``with transaction.manager:`` or another unit):
    a savepoint. Success releases it and nothing is committed before the
    outermost commits; an exception rolls back to the savepoint and releases
    it (``auto_rollback``), then propagates (``reraise=True``) or is logged
    and swallowed (``reraise=False``). ``auto_rollback=False``: the failed
    block's changes stay in the enclosing unit, which decides (not possible
    after a database error: that one always rolls back). ``savepoint=False``:
    no savepoint, the block merges into the enclosing unit; an exception
    leaving it marks the enclosing unit for rollback, so nothing of it is
    ever committed. An outermost unit that fails is always rolled back.

    ``auto_commit=False`` (outermost only): the block gets the session and
    commits itself with ``session.commit()`` (as often as it likes); what it
    did not commit is rolled back at the end. ``durable=True``: refuse to run
    nested (:class:`~myapp.db.errors.NestedTransactionError`), so that the
    commit at the end really is a commit.

    A ``PendingRollbackError`` (an error caught inside the unit without a
    savepoint) never leaves it: it is rolled back and
    :class:`~myapp.db.errors.TransactionFailed` says what to do.
    """

    def __new__(cls, auto_commit: Any = True, *args: Any, **kwargs: Any) -> Any:
        if callable(auto_commit) and not args and not kwargs:
            return cls()(auto_commit)  # bare: @db_transaction / db_transaction(func)
        return super().__new__(cls)

    def __init__(
        self,
        auto_commit: bool = True,
        auto_rollback: bool = True,
        reraise: bool = True,
        *,
        durable: bool = False,
        savepoint: bool = True,
        attempts: int = 1,
    ) -> None:
        for name, value in (
            ("auto_commit", auto_commit),
            ("auto_rollback", auto_rollback),
            ("reraise", reraise),
        ):
            if not isinstance(value, bool):
                raise TypeError(
                    f"db_transaction({name}={value!r}): expected True or False (to decorate "
                    "a function write @db_transaction or @db_transaction(...) above it)"
                )
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.auto_commit = auto_commit
        self.auto_rollback = auto_rollback
        self.reraise = reraise
        self.durable = durable
        self.savepoint = savepoint
        self.attempts = attempts
        self._units: list[Unit] = []
        self._decorating = False
        self._retryable = False

    def _options(self) -> dict[str, Any]:
        return {
            "auto_commit": self.auto_commit,
            "auto_rollback": self.auto_rollback,
            "reraise": self.reraise,
            "durable": self.durable,
            "savepoint": self.savepoint,
            "attempts": self.attempts,
        }

    def _recreate_cm(self) -> db_transaction:
        clone = type(self).__new__(type(self))
        db_transaction.__init__(clone, **self._options())
        clone._decorating = True
        return clone

    def __call__(self, func: F) -> F:
        if not callable(func):
            raise TypeError(f"db_transaction() decorates a callable, got {func!r}")

        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, self.attempts + 1):
                unit = self._recreate_cm()
                try:
                    with unit:
                        return func(*args, **kwargs)
                except Exception as exc:
                    if attempt < self.attempts and unit._retryable:
                        log.warning(
                            "%s: retrying (%d/%d) after %s: %s",
                            func.__qualname__,
                            attempt,
                            self.attempts,
                            type(exc).__name__,
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
        nesting = unit_manager().nesting
        session = current_scope().session
        unit = nesting.enter(
            session,
            savepoint=self.savepoint,
            durable=self.durable,
            commits=self.auto_commit,
            manual=not self.auto_commit,
            auto_rollback=self.auto_rollback,
            kind=self._kind(),
        )
        self._units.append(unit)
        return session

    def _kind(self) -> str:
        return "db_transaction()" if self.auto_commit else "db_transaction(auto_commit=False)"

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        unit = self._units.pop()
        nesting = unit_manager().nesting
        if exc is not None and unit.outermost and self.attempts > 1:
            self._retryable = _retryable(unit, exc, commit_started=False)
        try:
            nesting.exit(unit, exc)
        except BaseException as commit_error:
            if exc is not None:
                raise
            if unit.outermost and self.attempts > 1:
                self._retryable = is_retryable(commit_error, commit_started=True)
            return self._swallow(commit_error, raise_it=True)
        if exc is None:
            return False
        return self._swallow(exc)

    def _swallow(self, exc: BaseException, raise_it: bool = False) -> bool:
        """Decide the fate of ``exc`` once rolled back: re-raise it, or log and swallow it."""
        if self.reraise or not isinstance(exc, Exception):
            if isinstance(exc, PendingRollbackError):
                raise failed() from exc
            if raise_it:
                raise exc
            return False
        log.error("db_transaction: error rolled back and not re-raised", exc_info=exc)
        return True


def _retryable(unit: Unit, exc: BaseException, *, commit_started: bool) -> bool:
    """``transaction``'s verdict (TransientError, data managers' ``should_retry``) or myapp's."""
    if is_retryable(exc, commit_started=commit_started):
        return True
    try:
        return bool(unit.txn.isRetryableError(exc))
    except Exception:  # a failed transaction may not answer
        return False


class savepoint(db_transaction):
    """A nested unit of work that must run inside an active one (``NoUnitOfWork`` otherwise).

    ``with savepoint():`` rolls back only its own changes on error and
    re-raises (``reraise=False``: logs and swallows).
    """

    def __new__(cls, reraise: Any = True, *args: Any, **kwargs: Any) -> Any:
        if callable(reraise) and not args and not kwargs:
            return cls()(reraise)
        return object.__new__(cls)

    def __init__(self, reraise: bool = True) -> None:
        super().__init__(reraise=reraise)

    def _options(self) -> dict[str, Any]:
        return {"reraise": self.reraise}

    def _recreate_cm(self) -> savepoint:
        clone = savepoint(self.reraise)
        clone._decorating = True
        return clone

    def _kind(self) -> str:
        return "savepoint()"

    def __enter__(self) -> SessionT:
        if unit_manager().nesting.enclosing() is None:
            raise NoUnitOfWork(
                "savepoint() needs an active unit of work; use db_transaction() to start one"
            )
        return super().__enter__()


@contextmanager
def db_read_only(*, snapshot: bool = False) -> Iterator[SessionT]:
    """A read-only unit of work: yields a session; nothing it does is ever committed.

    Writes are refused by the database itself: the connection or transaction
    is read-only there (``docs/architecture.md``, "The read path"), and a write
    raises :class:`~myapp.db.errors.ReadOnlyViolation` (nothing written).
    Pending ORM changes are refused earlier, at flush. Every read works,
    ``WITH ... SELECT`` included.

    Outermost, it reads through a session of its own on the read path
    (:meth:`~myapp.db.Database.read_factory`): a healthy replica, else the
    primary's read engine (autocommit, read-only by the server: one round trip
    per statement, no BEGIN/COMMIT); the primary after this scope wrote
    (read-your-writes). The session is current inside the block and closed at
    the end, so the objects read stay usable, detached, with what was loaded.

    Nested (in a request or a ``db_transaction()``), it uses the current
    session and sees the transaction's own uncommitted writes. In a writing
    transaction it runs in a savepoint made read-only at the database
    (PostgreSQL ``SET TRANSACTION READ ONLY``, SQLite ``PRAGMA query_only``),
    rolled back and released at the end. In a session that is read-only
    already (a GET request) it needs no savepoint and costs nothing.

    ``snapshot=True``: every read of the block sees one snapshot of the
    database (PostgreSQL ``REPEATABLE READ READ ONLY``; SQLite: a read
    transaction, one snapshot in WAL mode). Use it when several reads must
    agree with each other (a total and its lines, a page and its count).
    Inside a transaction that already ran statements on PostgreSQL's primary
    (a writing request, the test fixtures' transaction) the snapshot is that
    transaction's own.
    """
    nesting = unit_manager().nesting
    scope = current_scope()
    if nesting.live_transaction() is not None:
        session = scope.session
        previous = session.info.get(READ_ONLY)
        if previous:  # read-only already (a GET request, another read-only unit): no savepoint
            yield from _read_only_in_read_only(nesting, session, snapshot)
            return
        unit = nesting.enter(session, commits=False, adopt=False, kind="db_read_only()")
        error: BaseException | None = None
        connection = None
        try:
            # Emit BEGIN/SAVEPOINT now, before the session turns read-only:
            # READ ONLY must apply to the savepoint only, never to the transaction.
            connection = session.connection()
            session.info[READ_ONLY] = True
            if unit.savepoint is not None:
                enforce_read_only(session, connection)
            yield session
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                nesting.exit(unit, error)
            finally:
                session.info[READ_ONLY] = previous
                lift_read_only(session)
        return

    database = scope.database
    if database is not None:
        factory, _replica = database.read_factory(primary=scope.primary_reads)
    else:
        factory = scope.factory
    own = factory is not None
    session = factory() if factory is not None else scope.session
    guarded = [session] + ([scope.session] if own and scope.has_session else [])
    previous_flags = [(s, s.info.get(READ_ONLY)) for s in guarded]
    for s in guarded:
        s.info[READ_ONLY] = True
    unit = nesting.enter(None, commits=False, adopt=False, kind="db_read_only()")
    error = None
    try:
        with read_intent():  # SQLite: a deferred BEGIN, even inside a write request
            if snapshot:
                begin_snapshot(session, outermost=True)
            if own:
                ro_scope = Scope(
                    session=session, database=database, autobegin=False, kind="read-only"
                )
                with ro_scope.activate():
                    yield session
            else:
                yield session
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            if own:  # end the SQL transaction without expiring what was read
                lift_read_only(session)
                session.close()
        finally:
            try:
                nesting.exit(unit, error)
            finally:
                for s, flag in previous_flags:
                    s.info[READ_ONLY] = flag


def _read_only_in_read_only(nesting: Any, session: SessionT, snapshot: bool) -> Iterator[SessionT]:
    """A read-only unit inside a read-only session: merged, and ends as a savepoint would.

    Nothing can have been written, so there is nothing to roll back: an error
    leaving the block propagates without marking the enclosing unit, and a
    database error swallowed inside is forgotten as a savepoint rollback would.
    """
    txn = nesting.live_transaction()
    before = swallowed_error(txn)
    unit = nesting.enter(
        session, savepoint=False, commits=False, adopt=False, kind="db_read_only()"
    )
    began = False
    try:
        if snapshot:
            began = begin_snapshot(session)
        yield session
    finally:
        try:
            if began:
                end_block(session)
        finally:
            nesting.exit(unit, None)
            guard = txn.extension.get(FAILURE)
            if guard is not None:
                guard.error = before


def on_commit(fn: Callable[[], Any], robust: bool = False, tm: Any = None) -> None:
    """Run ``fn()`` after the outermost transaction commits (Django's ``on_commit``).

    Inside a unit of work: after the commit, outside the committed
    transaction; dropped if the transaction aborts, if a savepoint it was
    registered after rolls back, or if the COMMIT fails. Outside any
    transaction: now. ``robust=True``: an exception ``fn`` raises is logged
    and does not stop the next hooks; otherwise it propagates (after a
    commit: out of the commit call, the data committed and the remaining
    hooks discarded). A ``fn`` that is not callable is a ``TypeError`` at once.
    """
    if not callable(fn):
        raise TypeError(f"on_commit() needs a callable, got {fn!r}")
    txn = current_transaction(tm)
    if txn is None:
        run_hooks([(fn, robust)], after_commit=False)
        return
    hooks = txn.extension.get(HOOKS)
    if hooks is None:
        hooks = txn.extension[HOOKS] = OnCommitHooks(txn)
    hooks.add(fn, robust)
