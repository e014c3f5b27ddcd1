"""Per-test isolation: one connection, an outer transaction, commits as savepoint releases.

:func:`isolated_db` is the ``db`` fixture's engine room (usable on its own in
a ``with`` block): the application's session factory is bound to one
connection inside an outer transaction with
``join_transaction_mode="create_savepoint"``, so commits inside the block are
savepoint releases and everything is rolled back at its end. The doomed mode
runs the block in one doomed transaction instead. At exit, :class:`LeakError`
names what the block left behind (already cleaned up).
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.engine import Connection, Engine

from myapp.db import Database, current_transaction, get_tm
from myapp.db.nesting import is_implicit
from myapp.db.scope import Scope

from .request_thread import RequestThread
from .tracker import ConnectionTracker, LeakError


class TestDB:
    """What the ``db`` fixture yields: ``db.session`` as in the seeds, and friends."""

    __test__ = False

    def __init__(self, database: Database, connection: Connection, scope: Scope, doomed: bool):
        self.database = database
        self.connection = connection
        self.scope = scope
        self.doomed = doomed

    @property
    def session(self) -> Any:
        """The test's session (the current scope's): ``commit()`` releases a savepoint."""
        return self.scope.session

    @property
    def engine(self) -> Engine:
        return self.database.engine

    @property
    def tm(self) -> Any:
        return get_tm()

    def commit(self) -> None:
        """Commit the test's pending work (a savepoint release underneath)."""
        self.session.commit()

    def rollback(self) -> None:
        """Discard the test's uncommitted work (back to the last savepoint)."""
        self.session.rollback()


def _schedule_factory_sequence_reset() -> None:
    # the factories restart their sequences before the test's first object (lazily: a
    # test that builds none pays nothing); a no-op until something imported them
    factories = sys.modules.get("myapp.testing.factories")
    if factories is not None:
        factories.schedule_sequence_reset()


_UNKNOWN: Any = object()


class _IsolatedDB(AbstractContextManager[TestDB]):
    """The context manager :func:`isolated_db` returns (one use)."""

    __slots__ = (
        "_activation",
        "_before",
        "_connection",
        "_doomed_txn",
        "_outer",
        "_saved",
        "_scope",
        "_tm",
        "_tracker",
        "database",
        "doomed",
        "label",
        "request_thread",
    )

    def __init__(
        self, database: Database, doomed: bool, request_thread: RequestThread | None, label: str
    ) -> None:
        self.database = database
        self.doomed = doomed
        self.request_thread = request_thread
        self.label = label
        self._outer: Any = None
        self._scope: Scope | None = None
        self._activation: Any = None
        self._doomed_txn: Any = None

    def __enter__(self) -> TestDB:
        database = self.database
        engine = database.engine
        tracker = self._tracker = ConnectionTracker.for_engine(engine)
        tm = self._tm = get_tm()
        if current_transaction(tm) is not None:
            tm.abort()
        _schedule_factory_sequence_reset()
        self._before = tracker.snapshot()
        connection = self._connection = tracker.connect_own(engine)
        kw = database.session_factory.kw
        self._saved = (kw.get("bind"), kw.get("join_transaction_mode"))
        try:
            self._outer = connection.begin()
            if connection.dialect.name in ("mysql", "mariadb"):
                # MySQL begins a transaction at its first statement: begin it now, or a
                # SET TRANSACTION (a read-only request's) would apply to the test's whole
                # outer transaction instead of being refused inside it
                connection.exec_driver_sql("START TRANSACTION")
            # doomed: the session works in the outer transaction itself (no savepoint)
            kw["bind"] = connection
            kw["join_transaction_mode"] = "rollback_only" if self.doomed else "create_savepoint"
            scope = self._scope = Scope(
                database.session_factory, database=database, autobegin=not self.doomed, kind="test"
            )
            if self.doomed:
                doomed_txn = self._doomed_txn = tm.begin()
                doomed_txn.doom()
            activation = scope.activate()
            activation.__enter__()
            self._activation = activation
        except BaseException:
            self._teardown(_UNKNOWN)
            raise
        return TestDB(database, connection, scope, self.doomed)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        problems: list[str] = []
        txn = _UNKNOWN
        try:
            if exc_type is None:
                tm = self._tm
                txn = current_transaction(tm)
                if txn is not None and not is_implicit(txn) and txn is not self._doomed_txn:
                    problems.append(
                        "left transaction.manager with an open unit of work (begun explicitly "
                        "and never committed or aborted; it was aborted)"
                    )
                request_thread = self.request_thread
                if request_thread is not None and request_thread.used:
                    request_thread.used = False
                    if request_thread.open_transaction() is not None:
                        request_thread.abort()
                        problems.append("a request left its transaction open (it was aborted)")
        finally:
            leaked = self._teardown(txn)
        if leaked:
            problems.append(
                f"left {len(leaked)} connection(s) checked out (checked out at "
                + "; ".join(leaked)
                + "; invalidated and returned to the pool)"
            )
        if problems and exc_type is None:
            raise LeakError(f"leak guard: {self.label} " + "; ".join(problems))

    def _teardown(self, txn: Any) -> list[str]:
        """Abort, roll back, close, restore the factory; return the leaked connections."""
        try:
            try:
                if self._activation is not None:
                    self._activation.__exit__(None, None, None)
                    self._activation = None
            finally:
                try:
                    # the test thread's transaction (looked up once, by __exit__'s check if it ran:
                    # nothing between the check and here touches this thread's manager)
                    if txn is _UNKNOWN:
                        txn = current_transaction(self._tm)
                    if txn is not None:
                        self._tm.abort()
                finally:
                    if self._scope is not None:
                        self._scope.close()
                    outer = self._outer
                    if outer is not None and outer.is_active:
                        outer.rollback()
        finally:
            self._connection.close()
            bind, mode = self._saved
            self.database.session_factory.configure(
                bind=bind, join_transaction_mode=mode or "conditional_savepoint"
            )
            leaked = self._tracker.reclaim_since(self._before)
        return leaked


def isolated_db(
    database: Database,
    *,
    doomed: bool = False,
    request_thread: RequestThread | None = None,
    label: str = "the test",
) -> AbstractContextManager[TestDB]:
    """One isolated database for the ``with`` block (the ``db`` fixture's engine room).

    Savepoint mode (default): the session factory is bound to one connection
    inside an outer transaction with ``join_transaction_mode="create_savepoint"``;
    the scope autobegins implicit units of work. Doomed mode: the session
    joins the outer transaction directly, inside one doomed transaction of
    the manager. At exit everything is rolled back; if the block ended
    normally, :class:`LeakError` names what it left behind (already cleaned up).
    The factories' sequences restart before the block's first object.
    """
    return _IsolatedDB(database, doomed, request_thread, label)
