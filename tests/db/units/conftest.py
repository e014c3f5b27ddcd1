"""Fixtures and helpers for the units-of-work tests (issue 3).

Most tests use the plugin's ``db`` fixture: the code under test commits, and
its commits are savepoint releases on the test's connection. Tests that must
see *real* commits (from another connection, COMMIT counts, a failed COMMIT,
a serialization failure) use ``real``: a new engine and
:class:`~myapp.db.Database` on the run's database. Their rows carry a
per-test token and are deleted at the end; the fixture fails the test if it
left a unit of work open or a connection checked out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from myapp.db import Database, current_transaction, get_tm
from myapp.db.scope import active_scope
from myapp.models import Event, Item
from myapp.testing import CommittedRows
from myapp.testing.plugin import threaded_wsgi

WRITE = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(insert|update|delete|with)\b", re.IGNORECASE | re.DOTALL)


class Real(CommittedRows):
    """A real engine and Database on the run's database; rows named with ``token``."""

    token_prefix = "u"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.delete_after(Item, self.tagged(Item.name))
        self.delete_after(Event, self.tagged(Event.id))

    def id(self, suffix: Any = "") -> str:
        """An event id / item name carrying this test's token (cleaned up at the end)."""
        return f"{self.token}_{suffix}"

    def event_ids(self) -> set[str]:
        """This test's committed event ids, read on a fresh connection."""
        with self.engine.connect() as conn:
            rows = conn.scalars(select(Event.id).where(Event.id.like(self.token + "%")))
            return set(rows)

    def item_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(
                select(func.count()).select_from(Item).where(Item.name.like(self.token + "%"))
            )


@pytest.fixture
def real(dbengine: Engine) -> Iterator[Real]:
    """Real commits on the run's database (no ``db`` fixture in the same test)."""
    tm = get_tm()
    if current_transaction(tm) is not None:
        tm.abort()
    assert active_scope() is None, "the 'real' fixture cannot be combined with 'db'"
    stack = Real(dbengine.url.render_as_string(hide_password=False))
    problems = []
    try:
        yield stack
        if current_transaction(tm) is not None:
            problems.append("a unit of work was left open")
        if active_scope() is not None:
            problems.append("a database scope was left active")
        for engine in stack.engines:
            if engine.pool.checkedout():
                problems.append(f"{engine.pool.checkedout()} connection(s) left checked out")
    finally:
        if current_transaction(tm) is not None:
            tm.abort()
        try:
            stack.cleanup()
        finally:
            for engine in stack.engines:
                engine.dispose()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@contextmanager
def capture_sql(target: Any) -> Iterator[list[str]]:
    """Every SQL statement sent to the database through ``target`` (engine or connection)."""
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(target, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(target, "before_cursor_execute", before)


def writes(statements: list[str]) -> list[str]:
    """The INSERT/UPDATE/DELETE (or WITH ...) statements among ``statements``."""
    return [s for s in statements if WRITE.match(s)]


def event_ids(session: Any) -> set[str]:
    """Event ids the session's transaction sees (a fresh query)."""
    return set(session.scalars(select(Event.id)))


def make_app(
    database: Database | None,
    views: dict[str, Callable[[Any], Any]],
    request_thread: Any,
    **settings: Any,
) -> webtest.TestApp:
    """A minimal Pyramid app on ``config.include("myapp.db.pyramid")`` with ``views``.

    No exception views: an exception raised by a view reaches the test (after
    pyramid_tm aborted the request's transaction). Requests run on the
    plugin's ``request_thread`` worker, as in a server thread.
    """
    settings = {"retry.attempts": "1", **settings}
    if database is not None:
        settings["myapp.database"] = database
    with Configurator(settings=settings) as config:
        config.include("myapp.db.pyramid")
        for path, view in views.items():
            name = "u_" + path.strip("/").replace("/", "_")
            config.add_route(name, path)
            config.add_view(view, route_name=name, renderer="json")
    wsgi = config.make_wsgi_app()

    app = webtest.TestApp(
        threaded_wsgi(wsgi, request_thread), extra_environ={"HTTP_HOST": "example.com"}
    )
    app.registry = config.registry
    return app
