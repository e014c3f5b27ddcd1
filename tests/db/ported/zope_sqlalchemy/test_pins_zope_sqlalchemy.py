"""Pins: the zope.sqlalchemy behaviours that myapp's bridge relies on, or works around.

myapp subclasses zope.sqlalchemy's one-phase ``SessionDataManager`` and
``SessionSavepoint`` (``myapp/db/datamanager.py``). These tests run
zope.sqlalchemy *alone* (its own ``register()`` on a plain ``sessionmaker``
and engine, a private ``TransactionManager(explicit=True)``) on the run's
database, so that a release that changes what myapp builds on, or fixes what
myapp works around, fails a named test here first:

* relied on: the data manager's constructor and attributes, its ``sortKey``
  (sorts after myapp's own resources), its one-phase commit in ``tpc_vote``,
  its ``tpc_begin`` flush, ``SessionSavepoint.transaction``, the savepoint
  refusal protocol for SQLite;
* worked around (a failure here means the workaround may be obsolete, or
  must be checked): ``keep_session`` leaving the SQL transaction open after
  an abort (zope.sqlalchemy issue #14), a "no work" commit rolling back, and
  ``text()`` writes not being noticed (issue #88).

Private names myapp reads (``_SESSION_STATE``) are pinned by the tests of
``myapp/db/compat.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import transaction
from sqlalchemy import orm
from transaction.interfaces import NoTransaction
from zope.sqlalchemy import datamanager as zdm
from zope.sqlalchemy import register

from myapp.testing.helpers import count_events

from .conftest import ZS, Recorder, User, test_users


class Plain:
    """zope.sqlalchemy alone: a plain engine, sessionmaker and explicit transaction manager."""

    def __init__(self, zs: ZS, keep_session: bool = False) -> None:
        self.engine = sa.create_engine(zs.url)
        zs.engines.append(self.engine)  # disposed, and leak-checked, by the zs fixture
        self.tm = transaction.TransactionManager(explicit=True)
        self.factory = orm.sessionmaker(bind=self.engine)
        register(self.factory, transaction_manager=self.tm, keep_session=keep_session)
        self.sessions: list[orm.Session] = []

    def session(self) -> orm.Session:
        session = self.factory()
        self.sessions.append(session)
        return session

    def close(self) -> None:
        try:
            self.tm.abort()
        except NoTransaction:
            pass
        for session in self.sessions:
            session.close()


@pytest.fixture
def plain(zs: ZS) -> Iterator[Plain]:
    stack = Plain(zs)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def keeping(zs: ZS) -> Iterator[Plain]:
    stack = Plain(zs, keep_session=True)
    try:
        yield stack
    finally:
        stack.close()


def test_pins_data_manager_constructor(plain: Plain) -> None:
    """``SessionDataManager(session, status, transaction_manager, keep_session)`` joins
    ``transaction_manager.get()`` and records the session's root SQLAlchemy transaction
    as ``tx`` (beginning one if needed), the session as ``session`` and ``state`` "init";
    ``tpc_begin`` flushes the session.

    myapp: its data manager calls this constructor with ``keep_session=True``
    and then reads ``tx``, ``session`` and ``state``, and inherits
    ``tpc_begin``, ``tpc_finish``, ``tpc_abort`` and ``sortKey``.
    """
    params = list(inspect.signature(zdm.SessionDataManager.__init__).parameters)
    assert params == ["self", "session", "status", "transaction_manager", "keep_session"]
    session = orm.sessionmaker(bind=plain.engine)()  # not registered
    plain.sessions.append(session)
    txn = plain.tm.begin()
    dm = zdm.SessionDataManager(session, zdm.STATUS_ACTIVE, plain.tm, keep_session=True)
    assert dm.tx is session.get_transaction() is not None
    assert dm.session is session
    assert dm.state == "init"
    assert dm.transaction_manager is plain.tm
    log: list[tuple[str, str]] = []
    txn.join(Recorder("zzz", log))  # commits only if the session's data manager joined too
    session.add(User(id=1, firstname="udo", lastname="juergens"))
    dm.tpc_begin(txn)
    assert not session.new, "tpc_begin did not flush"
    plain.tm.abort()
    assert ("zzz", "abort") in log


def test_pins_status_constants() -> None:
    """The join states: ``STATUS_ACTIVE`` "active", ``STATUS_CHANGED`` "changed" (also
    ``STATUS_INVALIDATED``), ``STATUS_READONLY`` "readonly".

    myapp: its data manager compares a session's state with ``STATUS_CHANGED``
    to decide when to commit, and joins with ``STATUS_ACTIVE``.
    """
    assert zdm.STATUS_ACTIVE == "active"
    assert zdm.STATUS_CHANGED == "changed"
    assert zdm.STATUS_INVALIDATED is zdm.STATUS_CHANGED
    assert zdm.STATUS_READONLY == "readonly"


def test_pins_sort_key(plain: Plain) -> None:
    """The data manager's ``sortKey()`` is ``"~sqlalchemy:<id of its tx>"``: it sorts after
    myapp's failure guard (``"!myapp.failure"``), its on-commit hooks
    (``"myapp.on_commit"``), and keys made of digits (``repoze.sendmail``'s).

    myapp: the failure guard must veto before the session flushes or
    commits, and the session commits last, after every other resource voted.
    """
    session = orm.sessionmaker(bind=plain.engine)()  # not registered
    plain.sessions.append(session)
    plain.tm.begin()
    dm = zdm.SessionDataManager(session, zdm.STATUS_ACTIVE, plain.tm)
    session_key = dm.sortKey()
    assert session_key == f"~sqlalchemy:{id(dm.tx)}"
    assert sorted(["!myapp.failure", "myapp.on_commit", "140234", session_key])[-1] == session_key


@pytest.mark.parametrize("position", ["before", "after"])
def test_pins_one_phase_commit_in_tpc_vote(plain: Plain, position: str) -> None:
    """A session that wrote commits in its ``tpc_vote``: a resource sorting before it that
    votes no rolls it back; one sorting after it (``"~~~"``) votes too late, the data is
    already committed. (zope's testTwoPhase uses such a ``"~~~dummy.last"``.)

    myapp: inherits this one-phase behaviour; its failure guard and hooks
    sort before the session.
    """
    key = "dummy.first" if position == "before" else "~~~dummy.last"
    session = plain.session()
    txn = plain.tm.begin()
    txn.join(Recorder(key, [], fail_in="tpc_vote"))
    session.add(User(id=1, firstname="udo", lastname="juergens"))
    with pytest.raises(RuntimeError):
        plain.tm.commit()
    plain.tm.abort()
    with plain.engine.connect() as conn:
        committed = conn.execute(sa.select(sa.func.count()).select_from(test_users)).scalar()
    assert committed == (0 if position == "before" else 1)


def test_pins_no_work_commit_rolls_back(plain: Plain) -> None:
    """zope.sqlalchemy ends a session it did not see write with a ROLLBACK (it closes it),
    so a write made on ``session.connection()`` without ``mark_changed`` is lost.

    Worked around by myapp, which commits every successful unit of work; if
    this fails, zope.sqlalchemy changed its "no work" path.
    """
    session = plain.session()
    plain.tm.begin()
    session.connection().execute(
        test_users.insert(), {"id": 1, "firstname": "udo", "lastname": "juergens"}
    )
    with count_events(plain.engine, "commit", "rollback") as counts:
        plain.tm.commit()
    assert counts == {"commit": 0, "rollback": 1}
    with plain.engine.connect() as conn:
        assert conn.execute(sa.select(test_users)).all() == []


def test_pins_text_write_not_marked(plain: Plain) -> None:
    """zope.sqlalchemy issue #88: a ``text()`` write through ``session.execute`` does not mark
    the session changed, so the commit rolls it back.

    Worked around by myapp (``myapp/db/writes.py`` classifies ``text()`` by its
    verb); if this fails, zope.sqlalchemy now notices such writes.
    """
    session = plain.session()
    plain.tm.begin()
    session.add(User(id=1, firstname="udo", lastname="juergens"))
    plain.tm.commit()
    session = plain.session()
    plain.tm.begin()
    session.execute(sa.text("UPDATE zope_test_users SET lastname = 'smith'"))
    plain.tm.commit()
    with plain.engine.connect() as conn:
        assert conn.execute(sa.select(test_users.c.lastname)).scalars().all() == ["juergens"]


def test_pins_keep_session_leaves_the_sql_transaction_open(keeping: Plain) -> None:
    """zope.sqlalchemy issue #14: with ``keep_session=True`` an abort (and a "no work"
    commit) only expires the session's objects; its SQL transaction stays open and its
    connection checked out.

    Worked around by myapp, whose data manager rolls back on abort and
    commits every successful unit; if this fails, zope.sqlalchemy now ends
    the SQL transaction itself.
    """
    session = keeping.session()
    keeping.tm.begin()
    session.execute(sa.select(test_users))
    keeping.tm.abort()
    assert session.in_transaction()
    assert keeping.engine.pool.checkedout() == 1
    keeping.tm.begin()  # the next transaction: it joins, and a "no work" commit...
    session.execute(sa.select(test_users))
    keeping.tm.commit()
    assert session.in_transaction()  # ...leaves the SQL transaction open too
    session.rollback()
    assert keeping.engine.pool.checkedout() == 0


def test_pins_session_savepoint(zs: ZS, plain: Plain) -> None:
    """``SessionSavepoint(session)`` begins a SQLAlchemy nested transaction, kept as
    ``transaction``; its ``rollback()`` rolls back to it.

    myapp: its ``SessionSavepoint`` subclass RELEASEs the savepoint through
    ``transaction.commit()`` and rolls back through ``transaction.rollback()``.
    """
    # on SQLite, an engine with myapp's workaround (pysqlite alone makes SAVEPOINT unsafe)
    session = orm.sessionmaker(bind=zs.new_engine())()  # not registered: begin_nested() is ours
    plain.sessions.append(session)
    session.begin()
    session.add(User(id=1, firstname="udo", lastname="juergens"))
    session.flush()
    sp = zdm.SessionSavepoint(session)
    assert sp.session is session
    assert sp.transaction is session.get_nested_transaction()
    assert sp.transaction.nested
    session.add(User(id=2, firstname="heino", lastname="n/a"))
    session.flush()
    sp.rollback()
    assert [u.id for u in session.query(User).order_by(User.id)] == [1]


def test_pins_savepoints_refused_on_sqlite(plain: Plain) -> None:
    """zope.sqlalchemy refuses savepoints for the ``sqlite`` driver (its data manager's
    ``savepoint`` raises ``AttributeError``, so ``transaction`` raises
    ``TypeError("Savepoints unsupported")``) and allows them elsewhere.

    myapp: its data manager allows them on SQLite engines that carry its
    workaround (``myapp/db/sqlite.py``); if this fails on SQLite,
    zope.sqlalchemy changed its rule.
    """
    assert {"sqlite"} == zdm.NO_SAVEPOINT_SUPPORT
    session = plain.session()
    plain.tm.begin()
    session.execute(sa.text("SELECT 1"))
    if plain.engine.dialect.name == "sqlite":
        with pytest.raises(TypeError, match="Savepoints unsupported"):
            plain.tm.savepoint()
    else:
        plain.tm.savepoint().rollback()
