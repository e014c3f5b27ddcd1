"""The nesting state: the stack of active units of work and the one rule for nesting them.

Every thread's transaction manager (:class:`~myapp.db.manager.UnitManager`)
owns one :class:`Nesting` -- the role of Django's ``connection.atomic_blocks``
plus ``needs_rollback``. ``db_transaction``, ``savepoint``, ``db_read_only``,
``db_batch_operation``, ``is_in_transaction``, ``get_rollback``/``set_rollback``,
the request wiring and the test helpers all ask it; none re-derives the rule.

**The rule** (:meth:`Nesting.enter`), for a unit of work that starts:

1. No transaction on the thread: the unit **begins** one and ends it.
2. Only a scope's *implicit* transaction (a session used outside any unit of
   work in a script or a test) and no unit active: the unit **adopts** it --
   the pending work commits with the unit. A read-only unit never adopts (it
   would throw that work away): it takes a savepoint instead (3).
3. Inside a unit of work (a request, ``with transaction.manager:``, another
   unit): the unit takes a **savepoint**, released when it succeeds, rolled
   back *and released* when it fails -- unless it asks not to
   (``savepoint=False``) or the enclosing unit is already marked for
   rollback: then it **merges** into the enclosing unit, and a failure marks
   that unit for rollback (``needs_rollback``). While the flag is set, ORM
   statements raise :class:`~myapp.db.errors.TransactionFailed`.
4. Units that commit by themselves (``durable=True``, ``auto_commit=False``,
   batches) are refused in case 3.

How a unit ends (:meth:`Nesting.exit`) follows Django's ``Atomic.__exit__``:
success and no rollback flag commits (outermost) or releases (savepoint);
otherwise the outermost aborts, a savepoint rolls back and is released (its
failure clears the flag), a merged unit passes the flag on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.exc import SQLAlchemyError as SAError

from . import compat
from .datamanager import SessionSavepoint, join_transaction, sql_savepoints
from .errors import NestedTransactionError, NoUnitOfWork, TransactionManaged
from .hooks import commit_transaction

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class TransactionOwner(Protocol):
    """What the nesting state needs from its manager (:class:`myapp.db.manager.UnitManager`)."""

    @property
    def current(self) -> Any: ...

    def begin_new(self) -> Any: ...


log = logging.getLogger("myapp.db")

#: ``Transaction.extension`` key: this transaction was begun implicitly by a scope.
IMPLICIT = "myapp.implicit"


def is_implicit(txn: Any) -> bool:
    """True if ``txn`` was begun implicitly by a scope's session (not by a unit of work)."""
    return bool(txn is not None and txn.extension.get(IMPLICIT))


class UnitSavepoint:
    """A ``transaction.savepoint()`` whose SQL savepoints can be released.

    ``transaction``'s savepoints can only be rolled back; myapp RELEASEs the
    SQL savepoints of a unit that succeeded, and the session savepoints
    release themselves after rolling back, so no savepoint stays open on the
    server when a nested unit ends, whichever way.
    """

    __slots__ = ("_created", "_mark", "_released", "txn_savepoint")

    def __init__(self, txn: Any, session: Session | None) -> None:
        if session is not None:
            join_transaction(session)  # so the savepoint covers this session's changes
        self._created = sql_savepoints(txn)
        self._mark = len(self._created)
        self._released: list[SessionSavepoint] = []
        self.txn_savepoint = txn.savepoint()

    def _mine(self) -> list[SessionSavepoint]:
        mine = self._created[self._mark :]
        del self._created[self._mark :]  # released or rolled back with this one
        return mine

    def release(self) -> None:
        """RELEASE the SQL savepoints taken by this savepoint (innermost first)."""
        self._released = self._mine()
        for session_savepoint in reversed(self._released):
            session_savepoint.release()

    def recover(self) -> None:
        """After a failed RELEASE: ROLLBACK TO and RELEASE by name, then restore the resources.

        Raises if the database refuses (the savepoint is gone, or the
        transaction is aborted): the enclosing unit must then roll back.
        """
        for session_savepoint in self._released:
            session_savepoint.rollback_by_name()
        self.txn_savepoint.rollback()

    def rollback(self) -> None:
        """Roll back to the savepoint (every joined resource) and RELEASE it."""
        mine = self._mine()
        try:
            self.txn_savepoint.rollback()
        finally:
            for session_savepoint in mine:
                session_savepoint.forget()


