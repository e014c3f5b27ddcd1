"""SQLite is transactional with myapp's engine (myapp.db.sqlite), and not without it.

* Engine level: with ``create_engine_for`` a rolled-back SAVEPOINT's rows are
  gone and an outer rollback removes the rows of a released SAVEPOINT. A plain
  ``create_engine("sqlite:///file")`` keeps those rows after the outer
  rollback: pysqlite does not BEGIN before SAVEPOINT, so SQLite's outermost
  SAVEPOINT is the transaction and its RELEASE commits it. That is why the
  workaround exists.
* Transaction manager: ``transaction.savepoint()`` works on SQLite through
  myapp's bridge; zope.sqlalchemy alone refuses it (``TypeError: Savepoints
  unsupported``), and so does myapp's bridge on an engine without the
  workaround.
* ``PRAGMA foreign_keys`` is ON; file databases use WAL.

These tests are about SQLite only and use their own temporary databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from myapp.db import Database, create_engine_for, db_transaction, get_tm
from myapp.db.sqlite import savepoints_supported
from myapp.models import Item

metadata = sa.MetaData()
rows = sa.Table("rows", metadata, sa.Column("id", sa.Integer, primary_key=True))
parents = sa.Table("parents", metadata, sa.Column("id", sa.Integer, primary_key=True))
children = sa.Table(
    "children",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("parent_id", sa.ForeignKey("parents.id"), nullable=False),
)


def _ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(rows.c.id).order_by(rows.c.id)))


def _insert(conn: sa.Connection, *ids: int) -> None:
    conn.execute(rows.insert(), [{"id": i} for i in ids])


@pytest.fixture
def myapp_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'myapp.sqlite'}")
    metadata.create_all(engine)
    Item.__table__.create(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def plain_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plain.sqlite'}")
    metadata.create_all(engine)
    Item.__table__.create(engine)
    yield engine
    engine.dispose()


# ---------------------------------------------------------------------------
# engine level


def test_rolled_back_savepoint_rows_are_gone(myapp_engine: Engine) -> None:
    with myapp_engine.connect() as conn:
        with conn.begin():
            _insert(conn, 1)
            sp = conn.begin_nested()
            _insert(conn, 2)
            sp.rollback()
            _insert(conn, 3)
    assert _ids(myapp_engine) == [1, 3]


def test_outer_rollback_removes_released_savepoint_rows(myapp_engine: Engine) -> None:
    with myapp_engine.connect() as conn:
        outer = conn.begin()
        sp = conn.begin_nested()
        _insert(conn, 1)
        sp.commit()  # RELEASE SAVEPOINT
        outer.rollback()
    assert _ids(myapp_engine) == []


def test_without_the_workaround_a_released_savepoint_survives_the_outer_rollback(
    plain_engine: Engine,
) -> None:
    assert not savepoints_supported(plain_engine)
    with plain_engine.connect() as conn:
        outer = conn.begin()
        sp = conn.begin_nested()
        _insert(conn, 1)
        sp.commit()
        outer.rollback()
    assert _ids(plain_engine) == [1]  # the bug the workaround fixes: this row was "rolled back"


def test_transactional_ddl(myapp_engine: Engine) -> None:
    with myapp_engine.connect() as conn:
        outer = conn.begin()
        conn.exec_driver_sql("CREATE TABLE ddl_probe (id INTEGER PRIMARY KEY)")
        outer.rollback()
    assert "ddl_probe" not in sa.inspect(myapp_engine).get_table_names()


# ---------------------------------------------------------------------------
# through the transaction manager


def _names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Item.name).order_by(Item.name)))


def test_transaction_savepoint_through_the_bridge(myapp_engine: Engine) -> None:
    db = Database(myapp_engine)
    tm = get_tm()
    with db.scope() as session:
        with tm:
            session.add(Item(name="A"))
            sp = transaction.savepoint()
            session.add(Item(name="B"))
            session.flush()
            sp.rollback()
            session.add(Item(name="C"))
    assert _names(myapp_engine) == ["A", "C"]
    assert myapp_engine.pool.checkedout() == 0


def test_outer_abort_removes_released_savepoint_rows_through_the_bridge(
    myapp_engine: Engine,
) -> None:
    db = Database(myapp_engine)
    tm = get_tm()
    with db.scope() as session:
        tm.begin()
        try:
            session.add(Item(name="D"))
            with db_transaction():  # nested: a transaction.savepoint(), RELEASEd on success
                session.add(Item(name="E"))
            session.flush()
        finally:
            tm.abort()
    assert _names(myapp_engine) == []
    assert myapp_engine.pool.checkedout() == 0


def test_bridge_refuses_savepoints_on_sqlite_without_the_workaround(plain_engine: Engine) -> None:
    db = Database(plain_engine)
    tm = get_tm()
    with db.scope() as session:
        tm.begin()
        try:
            session.add(Item(name="X"))
            session.flush()
            with pytest.raises(TypeError, match="Savepoints unsupported"):
                transaction.savepoint()
        finally:
            tm.abort()
    assert _names(plain_engine) == []


@pytest.mark.parametrize("url", ["sqlite://", "file"])
def test_zope_sqlalchemy_alone_refuses_sqlite_savepoints(url: str, tmp_path: Path) -> None:
    if url == "file":
        url = f"sqlite:///{tmp_path / 'zope.sqlalchemy'}"
    engine = sa.create_engine(url)
    tm = transaction.TransactionManager(explicit=True)
    factory = sessionmaker(bind=engine)
    zope.sqlalchemy.register(factory, transaction_manager=tm)
    session: Session = factory()
    try:
        tm.begin()
        try:
            session.execute(sa.text("SELECT 1"))  # joins the session to the transaction
            with pytest.raises(TypeError, match="Savepoints unsupported"):
                tm.savepoint()
        finally:
            tm.abort()
    finally:
        session.close()
        engine.dispose()


def test_transaction_savepoint_on_a_memory_database() -> None:
    engine = create_engine_for("sqlite://")
    try:
        assert savepoints_supported(engine)
        Item.__table__.create(engine)
        db = Database(engine)
        tm = get_tm()
        with db.scope() as session:
            with tm:
                session.add(Item(name="A"))
                sp = transaction.savepoint()
                session.add(Item(name="B"))
                session.flush()
                sp.rollback()
                names = list(session.scalars(sa.select(Item.name)))
        assert names == ["A"]
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# pragmas


def _pragma(engine: Engine, name: str) -> object:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_file_database_pragmas(myapp_engine: Engine) -> None:
    assert _pragma(myapp_engine, "foreign_keys") == 1
    assert _pragma(myapp_engine, "journal_mode") == "wal"


def test_memory_database_has_foreign_keys() -> None:
    engine = create_engine_for("sqlite://")
    try:
        assert _pragma(engine, "foreign_keys") == 1
    finally:
        engine.dispose()


def test_plain_engine_has_neither(plain_engine: Engine) -> None:
    assert _pragma(plain_engine, "foreign_keys") == 0
    assert _pragma(plain_engine, "journal_mode") == "delete"


def test_foreign_keys_are_enforced(myapp_engine: Engine) -> None:
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        with myapp_engine.begin() as conn:
            conn.execute(children.insert().values(id=1, parent_id=42))
    with myapp_engine.begin() as conn:
        conn.execute(parents.insert().values(id=42))
        conn.execute(children.insert().values(id=1, parent_id=42))
