##############################################################################
#
# Copyright (c) 2008 Zope Foundation and Contributors.
# All Rights Reserved.
#
# This software is subject to the provisions of the Zope Public License,
# Version 2.1 (ZPL).  A copy of the ZPL should accompany this distribution.
# THIS SOFTWARE IS PROVIDED "AS IS" AND ANY AND ALL EXPRESS OR IMPLIED
# WARRANTIES ARE DISCLAIMED, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED
# WARRANTIES OF TITLE, MERCHANTABILITY, AGAINST INFRINGEMENT, AND FITNESS
# FOR A PARTICULAR PURPOSE
#
##############################################################################
#
# Changed by the myapp project on 2026-12-01: the tables, models and
# DummyDataManager of zope.sqlalchemy 4.1's src/zope/sqlalchemy/tests.py,
# ported to pytest fixtures that run against myapp's bridge
# (myapp.db.make_session_factory) on SQLite and PostgreSQL with real commits.
"""Fixtures for the zope.sqlalchemy port: zope's test tables, models and dummy data manager.

zope's suite drops and re-creates its tables around every test on one
engine. Here the tables live in their own ``MetaData`` (names prefixed
``zope_`` so they cannot meet another suite's tables in the run's database),
are created once per backend on the run's database (the toolkit's
``dbengine``), and every test runs on a new engine of its own whose commits
are real; the rows are deleted after each test. The ``zs`` fixture also fails
the test if it left a unit of work open or a connection checked out.

Sessions come from ``myapp.db.make_session_factory(engine)`` (the bridge
registered once on the factory) wrapped in a ``scoped_session``, as zope's
``Session``: calling it again in the same thread returns the same session.
The thread-local ``transaction.manager`` is in explicit mode (``get_tm()``),
so where zope's implicit manager begins a transaction by itself, the ported
tests call ``transaction.begin()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import transaction
from sqlalchemy import orm
from sqlalchemy.engine import Engine

from myapp.db import create_engine_for, get_tm, make_session_factory


class SimpleModel:
    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    def asDict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class User(SimpleModel):
    pass


class Skill(SimpleModel):
    pass


metadata = sa.MetaData()  # best to use unbound metadata

test_users = sa.Table(
    "zope_test_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("firstname", sa.VARCHAR(255)),
    sa.Column("lastname", sa.VARCHAR(255)),
)

test_skills = sa.Table(
    "zope_test_skills",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer),
    sa.Column("name", sa.VARCHAR(255)),
    sa.ForeignKeyConstraint(("user_id",), ("zope_test_users.id",)),
)

mapper_registry = orm.registry()
mapper_registry.map_imperatively(
    User,
    test_users,
    properties={
        "skills": orm.relationship(
            Skill, primaryjoin=(test_users.columns["id"] == test_skills.columns["user_id"])
        )
    },
)
mapper_registry.map_imperatively(Skill, test_skills)


class DummyException(Exception):
    pass


class DummyTargetRaised(DummyException):
    pass


class DummyTargetResult(DummyException):
    pass


class DummyDataManager:
    """zope's DummyDataManager: votes no (raises in ``tpc_vote``), or runs ``target`` there."""

    def __init__(self, key: str, target: Any = None, args: tuple = (), kwargs: Any = None) -> None:
        self.key = key
        self.target = target
        self.args = args
        self.kwargs = kwargs or {}

    def abort(self, trans: Any) -> None:
        pass

    def tpc_begin(self, trans: Any) -> None:
        pass

    def commit(self, trans: Any) -> None:
        pass

    def tpc_vote(self, trans: Any) -> None:
        if self.target is not None:
            try:
                result = self.target(*self.args, **self.kwargs)
            except Exception as e:
                raise DummyTargetRaised(e) from e
            raise DummyTargetResult(result)
        raise DummyException("DummyDataManager cannot commit")

    def tpc_finish(self, trans: Any) -> None:
        pass

    def tpc_abort(self, trans: Any) -> None:
        pass

    def sortKey(self) -> str:
        return self.key


