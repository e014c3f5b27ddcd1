# Parts of this directory are ported from Django's test suite
# (tests/transactions and tests/transaction_hooks of the Django 5.2 sdist).
#
# Copyright (c) Django Software Foundation and individual contributors.
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without modification,
# are permitted provided that the following conditions are met:
#
#     1. Redistributions of source code must retain the above copyright notice,
#        this list of conditions and the following disclaimer.
#
#     2. Redistributions in binary form must reproduce the above copyright
#        notice, this list of conditions and the following disclaimer in the
#        documentation and/or other materials provided with the distribution.
#
#     3. Neither the name of Django nor the names of its contributors may be used
#        to endorse or promote products derived from this software without
#        specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND
# ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED
# WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
# DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE FOR
# ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES
# (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES;
# LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON
# ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT
# (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
# SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""Fixtures for Django's transaction test suites ported to myapp (issue 11, item 3).

Django runs these suites in a ``TransactionTestCase``: real commits, tables
flushed between tests. Here each test gets the same: the models below live in
their own ``MetaData`` (not myapp's models, not its migrations); their tables
are created once per backend on the run's test database (the plugin's
``dbengine``) and emptied before and after every test. The code under test
runs in a :class:`myapp.db.Database` of its own on a real engine, inside one
``Database.scope()`` per test, so ``db_transaction()`` really commits and what
it committed is read back on a separate connection.

The ``ctx`` fixture is Django's test-case ``self``: ``ctx.create()`` is
``Reporter.objects.create()``, ``ctx.all()`` is ``Reporter.objects.all()``.
Its ``mode`` says where the test body runs:

* ``autocommit``: a bare scope, no unit of work (Django's default autocommit
  mode). A read outside any unit reads on a separate connection (what
  Django's autocommit read sees: the committed state); a write outside any
  unit is its own committed unit (as ``Model.save()`` in autocommit mode).
* ``inside``: inside ``with transaction.manager:`` of the thread's
  explicit-mode manager (``myapp.db.get_tm()``), as pyramid_tm and scripts
  run code: Django's ``AtomicInsideTransactionTests``. After the test the
  fixture commits that transaction and checks that what committed is what the
  session saw last.
* ``testcase``: inside the test toolkit's ``db`` fixture (Django's
  ``TestCase``): reads go through the test's session; nothing may reach the
  database for real.
* ``implicit``: inside a scope's *implicit* transaction (begun by a read of
  the scope's session, as in a script): the nearest myapp has to Django's
  autocommit-off mode (``AtomicWithoutAutocommitTests``). Reads outside any
  unit go through the session.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import transaction
from sqlalchemy import ForeignKey, Integer, MetaData, String, delete, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from transaction.interfaces import NoTransaction

from myapp.db import (
    Database,
    create_engine_for,
    current_session,
    db_transaction,
    get_tm,
    is_in_transaction,
    on_commit,
)

SAVEPOINT = re.compile(r"^\s*SAVEPOINT\s+(\S+)", re.IGNORECASE)


class PortBase(DeclarativeBase):
    """The ported tests' own declarative base: none of this reaches myapp's models."""

    metadata = MetaData()


class Reporter(PortBase):
    """Django's ``transactions.models.Reporter`` (ordering: first_name, last_name)."""

    __tablename__ = "ported_django_reporter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_name: Mapped[str] = mapped_column(String(30), default="")
    last_name: Mapped[str] = mapped_column(String(30), default="")
    email: Mapped[str] = mapped_column(String(254), default="")


class Thing(PortBase):
    """Django's ``transaction_hooks.models.Thing``."""

    __tablename__ = "ported_django_thing"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    num: Mapped[int] = mapped_column(Integer)


class Parent(PortBase):
    """A parent row for the deferred foreign key of the COMMIT-failure tests."""

    __tablename__ = "ported_django_parent"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class DeferredChild(PortBase):
    """A row whose foreign key is checked at COMMIT (DEFERRABLE INITIALLY DEFERRED)."""

    __tablename__ = "ported_django_deferred_child"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey(Parent.id, deferrable=True, initially="DEFERRED")
    )


class ImmediateChild(PortBase):
    """A row whose foreign key is checked at once, unless the transaction defers it.

    SQLite: ``PRAGMA defer_foreign_keys=ON``; PostgreSQL: ``SET CONSTRAINTS ALL
    DEFERRED`` (the constraint is ``DEFERRABLE INITIALLY IMMEDIATE``).
    """

    __tablename__ = "ported_django_immediate_child"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey(Parent.id, deferrable=True))


