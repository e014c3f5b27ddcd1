"""The data manager that joins a SQLAlchemy session to a ``transaction``.

zope.sqlalchemy's one-phase ``SessionDataManager``, changed where myapp needs
it to behave differently:

* Sessions are kept across units of work (``keep_session=True``), but the
  data manager really ends the SQLAlchemy transaction: it rolls back on abort
  (zope.sqlalchemy only expires objects there and leaves the connection
  checked out: its issue #14) and commits every successful unit of work,
  read-only ones included (zope.sqlalchemy rolls back a session that wrote
  nothing it saw; writes made with raw DBAPI calls would be lost). Closing
  the session is the job of the scope that opened it.
* Its savepoints can be RELEASEd, and RELEASE themselves after a rollback
  (SQLAlchemy leaves a rolled-back savepoint open on the server).
* Savepoints work on SQLite engines that carry the workaround of
  :mod:`myapp.db.sqlite`.
* ``should_retry`` (the ``transaction`` package's retry protocol, used by
  ``TransactionManager.attempts()``/``run()`` and ``Transaction.isRetryableError``)
  answers with :func:`myapp.db.retry.is_retryable`.
* When sessions of two or more databases wrote in one transaction, the
  coordinator of :mod:`myapp.db.twophase` gives each of them a gid: the data
  manager then PREPAREs in ``tpc_vote``, and COMMITs PREPARED in
  ``tpc_finish`` (or ROLLs BACK PREPARED in ``tpc_abort``), zope.sqlalchemy's
  two-phase protocol. Every other session commits in one phase, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import transaction
from sqlalchemy.exc import ResourceClosedError
from sqlalchemy.orm import Session
from zope.sqlalchemy import datamanager as zdm

from . import compat, twophase
from .retry import is_retryable
from .sqlite import savepoints_supported

log = logging.getLogger("myapp.db.tx")

#: ``Transaction.extension`` key: the first session joined to the transaction.
SESSION = "myapp.session"
#: ``Transaction.extension`` key: the SQL savepoints taken in the transaction, oldest first.
SAVEPOINTS = "myapp.savepoints"


def sql_savepoints(txn: Any) -> list[SessionSavepoint]:
    """The session savepoints taken in ``txn`` and not yet released or rolled back."""
    return txn.extension.setdefault(SAVEPOINTS, [])


class SessionSavepoint(zdm.SessionSavepoint):
    """A SQL SAVEPOINT of one session: can be released, and releases itself after a rollback."""

    def __init__(self, session: Session, created: list[SessionSavepoint]) -> None:
        super().__init__(session)  # session.begin_nested(): SAVEPOINT sa_savepoint_N
        connection = session.connection()
        self.connection = connection
        self.name = compat.savepoint_name(connection.get_nested_transaction())
        self.done = False
        created.append(self)

    def release(self) -> None:
        """RELEASE the savepoint now, flushing what is pending (``transaction`` cannot)."""
        if not self.done and self.transaction.is_active:
            self.done = True
            self.transaction.commit()

    def _end_in_session(self) -> None:
        """End the session's savepoint transaction (a no-op if SQLAlchemy already closed it)."""
        try:
            self.transaction.rollback()
        except ResourceClosedError:  # a failed flush or RELEASE inside it already ended it
            pass

    def rollback(self) -> None:
        """ROLLBACK TO the savepoint, then RELEASE it (it stays open on the server otherwise)."""
        self._end_in_session()
        if not self.done:
            self.done = True
            if not self.connection.invalidated:
                self.connection.dialect.do_release_savepoint(self.connection, self.name)

    def rollback_by_name(self) -> None:
        """ROLLBACK TO and RELEASE the savepoint by its name (after SQLAlchemy gave up on it)."""
        self._end_in_session()  # the session's bookkeeping (no SQL once inactive)
        dialect = self.connection.dialect
        dialect.do_rollback_to_savepoint(self.connection, self.name)
        dialect.do_release_savepoint(self.connection, self.name)

    def forget(self) -> None:
        """Its enclosing ``transaction`` savepoint was rolled back (which rolled this one back)."""
        if not self.done:
            self.done = True
            if self.transaction.is_active:  # not among the resources rolled back
                self._end_in_session()


