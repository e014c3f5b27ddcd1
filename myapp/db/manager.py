"""The thread's transaction manager: explicit mode, aware of myapp's units of work.

Every part of myapp (requests through pyramid_tm's ``tm.manager_hook``,
scripts' ``with transaction.manager:``, business units of work, the test
toolkit) uses the thread-local ``transaction.manager``. :func:`get_tm`
switches it to explicit mode and gives it, once per thread, a
:class:`UnitManager` as its per-thread manager (the ``manager`` attribute
that ``transaction`` documents for advanced applications). Compared with
``transaction.TransactionManager`` it:

* owns the thread's :class:`~myapp.db.nesting.Nesting`, the stack of active
  units of work and the one rule for nesting them;
* refuses ``commit()`` and ``abort()`` while a unit of work block
  (``db_transaction()``, ``savepoint()``, ``db_read_only()``...) is active:
  ``transaction.commit()`` there would commit half of the block, and
  ``transaction.abort()`` would silently throw away its earlier work. The
  units end the transaction themselves when they exit;
* turns the commit of a transaction marked with ``set_rollback(True)`` into
  an abort (a request, or a ``with transaction.manager:`` block);
* runs the ``on_commit`` hooks (:mod:`myapp.db.hooks`) *after* the commit has
  returned and the manager has forgotten the transaction, so a hook may open
  its own unit of work.

Explicit mode makes ``begin()`` inside an active transaction raise
``AlreadyInTransaction`` (instead of silently aborting it) and ``get()``
outside one raise ``NoTransaction`` (instead of silently beginning one).
"""

from __future__ import annotations

from typing import Any

import transaction
from transaction import TransactionManager
from transaction.interfaces import ITransaction

from . import compat
from .errors import DatabaseError, TransactionManaged
from .hooks import commit_transaction
from .nesting import Nesting


class UnitManager(TransactionManager):
    """A ``TransactionManager`` (explicit mode) that knows the units of work on its thread."""

    def __init__(self) -> None:
        super().__init__(explicit=True)
        self.nesting = Nesting(self)

    @property
    def current(self) -> ITransaction | None:
        """The active transaction, or None (never begins one, never raises)."""
        return compat.active_transaction(self)

    def begin(self) -> ITransaction:
        """Begin a transaction; inside a scope's implicit one, adopt it (its work commits too).

        So ``with transaction.manager:`` in a script's ``Database.scope()``
        commits what the scope did before it, as ``db_transaction()`` does.
        Anything else already in progress: ``AlreadyInTransaction``.
        """
        return self.nesting.begin_or_adopt()

    def begin_new(self) -> ITransaction:
        """Begin a new transaction (``AlreadyInTransaction`` if one is in progress)."""
        txn = super().begin()
        self.nesting.transaction_began()
        return txn

    def commit(self) -> None:
        """Commit the current transaction (refused inside a unit of work block)."""
        self.nesting.refuse_inside_blocks("commit")
        txn = self.get()
        if self.nesting.needs_rollback:  # set_rollback(True) outside any block
            self.nesting.needs_rollback = False
            txn.abort()
            return
        commit_transaction(txn)

    def abort(self) -> None:
        """Abort the current transaction (refused inside a unit of work block)."""
        self.nesting.refuse_inside_blocks("abort")
        self.get().abort()

    def abort_all(self) -> None:
        """Abort whatever is open on this thread, units of work included (cleanup paths)."""
        self.nesting.discard()
        txn = self.current
        if txn is not None:
            txn.abort()


def get_tm() -> transaction.ThreadTransactionManager:
    """The thread-local transaction manager, in explicit mode, with a :class:`UnitManager`.

    Installing the :class:`UnitManager` needs this thread to have no
    transaction in progress on ``transaction``'s own manager; call
    :func:`get_tm` (or build a ``Database``) before beginning one with the bare
    ``transaction`` API.
    """
    tm = transaction.manager
    manager = tm.manager
    if type(manager) is not UnitManager:
        _install(tm, manager)
    return tm


def _install(tm: transaction.ThreadTransactionManager, old: TransactionManager) -> None:
    if compat.active_transaction(old) is not None:
        raise DatabaseError(
            "a transaction was begun on this thread with the bare 'transaction' API before "
            "myapp's transaction manager was set up: call myapp.db.get_tm() (or create the "
            "Database) before beginning it"
        )
    new = UnitManager()
    compat.carry_synchronizers(old, new)
    tm.manager = new


def unit_manager(tm: Any = None) -> UnitManager:
    """The :class:`UnitManager` behind ``tm`` (default: this thread's)."""
    tm = tm if tm is not None else get_tm()
    manager = getattr(tm, "manager", tm)
    if type(manager) is not UnitManager:
        raise TransactionManaged(
            f"{tm!r} is not myapp's transaction manager: units of work run on the "
            "thread-local transaction.manager (myapp.db.get_tm())"
        )
    return manager


def current_transaction(tm: Any = None) -> ITransaction | None:
    """The active transaction of ``tm`` (default: this thread's), or None."""
    tm = tm if tm is not None else get_tm()
    manager = getattr(tm, "manager", tm)
    if isinstance(manager, TransactionManager):
        return compat.active_transaction(manager)
    return None