class Row(NamedTuple):
    """A snapshot of a Reporter (compared as Django compares model instances: by value)."""

    id: int
    first_name: str
    last_name: str


def _ordered() -> Any:
    return select(Reporter.id, Reporter.first_name, Reporter.last_name).order_by(
        Reporter.first_name, Reporter.last_name, Reporter.id
    )


def open_transaction() -> Any:
    """The thread manager's current transaction, or None (public ``transaction`` API only)."""
    try:
        return get_tm().get()
    except NoTransaction:
        return None


@dataclass
class PortedDB:
    """The per-backend engine and Database the ported tests commit through."""

    backend: str
    engine: Engine
    database: Database
    savepoints: list[str]

    def empty_tables(self) -> None:
        with self.engine.begin() as conn:
            for table in reversed(PortBase.metadata.sorted_tables):
                conn.execute(delete(table))


@pytest.fixture(scope="session")
def ported_db(backend: str, dbengine: Engine) -> Iterator[PortedDB]:
    """This directory's tables on the run's test database, and a real engine + Database on it."""
    url = dbengine.url.render_as_string(hide_password=False)
    options: dict[str, Any] = {}
    if backend == "postgresql":
        # A test that leaves a transaction open holding locks must fail, not hang the
        # cleanup (SQLite has the engine's busy timeout).
        options["connect_args"] = {"options": "-c lock_timeout=10s"}
    engine = create_engine_for(url, pool_size=5, max_overflow=10, **options)
    savepoints: list[str] = []

    # The name of every SAVEPOINT sent to the server (SQLAlchemy's "savepoint" event
    # fires before the name is chosen, so read the statement itself).
    @event.listens_for(engine, "before_cursor_execute")
    def _savepoint(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        match = SAVEPOINT.match(statement)
        if match:
            savepoints.append(match[1])

    with engine.begin() as conn:
        PortBase.metadata.drop_all(conn)
        PortBase.metadata.create_all(conn)
    try:
        yield PortedDB(backend, engine, Database(engine), savepoints)
    finally:
        try:
            with engine.begin() as conn:
                PortBase.metadata.drop_all(conn)
        finally:
            engine.dispose()


class Ctx:
    """Django's test-case ``self`` for one test: its model helpers and where it runs."""

    def __init__(self, ported: PortedDB, mode: str) -> None:
        self.ported = ported
        self.mode = mode
        self.backend = ported.backend
        self.engine = ported.engine
        self.database = ported.database
        self.Reporter = Reporter
        self.Thing = Thing
        self.Parent = Parent
        self.DeferredChild = DeferredChild
        self.ImmediateChild = ImmediateChild
        self.ForcedError = ForcedError
        self.notified: list[Any] = []

    # -- where reads go ---------------------------------------------------------------

    def _reads_committed(self) -> bool:
        """Django's autocommit read: outside any unit in autocommit mode, a fresh connection."""
        return self.mode == "autocommit" and not is_in_transaction()

    @property
    def savepoint_names(self) -> list[str]:
        """Every SAVEPOINT name sent on this test's engine, in order."""
        return self.ported.savepoints

    # -- Reporter.objects ---------------------------------------------------------------

    def create(self, model: type = Reporter, **values: Any) -> Any:
        """``Model.objects.create(**values)``: an INSERT now.

        In a unit of work: add and flush (the unit commits or rolls it back).
        Outside one: its own committed unit, as Django's ``save()`` in
        autocommit mode. Returns a :class:`Row` for a Reporter, else the object.
        """
        obj = model(**values)
        if is_in_transaction():
            session = current_session()
            session.add(obj)
            session.flush()
        else:
            with db_transaction() as session:
                session.add(obj)
                session.flush()
        if model is Reporter:
            return Row(obj.id, obj.first_name, obj.last_name)
        return obj

    def all(self) -> list[Row]:
        """``Reporter.objects.all()`` (ordering first_name, last_name)."""
        if self._reads_committed():
            return self.committed()
        return [Row(*r) for r in current_session().execute(_ordered())]

    def count(self) -> int:
        """``Reporter.objects.count()``."""
        if self._reads_committed():
            return len(self.committed())
        return current_session().scalar(select(func.count()).select_from(Reporter))

    def committed(self) -> list[Row]:
        """The committed Reporters, read on a separate connection."""
        with self.engine.connect() as conn:
            return [Row(*r) for r in conn.execute(_ordered())]

    def committed_nums(self) -> list[int]:
        """The committed Things' ``num``, sorted, read on a separate connection."""
        with self.engine.connect() as conn:
            return sorted(conn.scalars(select(Thing.num)))

    def assert_all(self, expected: list[Row]) -> None:
        """Django's ``assertSequenceEqual(Reporter.objects.all(), expected)``.

        What the test sees must equal ``expected``. Outside any unit of work
        the committed state must equal it too (in the ``implicit`` mode
        because an outermost ``db_transaction()`` adopts and commits the
        scope's implicit transaction); inside ``with transaction.manager:``
        nothing may be committed yet, nor ever inside the ``db`` fixture.
        """
        assert self.all() == expected
        if self.mode == "inside":
            assert self.committed() == [], "committed before 'with transaction.manager:' ended"
        elif self.mode == "testcase":
            assert self.committed() == [], "committed for real inside the db fixture"
        elif not is_in_transaction():
            assert self.committed() == expected

    # -- transaction_hooks' helpers -------------------------------------------------

    def notify(self, id_: Any) -> None:
        if id_ == "error":
            raise ForcedError()
        self.notified.append(id_)

    def do(self, num: int) -> None:
        """Create a Thing and register a hook that notifies about it."""
        self.create(Thing, num=num)
        on_commit(lambda: self.notify(num))

    def assert_done(self, nums: list[int]) -> None:
        self.assert_notified(nums)
        assert self.committed_nums() == sorted(nums)

    def assert_notified(self, nums: list[int]) -> None:
        assert self.notified == nums


class ForcedError(Exception):
    """Django's transaction_hooks ``ForcedError``."""


def _check_clean(ported: PortedDB, problems: list[str]) -> None:
    if open_transaction() is not None:
        problems.append("a transaction was left open on the thread's manager")
        get_tm().abort()
    if ported.engine.pool.checkedout():
        problems.append(f"{ported.engine.pool.checkedout()} connection(s) left checked out")


@pytest.fixture
def ported(ported_db: PortedDB) -> Iterator[PortedDB]:
    """Empty tables, no unit of work open; after the test: nothing left open or checked out."""
    if open_transaction() is not None:
        get_tm().abort()
    ported_db.empty_tables()
    ported_db.savepoints.clear()
    problems: list[str] = []
    try:
        yield ported_db
        _check_clean(ported_db, problems)
    finally:
        if open_transaction() is not None:
            get_tm().abort()
        ported_db.empty_tables()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def make_ctx(ported: PortedDB, mode: str) -> Iterator[Ctx]:
    """Run the test in ``mode`` (see the module docstring) inside one ``Database.scope()``."""
    ctx = Ctx(ported, mode)
    if mode == "testcase":  # the toolkit's db fixture's scope is the current one
        yield ctx
        assert ctx.committed() == [], "the db fixture's test committed for real"
        return
    with ExitStack() as stack:
        stack.enter_context(ported.database.scope())
        txn = None
        if mode == "inside":
            txn = get_tm().begin()  # what 'with transaction.manager:' does on entry
        elif mode == "implicit":
            current_session().execute(select(1))  # the scope's implicit transaction begins
            assert not is_in_transaction()
        yield ctx
        if mode == "inside":
            # Django's tearDown: the outer atomic exits (commits). What the session saw
            # last is what commits.
            assert open_transaction() is txn, "the test ended the manager's transaction"
            seen = ctx.all()
            transaction.commit()  # what 'with transaction.manager:' does on a clean exit
            assert ctx.committed() == seen
        elif is_in_transaction():
            pytest.fail("the test left a unit of work open", pytrace=False)


@pytest.fixture
def mode() -> str:
    """Where the test body runs (see the module docstring); test classes override it."""
    return "autocommit"


@pytest.fixture
def ctx(request: pytest.FixtureRequest, ported: PortedDB, mode: str) -> Iterator[Ctx]:
    """Django's test-case ``self``, in a ``Database.scope()``; ``mode`` says where.

    ``testcase``: inside the test toolkit's ``db`` fixture instead (Django's
    ``TestCase``): an outer transaction rolled back after the test, in which
    commits are savepoint releases.
    """
    if mode == "testcase":
        request.getfixturevalue("db")
    yield from make_ctx(ported, mode)