def managed_error(txn: Any, verb: str) -> TransactionManaged:
    """The error for ``session.commit()``/``rollback()`` where the manager owns the transaction."""
    if txn.isDoomed():
        return TransactionManaged(
            f"session.{verb}() in a doomed transaction: it can never commit. In the test "
            "suite this is the @pytest.mark.doomed mode, for tests that never commit; "
            "drop the marker to test code that commits"
        )
    return TransactionManaged(
        f"session.{verb}() inside a unit of work owned by the transaction manager "
        "(a request, db_transaction(), 'with transaction.manager:'): "
        + (
            "it commits when the unit of work ends without an error"
            if verb == "commit"
            else "raise an exception to abort it, call set_rollback(True), or use "
            "savepoint()/db_transaction() to roll back part of it"
        )
    )


class Unit:
    """One active unit of work on the stack.

    ``outermost``: it began (or adopted) the transaction and ends it.
    ``savepoint``: its :class:`UnitSavepoint` when nested (None: merged).
    ``commits``: an outermost unit that commits at the end (read-only units
    and ``auto_commit=False`` blocks abort what is left). ``block``: a
    ``with`` block of business code (the manager refuses its own
    commit/abort inside one). Subclasses change what ``session.commit()``
    and ``session.rollback()`` mean inside the unit (the test toolkit's
    ``nested_savepoint`` does).
    """

    kind = "db_transaction()"
    block = True

    def __init__(
        self,
        txn: Any,
        *,
        outermost: bool,
        savepoint: UnitSavepoint | None = None,
        commits: bool = True,
        manual: bool = False,
        auto_rollback: bool = True,
        kind: str | None = None,
    ) -> None:
        self.txn = txn
        self.outermost = outermost
        self.savepoint = savepoint
        self.commits = commits
        self.manual = manual
        self.auto_rollback = auto_rollback
        self.commit_started = False
        if kind is not None:
            self.kind = kind

    def session_commit(self, nesting: Nesting, session: Session) -> None:
        """What ``session.commit()`` does inside this unit."""
        if self.manual:
            nesting.commit_and_continue(self, session)
            return
        raise managed_error(self.txn, "commit")

    def session_rollback(self, nesting: Nesting, session: Session) -> None:
        """What ``session.rollback()`` does inside this unit."""
        if self.manual:
            nesting.abort_and_continue(self)
            return
        raise managed_error(self.txn, "rollback")


