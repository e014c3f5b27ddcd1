"""Helpers for the request/transaction stack tests (fixtures in conftest.py).

Two ways to run a test application:

* on the test's connection (the ``db`` fixture rebinds the shared
  ``database``'s session factory to it): commits are savepoint releases and
  vanish after the test;
* on a real engine (:class:`RealStack`, ``real`` fixture): a new engine and
  :class:`~myapp.db.Database` on the run's database, so commits are real and
  visible to other connections, and ``engine.pool.checkedout()`` counts only
  this test's connections. Rows are tagged with a per-test token and deleted
  at the end (the tables are shared by the run).

Either way requests run on the plugin's ``request_thread`` worker, with their
own thread-local transaction manager, as in a real server thread.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import webtest
from pyramid.config import Configurator
from sqlalchemy import func, insert, or_, select

from myapp.db import Database, current_transaction, get_tm
from myapp.models import Item
from myapp.testing import CommittedRows, apps
from myapp.testing.plugin import threaded_wsgi

ITEMS = Item.__table__


def build_app(
    database: Database, configure: Callable[[Configurator], None] | None = None, **settings: Any
) -> Any:
    """:func:`myapp.testing.apps.build_app` with this suite's default settings."""
    defaults: dict[str, Any] = {"myapp.expose_errors": "true"}
    return apps.build_app(database, configure, **{**defaults, **settings})


add_view = apps.add_view


def threaded(app: Any, request_thread: Any) -> webtest.TestApp:
    """A WebTest app whose requests run on the ``request_thread`` worker (like the plugin's)."""
    return webtest.TestApp(
        threaded_wsgi(app, request_thread), extra_environ={"HTTP_HOST": "example.com"}
    )


class RealStack(CommittedRows):
    """A real engine and Database on the run's database; rows tagged with ``token``."""

    token_prefix = "t"

    def __init__(self, url: str, request_thread: Any) -> None:
        super().__init__(url)
        self.request_thread = request_thread
        self.ids: set[int] = set()
        self.delete_after(ITEMS, lambda: or_(self.tagged(ITEMS.c.name), ITEMS.c.id.in_(self.ids)))

    def name(self, suffix: str = "") -> str:
        """A row name carrying this test's token (cleaned up at the end)."""
        return self.tag(suffix)

    def app(
        self, configure: Callable[[Configurator], None] | None = None, **settings: Any
    ) -> webtest.TestApp:
        return threaded(build_app(self.database, configure, **settings), self.request_thread)

    def names(self) -> list[str]:
        """Committed item names of this test, read on a fresh connection."""
        with self.engine.connect() as conn:
            rows = conn.scalars(
                select(ITEMS.c.name).where(ITEMS.c.name.like(self.token + "%")).order_by("name")
            )
            return list(rows)

    def count_ids(self, *ids: int) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(ITEMS).where(ITEMS.c.id.in_(ids)))

    def insert(self, suffix: str = "") -> int:
        """Commit an item named ``token + suffix`` on a separate connection; return its id."""
        with self.engine.begin() as conn:
            statement = insert(ITEMS).values(name=self.name(suffix)).returning(ITEMS.c.id)
            item_id = conn.scalar(statement)
        self.ids.add(item_id)
        return item_id

    def open_transaction(self) -> Any:
        return self.request_thread.run(lambda: current_transaction(get_tm()))


class ConnectionStack:
    """The same interface on the test's connection (the ``db`` fixture): nothing survives."""

    def __init__(self, db: Any, database: Database, request_thread: Any) -> None:
        self.db = db
        self.database = database
        self.engine = database.engine
        self.request_thread = request_thread
        self.token = "t" + secrets.token_hex(4)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def name(self, suffix: str = "") -> str:
        return f"{self.token}{suffix}"

    def app(
        self, configure: Callable[[Configurator], None] | None = None, **settings: Any
    ) -> webtest.TestApp:
        return threaded(build_app(self.database, configure, **settings), self.request_thread)

    def names(self) -> list[str]:
        """Item names of this test as the test's own session sees them (same connection)."""
        rows = self.db.session.scalars(
            select(Item.name).where(Item.name.like(self.token + "%")).order_by(Item.name)
        )
        return list(rows)

    def insert(self, suffix: str = "") -> int:
        item = Item(name=self.name(suffix))
        self.db.session.add(item)
        self.db.session.commit()
        return item.id
