"""Pins: the library behaviour behind each private name ``myapp.db.compat`` reads.

If a release of ``transaction``, zope.sqlalchemy or SQLAlchemy changes one of
these, this file fails with the name of what changed, before any request does.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import transaction
from sqlalchemy import Column, Integer, MetaData, String, Table, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, registry
from transaction import ThreadTransactionManager, TransactionManager
from zope.sqlalchemy import datamanager as zdm

from myapp.db import compat, create_engine_for
from myapp.db.manager import UnitManager, get_tm

metadata = MetaData()
pins = Table("compat_pins", metadata, Column("id", Integer, primary_key=True), Column("v", String))
mapper_registry = registry()


class Pin:
    def __init__(self, id: int, v: str = "") -> None:
        self.id = id
        self.v = v


mapper_registry.map_imperatively(Pin, pins)


@pytest.fixture
def engine(tmp_path: Any) -> Engine:
    engine = create_engine_for(f"sqlite:///{tmp_path}/pins.sqlite")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_status_names_the_transaction_states() -> None:
    manager = TransactionManager(explicit=True)
    txn = manager.begin()
    assert txn.status == compat.Status.ACTIVE == "Active"

    class Failing:
        transaction_manager = None

        def abort(self, txn: Any) -> None: ...
        def tpc_begin(self, txn: Any) -> None: ...
        def commit(self, txn: Any) -> None:
            raise RuntimeError("no")

        def tpc_vote(self, txn: Any) -> None: ...
        def tpc_finish(self, txn: Any) -> None: ...
        def tpc_abort(self, txn: Any) -> None: ...
        def sortKey(self) -> str:
            return "failing"

    txn.join(Failing())
    with pytest.raises(RuntimeError):
        manager.commit()
    assert txn.status == compat.Status.COMMITFAILED
    manager.abort()
    assert compat.Status.COMMITTING == "Committing"


def test_active_transaction_is_what_explicit_get_returns_without_raising() -> None:
    manager = TransactionManager(explicit=True)
    assert compat.active_transaction(manager) is None
    txn = manager.begin()
    assert compat.active_transaction(manager) is txn is manager.get()
    manager.commit()
    assert compat.active_transaction(manager) is None
    with pytest.raises(transaction.interfaces.NoTransaction):
        manager.get()


def test_the_thread_managers_manager_attribute_carries_every_call() -> None:
    """``get_tm`` gives each thread a ``UnitManager`` via ``ThreadTransactionManager.manager``."""
    tm = ThreadTransactionManager()
    mine = TransactionManager(explicit=True)
    tm.manager = mine
    txn = tm.begin()
    assert mine.get() is txn and tm.get() is txn
    tm.abort()
    assert compat.active_transaction(mine) is None

    seen: list[Any] = []

    def other_thread() -> None:
        seen.append(tm.manager)

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen[0] is not mine  # per thread


def test_carried_synchronizers_see_the_new_managers_transactions() -> None:
    class Synch:
        def __init__(self) -> None:
            self.began: list[Any] = []

        def newTransaction(self, txn: Any) -> None:
            self.began.append(txn)

        def beforeCompletion(self, txn: Any) -> None: ...
        def afterCompletion(self, txn: Any) -> None: ...

    old = TransactionManager(explicit=True)
    synch = Synch()
    old.registerSynch(synch)
    new = UnitManager()
    compat.carry_synchronizers(old, new)
    txn = new.begin()
    assert synch.began == [txn]
    new.abort()


def test_get_tm_installs_a_unit_manager_on_each_thread() -> None:
    results: list[Any] = []

    def worker() -> None:
        tm = get_tm()
        results.append((type(tm.manager), tm.manager.explicit))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results == [(UnitManager, True)]


def test_session_status_is_zope_sqlalchemys_join_state(engine: Engine) -> None:
    manager = TransactionManager(explicit=True)
    manager.begin()
    session = Session(engine)
    assert compat.session_status(session) is None
    zdm.join_transaction(session, transaction_manager=manager)
    assert compat.session_status(session) is zdm.STATUS_ACTIVE
    zdm.mark_changed(session, transaction_manager=manager)
    assert compat.session_status(session) is zdm.STATUS_CHANGED
    compat.set_session_status(session, zdm.STATUS_ACTIVE)
    assert zdm._SESSION_STATE[session] is zdm.STATUS_ACTIVE
    manager.abort()  # zope's data manager forgets the session when it finishes
    assert compat.session_status(session) is None
    compat.set_session_status(session, zdm.STATUS_CHANGED)
    compat.forget_session(session)
    assert compat.session_status(session) is None
    session.close()


def test_savepoint_name_is_the_name_sent_to_the_database(engine: Engine) -> None:
    sent: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SAVEPOINT "):
            sent.append(statement.removeprefix("SAVEPOINT ").strip())

    with Session(engine) as session:
        session.begin()
        nested = session.begin_nested()
        connection = session.connection()
        name = compat.savepoint_name(connection.get_nested_transaction())
        assert sent == [name]
        nested.rollback()
        # SQLAlchemy leaves the rolled-back savepoint open on the server: myapp releases it
        connection.dialect.do_release_savepoint(connection, name)
        session.rollback()


def test_pending_changes_counts_what_the_public_sets_hold(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all([Pin(1, "a"), Pin(2, "b"), Pin(3, "c")])
        session.commit()
        pins_ = session.scalars(select(Pin).order_by(Pin.id)).all()

        def public() -> int:
            return len(session.new) + len(session.dirty) + len(session.deleted)

        assert compat.pending_changes(session) == public() == 0
        session.add(Pin(4))
        pins_[0].v = "changed"
        assert compat.pending_changes(session) == public() == 2
        session.delete(pins_[1])
        pins_[1].v = "changed and deleted"
        assert compat.pending_changes(session) == public() == 3
        session.flush()
        assert compat.pending_changes(session) == public() == 0
        session.rollback()
