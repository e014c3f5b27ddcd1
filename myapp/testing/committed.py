"""Real commits in tests: an engine of the test's own on the run's database, cleaned up after.

The ``db`` fixture turns commits into savepoint releases on the test's one
connection: nothing it writes is visible to another connection. Tests of
real concurrency (dispatchers on several connections, a holder taking
locks), of COMMIT itself (counts, failures, serialization errors) or of
subprocesses need rows that are really committed. :class:`CommittedRows`
gives them a new engine and :class:`~myapp.db.Database` on the run's
database; what the test commits is tagged with a per-test token
(:meth:`CommittedRows.tag`) or registered (:meth:`CommittedRows.delete_after`)
and deleted when the test ends, so the shared tables stay as they were::

    def test_seen_by_another_connection(committed_rows):
        rows = committed_rows
        rows.delete_after(Note, rows.tagged(Note.title))
        with rows.database.scope(), db_transaction() as session:
            session.add(Note(title=rows.tag("first")))
        with rows.engine.connect() as conn:    # a new connection sees it
            ...

Its engines are under the leak guard: a connection a test leaves checked
out fails the test, naming where it was checked out.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import delete
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement

from myapp.db import Database, create_engine_for, current_transaction, get_tm

from .tracker import ConnectionTracker, LeakError, mark, track

#: a WHERE clause, or a function returning one when the rows are deleted
Where = ColumnElement[bool] | Callable[[], ColumnElement[bool]]


class CommittedRows:
    """A real engine and :class:`Database` on ``url``; rows tagged and deleted afterwards.

    The transactional contract: everything done through :attr:`engine` or
    :attr:`database` commits for real (visible to every connection, and to
    other processes); nothing is rolled back for the test. :meth:`cleanup`
    deletes what was registered with :meth:`delete_after` (in the reverse
    order: register parents first) in one transaction, then disposes the
    engines. Use :meth:`on` (a context manager) or the ``committed_rows``
    fixture rather than calling :meth:`cleanup` yourself.
    """

    #: the first character of the token (tells which suite wrote a leftover row)
    token_prefix = "c"

    def __init__(self, url: str, **engine_options: Any) -> None:
        engine_options.setdefault("pool_size", 5)
        engine_options.setdefault("max_overflow", 10)
        self.url = url
        self.engine: Engine = track(create_engine_for(url, **engine_options))
        self.database = Database(self.engine)
        self.token = self.token_prefix + secrets.token_hex(4)
        self.engines: list[Engine] = [self.engine]
        self._deletions: list[tuple[Any, Where]] = []

    @classmethod
    @contextmanager
    def on(cls, engine: Engine | str, **kwargs: Any) -> Iterator[Self]:
        """An instance on ``engine``'s database (or URL); afterwards checked and cleaned up.

        Raises :class:`~myapp.testing.tracker.LeakError` at the end of the
        block if a connection of its engines is still checked out or the
        thread's ``transaction.manager`` has a unit of work open (the rows
        are deleted all the same).
        """
        url = engine if isinstance(engine, str) else engine.url.render_as_string(False)
        before = mark()
        rows = cls(url, **kwargs)
        try:
            yield rows
            problems = rows.problems(since=before)
            if problems:
                raise LeakError("; ".join(problems))
        finally:
            manager = get_tm().manager
            if manager.current is not None:
                manager.abort_all()
            rows.cleanup()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def tag(self, suffix: Any = "") -> str:
        """A value carrying this test's token (``token + suffix``): name rows with it."""
        return f"{self.token}{suffix}"

    def tagged(self, column: Any) -> ColumnElement[bool]:
        """``column LIKE '<token>%'``: the rows this test named with :meth:`tag`."""
        return column.like(self.token + "%")  # the token is hex: nothing to escape

    def delete_after(self, table: Any, where: Where) -> None:
        """Delete ``table``'s rows matching ``where`` at :meth:`cleanup` (latest first)."""
        self._deletions.append((getattr(table, "__table__", table), where))

    def new_engine(self, **options: Any) -> Engine:
        """Another engine on the same database (tracked, disposed at :meth:`cleanup`)."""
        engine = track(create_engine_for(self.url, **options))
        self.engines.append(engine)
        return engine

    def problems(self, since: int = 0) -> list[str]:
        """What was left open: an open unit of work, connections of these engines checked out.

        Connections checked out since the mark ``since`` are reclaimed
        (invalidated and returned to their pool) and reported with the place
        they were checked out.
        """
        found = []
        if current_transaction(get_tm()) is not None:
            found.append("left transaction.manager with an open unit of work (it was aborted)")
        leaked = [
            where
            for engine in self.engines
            for where in ConnectionTracker.for_engine(engine).reclaim_since(since)
        ]
        if leaked:
            found.append(
                f"left {len(leaked)} connection(s) of its committed_rows engines checked out "
                f"(checked out at {'; '.join(leaked)}; invalidated and returned to the pool)"
            )
        return found

    def delete_rows(self, conn: Connection) -> None:
        """Run the registered deletions on ``conn`` (subclasses add theirs here)."""
        for table, where in reversed(self._deletions):
            conn.execute(delete(table).where(where() if callable(where) else where))

    def cleanup(self) -> None:
        """Delete the test's rows (one transaction), then dispose every engine."""
        try:
            with self.engine.begin() as conn:
                self.delete_rows(conn)
        finally:
            for engine in self.engines:
                engine.dispose()