class Nesting:
    """The units of work active on one thread, and whether the innermost must roll back."""

    def __init__(self, manager: TransactionOwner) -> None:
        self.manager = manager
        self.units: list[Unit] = []
        self.needs_rollback = False
        self.rollback_exc: BaseException | None = None

    # -- state -------------------------------------------------------------

    def transaction_began(self) -> None:
        self.needs_rollback = False
        self.rollback_exc = None

    def live_transaction(self) -> Any:
        """The current transaction; one whose commit failed earlier is aborted first.

        ``transaction`` keeps a transaction whose commit raised until someone
        aborts it (a script's ``with transaction.manager:`` does not), and in
        explicit mode nothing can begin meanwhile.
        """
        txn = self.manager.current
        if txn is not None and txn.status == compat.Status.COMMITFAILED and not self.units:
            log.warning(
                "aborting a transaction whose commit failed earlier and was left open "
                "(after a failed commit in 'with transaction.manager:', call transaction.abort())"
            )
            txn.abort()
            return None
        return txn

    def in_unit_of_work(self) -> bool:
        """A unit of work is active: a unit on the stack, or an explicit transaction."""
        if self.units:
            return True
        txn = self.manager.current
        return txn is not None and not is_implicit(txn) and txn.status != compat.Status.COMMITFAILED

    def enclosing(self) -> Any:
        """The transaction a new unit would nest in, or None if it would be outermost."""
        txn = self.live_transaction()
        if txn is None or (is_implicit(txn) and not self.units):
            return None
        return txn

    def refuse_inside_blocks(self, verb: str) -> None:
        """The manager's own ``commit()``/``abort()`` is refused inside a unit of work block."""
        for unit in reversed(self.units):
            if unit.block:
                raise TransactionManaged(
                    f"transaction.{verb}() inside {unit.kind}: the unit of work ends the "
                    "transaction itself when its block exits, and nothing was changed. "
                    + (
                        "Let the block end to commit (or use db_transaction(auto_commit=False) "
                        "and session.commit() to commit as you go)"
                        if verb == "commit"
                        else "Raise an exception, or call set_rollback(True), to roll it back"
                    )
                )

    def discard(self) -> None:
        """Forget every unit (the transaction is being aborted by a cleanup path)."""
        if self.units:
            log.warning("discarding %d unit(s) of work left open on this thread", len(self.units))
        self.units.clear()
        self.needs_rollback = False
        self.rollback_exc = None

    # -- the rule ----------------------------------------------------------

    def begin_or_adopt(self) -> Any:
        """Begin a transaction, or adopt the scope's implicit one (rule 2)."""
        txn = self.manager.current
        if txn is not None and is_implicit(txn) and not self.units:
            txn.extension.pop(IMPLICIT, None)  # its pending work commits with the new owner
            self.transaction_began()
            return txn
        return self.manager.begin_new()

    def enter(
        self,
        session: Session | None,
        *,
        savepoint: bool = True,
        durable: bool = False,
        commits: bool = True,
        adopt: bool = True,
        manual: bool = False,
        auto_rollback: bool = True,
        kind: str = "db_transaction()",
    ) -> Unit:
        """Start a unit of work: begin, adopt, take a savepoint or merge (the module's rule)."""
        txn = self.live_transaction()
        if txn is None or (adopt and is_implicit(txn) and not self.units):
            txn = self.begin_or_adopt()
            unit = Unit(txn, outermost=True, commits=commits, manual=manual, kind=kind)
            if session is not None:
                # Join now, so that changes made without SQL (an attribute set on a
                # loaded object) belong to this unit of work and are flushed.
                join_transaction(session)
        else:
            self._refuse_nested(txn, durable=durable, manual=manual, kind=kind)
            if savepoint and not self.needs_rollback:
                unit_savepoint = UnitSavepoint(txn, session)
            else:
                unit_savepoint = None
            unit = Unit(
                txn,
                outermost=False,
                savepoint=unit_savepoint,
                commits=commits,
                auto_rollback=auto_rollback,
                kind=kind,
            )
        self.units.append(unit)
        return unit

    def _refuse_nested(self, txn: Any, *, durable: bool, manual: bool, kind: str) -> None:
        if durable:
            if txn.isDoomed():
                raise NestedTransactionError(
                    f"durable {kind} inside a doomed transaction, which can never commit (in "
                    "the test suite: the @pytest.mark.doomed mode, for tests that never "
                    "commit; drop the marker to test code that commits)"
                )
            raise NestedTransactionError(
                f"durable {kind} inside another unit of work: a durable unit of work must be "
                "outermost so that its commit is final (it was called from a request, 'with "
                "transaction.manager:' or another db_transaction); nothing was written"
            )
        if manual:
            raise NestedTransactionError(
                f"{kind} commits by itself and cannot be nested inside another unit of "
                "work (a request, 'with transaction.manager:' or db_transaction()); run it "
                "from a management command or a script"
            )

    def push(self, unit: Unit) -> None:
        """Put a unit built elsewhere (the test toolkit's) on the stack."""
        self.units.append(unit)

    def pop(self, unit: Unit) -> None:
        """Take ``unit`` off the stack; it must be the innermost."""
        if not self.units or self.units[-1] is not unit:
            self.discard()
            self.needs_rollback = True  # whoever commits the transaction now aborts it
            raise TransactionManaged(
                f"{unit.kind} ended while an inner unit of work was still active (units of "
                "work must end innermost first); the transaction was marked for rollback"
            )
        self.units.pop()

    # -- ending ------------------------------------------------------------

    def exit(self, unit: Unit, exc: BaseException | None) -> None:
        """End ``unit`` (Django's ``Atomic.__exit__``). Raises what the commit raised."""
        self.pop(unit)
        if unit.outermost:
            self._exit_outermost(unit, exc)
        elif unit.savepoint is None:
            if exc is not None or self.needs_rollback:
                self.needs_rollback = True  # merged: the enclosing unit must roll back
                if exc is not None and self.rollback_exc is None:
                    self.rollback_exc = exc
        elif exc is None and not self.needs_rollback and unit.commits:
            self._release(unit)
        else:
            self.needs_rollback = False
            self.rollback_exc = None
            if exc is not None and not unit.auto_rollback and _can_keep(exc):
                self._release(unit)  # keep the failed block's changes: the enclosing unit decides
            else:
                self._rollback(unit)

    def _exit_outermost(self, unit: Unit, exc: BaseException | None) -> None:
        rollback = exc is not None or self.needs_rollback or not unit.commits
        self.needs_rollback = False
        self.rollback_exc = None
        txn = self.manager.current
        if txn is None:  # nothing left to end
            return
        if rollback:
            txn.abort()
            return
        unit.commit_started = True  # from here a lost connection is ambiguous
        self.commit(txn)

    def commit(self, txn: Any) -> None:
        """Commit ``txn`` (its hooks run after); a commit that fails leaves it aborted, not open.

        ``transaction`` keeps a transaction whose commit raised until someone
        aborts it: every commit made by myapp aborts it at once.
        """
        try:
            commit_transaction(txn)
        except BaseException:
            if self.manager.current is txn:
                txn.abort()
            raise

    def _release(self, unit: Unit) -> None:
        savepoint = unit.savepoint
        assert savepoint is not None
        try:
            savepoint.release()
        except SAError:
            # Django: a failed RELEASE rolls back to the savepoint and releases it;
            # if even that fails, the enclosing unit must roll back.
            try:
                savepoint.recover()
            except SAError:
                self.needs_rollback = True
            raise

    def _rollback(self, unit: Unit) -> None:
        savepoint = unit.savepoint
        assert savepoint is not None
        try:
            savepoint.rollback()
        except SAError as error:
            log.warning("rolling back to a savepoint failed (%s); marking the unit", error)
            self.needs_rollback = True

    # -- session.commit()/rollback() inside manual units -------------------

    def commit_and_continue(self, unit: Unit, session: Session | None) -> None:
        """Commit ``unit``'s transaction and begin the next one for the same unit."""
        txn = self.manager.current
        if session is not None:
            join_transaction(session)
        try:
            self.commit(txn)
        finally:
            unit.txn = self.manager.begin_new()

    def abort_and_continue(self, unit: Unit) -> None:
        txn = self.manager.current
        if txn is not None:
            txn.abort()
        unit.txn = self.manager.begin_new()

    # -- the rollback flag -------------------------------------------------

    def innermost(self) -> Unit | None:
        return self.units[-1] if self.units else None

    def get_rollback(self) -> bool:
        self._require_unit("get_rollback()")
        return self.needs_rollback

    def set_rollback(self, rollback: bool) -> None:
        self._require_unit("set_rollback()")
        self.needs_rollback = rollback
        if not rollback:
            self.rollback_exc = None

    def _require_unit(self, what: str) -> None:
        if not self.in_unit_of_work():
            raise NoUnitOfWork(
                f"{what} only works inside a unit of work (a request, db_transaction(), "
                "'with transaction.manager:')"
            )


def _can_keep(exc: BaseException) -> bool:
    """Can a failed nested block's changes be kept (``auto_rollback=False``)?"""
    return not isinstance(exc, PendingRollbackError | DBAPIError)


@contextmanager
def pushed(nesting: Nesting, unit: Unit) -> Iterator[Unit]:
    """``nesting.push(unit)`` for the ``with`` block, ``pop`` at the end."""
    nesting.push(unit)
    try:
        yield unit
    finally:
        if unit in nesting.units:
            nesting.pop(unit)