class SessionDataManager(zdm.SessionDataManager):
    """zope.sqlalchemy's one-phase data manager, ending the SQL transaction itself."""

    def __init__(self, session: Session, status: str, transaction_manager: Any) -> None:
        super().__init__(session, status, transaction_manager, keep_session=True)
        self.txn = transaction_manager.get()
        self.txn.extension.setdefault(SESSION, session)
        self.commit_started = False
        self.gid: str | None = None  # set by the two-phase coordinator, if any
        self.prepared_raw: Any = None  # the psycopg connection once prepared
        self.coordinator: Any = None  # the coordinator it prepared for

    def abort(self, trans: Any) -> None:
        if self.tx is not None:
            self._end("aborted")

    def commit(self, trans: Any) -> None:
        # zope.sqlalchemy ends a session that wrote nothing here ("no work")
        # without committing it. myapp commits every successful unit of work
        # instead (writes it could not see, such as raw DBAPI calls, are not
        # silently lost; expire_on_commit is honoured; the cost is the same),
        # and does so in tpc_vote like the changed sessions: after every data
        # manager has had its say, so a later one's failure still rolls it back.
        self.commit_started = True

    def tpc_vote(self, trans: Any) -> None:
        if self.tx is None:
            return
        coordinator = twophase.coordinator_of(trans)
        if coordinator is not None and coordinator.gid_for(self) is not None:
            twophase.prepare(self, self.session.connection())  # PREPARE TRANSACTION 'gid'
            coordinator.prepared_now(self)
            self.coordinator = coordinator
            self.state = "prepared"
            return
        self.tx.commit()
        self._end("committed")

    def tpc_finish(self, trans: Any) -> None:
        if self.state == "prepared":
            self.coordinator.finish(self)  # COMMIT PREPARED 'gid' (recovery's, if it fails)
            self._end_prepared("committed")

    def tpc_abort(self, trans: Any) -> None:
        if self.state == "prepared":
            self.coordinator.cancel(self)  # ROLLBACK PREPARED, unless the decision may be commit
            self._end_prepared("aborted")
        else:
            super().tpc_abort(trans)

    def _end_prepared(self, final_state: str) -> None:
        """End the session's transaction after the prepared one ended (no SQL: it is idle)."""
        if final_state == "committed":
            try:
                self.tx.commit()  # expire_on_commit and the after_commit events, as before
            except Exception:  # the connection broke after the decision: recovery commits
                log.exception("ending the session after COMMIT PREPARED %s", self.gid)
                try:
                    self._end("aborted")
                except Exception:
                    log.exception("rolling back the session of %s", self.gid)
                return
            self._end("committed")
        else:
            self._end(final_state)

    def _end(self, final_state: str) -> None:
        session = self.session
        compat.forget_session(session)
        self.tx = self.session = None
        self.state = final_state
        if final_state != "committed":
            # Abort: really roll back and release the connection (zope.sqlalchemy#14).
            Session.rollback(session)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s",
                "COMMIT" if final_state == "committed" else "ROLLBACK",
                getattr(self.txn, "description", "") or "",
            )

    @property
    def savepoint(self) -> Any:
        bind = self.session.get_bind()
        engine = getattr(bind, "engine", bind)
        if not savepoints_supported(engine):
            raise AttributeError("savepoint")
        return self._session_savepoint

    def _session_savepoint(self) -> SessionSavepoint:
        return SessionSavepoint(self.session, sql_savepoints(self.txn))

    def should_retry(self, error: BaseException) -> bool:
        """``transaction``'s retry protocol: may a new attempt of the transaction succeed?"""
        return is_retryable(error, commit_started=self.commit_started)


def join_transaction(session: Session, status: str = zdm.STATUS_ACTIVE) -> None:
    """Join ``session`` to the thread's current transaction (idempotent).

    The caller makes sure a transaction is active (the public
    ``myapp.db.join_transaction`` says :class:`NoUnitOfWork` otherwise).
    """
    if compat.session_status(session) is None:
        if session.twophase:
            raise NotImplementedError(
                "SQLAlchemy twophase=True sessions PREPARE every transaction, even one that "
                "touched one database; myapp decides at commit time instead: configure the "
                "other databases by name (Database.add_database(), myapp.databases) and units "
                "of work that write to two of them commit in two phases "
                "(docs/multiple-databases.md)"
            )
        dm = SessionDataManager(session, status, transaction.manager)
        twophase.enlist(dm, dm.txn)


def mark_changed(session: Session) -> None:
    """Record that ``session`` wrote to the database, so the transaction commits it."""
    join_transaction(session, zdm.STATUS_CHANGED)
    compat.set_session_status(session, zdm.STATUS_CHANGED)
