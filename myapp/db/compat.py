"""The one place where myapp reads its libraries' private names.

Each function here stands in for a public API that the library does not
offer. Every one is pinned by a test in ``tests/db/units/test_compat.py`` that
checks the library behaviour it relies on, so that an upgrade of
``transaction``, zope.sqlalchemy or SQLAlchemy that changes it fails a named
test instead of a user's request. Nothing outside this module touches a
private name of those libraries (``grep -rn "\\._[a-z]" myapp/db`` shows only
this file and myapp's own names).

What is here, and why no public API will do:

* :data:`Status` -- the transaction states (``transaction._transaction.Status``):
  the package documents ``Transaction.status`` but exports no constants.
* :func:`active_transaction` -- a ``TransactionManager``'s current
  transaction *without* beginning one or raising: ``get()`` raises
  ``NoTransaction`` in explicit mode, and the lookup is made several times per
  unit of work.
* :func:`carry_synchronizers` -- the synchronizers of a manager, carried
  over when :func:`myapp.db.get_tm` gives the thread its own manager
  (``registeredSynchs()`` answers only whether there are any).
* :func:`session_status`, :func:`set_session_status`, :func:`forget_session`
  -- zope.sqlalchemy's per-session join state (``datamanager._SESSION_STATE``):
  its public ``join_transaction``/``mark_changed`` always build its own data
  manager class, and myapp's data manager (:mod:`myapp.db.datamanager`) fixes
  what that class leaves open (its issues #14 and #88).
* :func:`savepoint_name` -- the SQL name of a SQLAlchemy savepoint
  (``NestedTransaction._savepoint``), to RELEASE it after a ROLLBACK TO
  SAVEPOINT (SQLAlchemy leaves a rolled-back savepoint open on the server).
* :func:`pending_changes` -- ``len(new) + len(dirty) + len(deleted)`` of a
  session without copying its bookkeeping (the public properties build a set
  at each call: a batch of N rows cost O(N^2)).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import NestedTransaction
from sqlalchemy.orm import Session
from transaction import TransactionManager
from transaction._transaction import Status
from zope.sqlalchemy import datamanager as _zdm

__all__ = [
    "Status",
    "active_transaction",
    "carry_synchronizers",
    "forget_session",
    "pending_changes",
    "savepoint_name",
    "session_status",
    "set_session_status",
]


def active_transaction(manager: TransactionManager) -> Any:
    """``manager``'s current transaction, or None (what explicit ``get()`` returns, no raise)."""
    return manager._txn


def carry_synchronizers(old: TransactionManager, new: TransactionManager) -> None:
    """Give ``new`` the synchronizers registered on ``old`` (there is no public list of them)."""
    new._synchs = old._synchs


def session_status(session: Session) -> str | None:
    """zope.sqlalchemy's join state of ``session`` (``STATUS_ACTIVE``/``CHANGED``...), or None."""
    return _zdm._SESSION_STATE.get(session)


def set_session_status(session: Session, status: str) -> None:
    """Record ``session`` as joined with ``status`` (what ``mark_changed`` sets)."""
    _zdm._SESSION_STATE[session] = status


def forget_session(session: Session) -> None:
    """Forget ``session``'s join state (its data manager has finished)."""
    _zdm._SESSION_STATE.pop(session, None)


def savepoint_name(nested: NestedTransaction) -> str:
    """The SQL name SQLAlchemy gave the savepoint of ``nested`` (``sa_savepoint_N``)."""
    return nested._savepoint


def pending_changes(session: Session) -> int:
    """``len(session.new) + len(session.dirty) + len(session.deleted)``, without copying.

    Reads what those properties read (``Session._new``, ``Session._deleted``
    and the identity map's modified states, of which ``dirty`` is the part not
    deleted).
    """
    new, deleted = session._new, session._deleted
    modified = session.identity_map._modified
    dirty = sum(1 for state in modified if state not in deleted) if deleted else len(modified)
    return len(new) + len(deleted) + dirty