class Recorder:
    """A data manager that records every call of the two-phase commit protocol."""

    def __init__(self, key: str, log: list[tuple[str, str]], fail_in: str = "") -> None:
        self.key = key
        self.log = log
        self.fail_in = fail_in
        self.retry = False

    def _call(self, name: str) -> None:
        self.log.append((self.key, name))
        if name == self.fail_in:
            raise RuntimeError(f"{self.key} fails in {name}")

    def abort(self, txn: Any) -> None:
        self._call("abort")

    def tpc_begin(self, txn: Any) -> None:
        self._call("tpc_begin")

    def commit(self, txn: Any) -> None:
        self._call("commit")

    def tpc_vote(self, txn: Any) -> None:
        self._call("tpc_vote")

    def tpc_finish(self, txn: Any) -> None:
        self._call("tpc_finish")

    def tpc_abort(self, txn: Any) -> None:
        self._call("tpc_abort")

    def sortKey(self) -> str:
        return self.key

    def should_retry(self, error: BaseException) -> bool:
        return self.retry


class SavepointRecorder(Recorder):
    """A :class:`Recorder` that supports savepoints."""

    def savepoint(self) -> Any:
        recorder = self

        class _Savepoint:
            def rollback(self) -> None:
                recorder._call("savepoint_rollback")

        self._call("savepoint")
        return _Savepoint()


def run_url(dbengine: Engine) -> str:
    """The URL of the run's database (the toolkit's ``dbengine``), password included."""
    return dbengine.url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def zs_tables(dbengine: Engine) -> Iterator[str]:
    """zope's tables, created once per backend on the run's database; yields its URL."""
    with dbengine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
    yield run_url(dbengine)
    with dbengine.begin() as conn:
        metadata.drop_all(conn)


def delete_rows(engine: Engine, meta: sa.MetaData) -> None:
    with engine.begin() as conn:
        for table in reversed(meta.sorted_tables):
            conn.execute(table.delete())


def abort_open_transaction() -> bool:
    """Abort this thread's transaction if one is open; True if there was one."""
    tm = get_tm()
    try:
        tm.get()
    except transaction.interfaces.NoTransaction:
        return False
    tm.abort()
    return True


class ZS:
    """What the ``zs`` fixture yields: zope's module globals, per test.

    ``engine``: a new engine on the run's database; ``Session``: a
    ``scoped_session`` over ``make_session_factory(engine)``; ``conn``: "a
    connection which bypasses the session/transaction machinery" (zope's
    ``self.conn``, here on another engine, so that ``engine.pool.checkedout()``
    counts the sessions' connections only); ``dialect``: ``sqlite`` or
    ``postgresql``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine_for(url)
        self.engines = [self.engine]
        self.factory = make_session_factory(self.engine)
        self.Session = orm.scoped_session(self.factory)
        # on an engine of its own, so that engine.pool.checkedout() counts the sessions' only
        self.conn = self.new_engine().connect()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def new_engine(self, **options: Any) -> Engine:
        """Another engine on the same database (disposed at the end of the test)."""
        engine = create_engine_for(self.url, **options)
        self.engines.append(engine)
        return engine

    def user_rows(self) -> list[tuple]:
        """The committed rows of the users table, read on a fresh connection."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(test_users).order_by(test_users.c.id)))


@pytest.fixture
def zs(zs_tables: str) -> Iterator[ZS]:
    """zope's setUp/tearDown: a clean slate, real commits, and a leak check at the end.

    The leak check runs after the abort: a connection still checked out then
    (by the test's sessions, or a ``new_engine()``) fails the test.
    """
    abort_open_transaction()
    stack = ZS(zs_tables)
    problems: list[str] = []
    try:
        yield stack  # a transaction left open is aborted, as zope's tearDown does
    finally:
        try:
            abort_open_transaction()
            stack.Session.remove()
            stack.conn.close()
            for engine in stack.engines:
                if engine.pool.checkedout():
                    problems.append(f"{engine.pool.checkedout()} connection(s) left checked out")
            delete_rows(stack.engine, metadata)
        finally:
            for engine in stack.engines:
                engine.dispose()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
