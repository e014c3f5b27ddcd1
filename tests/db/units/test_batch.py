"""Issue 3, item 5: ``db_batch_operation``."""

from __future__ import annotations

from typing import Any

import pytest
import transaction
from sqlalchemy import func, insert, select

from myapp.db import (
    BatchFailed,
    BatchProgress,
    NestedTransactionError,
    current_transaction,
    db_batch_operation,
    db_transaction,
)
from myapp.models import Event, Item
from myapp.testing.helpers import count_events

from .conftest import make_app


class Boom(Exception):
    pass


def test_10001_rows_in_batches_of_1000_are_11_real_commits(real: Any) -> None:
    seen: list[tuple[int, int]] = []
    largest = 0
    with count_events(real.engine, "commit") as commits, real.database.scope():
        with db_batch_operation(
            batch_size=1000, progress=lambda p: seen.append((p.batches, p.rows))
        ) as (session, commit_batch):
            for n in range(10_001):
                session.add(Item(name=real.id(n)))
                largest = max(largest, len(session.identity_map) + len(session.new))
                commit_batch()
        assert current_transaction() is None
        assert len(session.identity_map) == 0
    assert commits["commit"] == 11
    assert real.item_count() == 10_001
    assert seen[-1] == (11, 10_001)  # the last call, at the end
    assert seen[:10] == [(n, n * 1000) for n in range(1, 11)]
    assert largest <= 1000  # the identity map is emptied after every commit


def test_under_the_fixture_each_batch_is_a_savepoint_release(db: Any) -> None:
    with count_events(db.connection, "release_savepoint") as releases:
        with db_batch_operation(batch_size=1000) as (session, commit_batch):
            for n in range(2_001):
                session.add(Item(name=f"i{n}"))
                commit_batch()
    assert releases["release_savepoint"] == 3
    assert db.session.scalar(select(func.count()).select_from(Item)) == 2_001


def test_a_failure_keeps_committed_batches_and_rolls_back_the_current_one(real: Any) -> None:
    with real.database.scope():
        with pytest.raises(BatchFailed) as info:
            with db_batch_operation(batch_size=1000) as (session, commit_batch):
                for n in range(5_000):
                    if n == 2_500:
                        raise Boom("bad input row 2500")
                    session.add(Item(name=real.id(n)))
                    commit_batch()
        assert current_transaction() is None
    failure = info.value
    assert (failure.batches, failure.rows, failure.rolled_back_rows) == (2, 2_000, 500)
    message = str(failure)
    assert "after committing 2 batch(es) (2000 rows)" in message
    assert "the current batch (500 rows) was rolled back" in message
    assert "bad input row 2500" in message
    assert isinstance(failure.__cause__, Boom)
    assert real.item_count() == 2_000
    assert real.engine.pool.checkedout() == 0


def test_a_database_error_at_a_batch_commit(db: Any) -> None:
    with pytest.raises(BatchFailed) as info:
        with db_batch_operation(batch_size=3) as (session, commit_batch):
            for event_id in ["a", "b", "c", "d", "e", "a"]:  # "a" again: the 2nd batch fails
                session.add(Event(id=event_id, title="t"))
                commit_batch()
    assert (info.value.batches, info.value.rows, info.value.rolled_back_rows) == (1, 3, 3)
    assert "IntegrityError" in str(info.value)
    assert current_transaction() is None
    assert set(db.session.scalars(select(Event.id))) == {"a", "b", "c"}


def test_refused_inside_another_transaction(db: Any) -> None:
    with db_transaction():
        with pytest.raises(NestedTransactionError, match="management command or a script"):
            with db_batch_operation():
                pass
    with transaction.manager:
        with pytest.raises(NestedTransactionError):
            with db_batch_operation():
                pass


def test_refused_inside_a_request(db: Any, database: Any, request_thread: Any) -> None:
    def view(request: Any) -> dict[str, Any]:
        with db_batch_operation() as (session, _commit_batch):
            session.add(Item(name="never"))
        return {}

    app = make_app(database, {"/batch": view}, request_thread)
    with pytest.raises(NestedTransactionError, match="cannot run inside another transaction"):
        app.post("/batch")
    assert db.session.scalar(select(func.count()).select_from(Item)) == 0


def test_seed_usage_with_auto_commit_batch_false(db: Any) -> None:
    progress: list[BatchProgress] = []
    with db_batch_operation(batch_size=100, auto_commit_batch=False, progress=progress.append) as (
        session,
        commit_batch,
    ):
        for i in range(250):
            session.add(Item(name=f"i{i}"))
            if (i + 1) % 100 == 0:
                commit_batch()  # seed 000: an intermediate commit every 100
    assert [p.history for p in progress] == [[100], [100, 100], [100, 100, 50]]
    assert [p.done for p in progress] == [False, False, True]
    assert db.session.scalar(select(func.count()).select_from(Item)) == 250


def test_progress_history_with_updates_and_core_rows(db: Any) -> None:
    db.session.execute(insert(Item), [{"name": f"i{n}"} for n in range(250)])
    db.session.commit()
    progress: list[BatchProgress] = []
    with db_batch_operation(batch_size=100, progress=progress.append) as (session, commit_batch):
        for item in session.scalars(select(Item).order_by(Item.id)).all():
            item.name = item.name.upper()
            commit_batch()
        session.execute(insert(Item), [{"name": f"core{n}"} for n in range(100)])
        commit_batch()
    assert progress[-1].history == [100, 100, 150]  # the last: 50 updates + 100 Core rows
    assert progress[-1].done
    names = set(db.session.scalars(select(Item.name)))
    assert names == {f"I{n}" for n in range(250)} | {f"core{n}" for n in range(100)}


def test_keyset_batches_of_updates_keep_the_identity_map_small(db: Any) -> None:
    db.session.execute(insert(Item), [{"name": f"i{n}"} for n in range(1_050)])
    db.session.commit()
    db.session.expunge_all()
    largest = 0
    with db_batch_operation(batch_size=100) as (session, commit_batch):
        last = 0
        while items := session.scalars(
            select(Item).where(Item.id > last).order_by(Item.id).limit(100)
        ).all():
            for item in items:
                item.name = item.name.upper()
            last = items[-1].id
            del items, item
            largest = max(largest, len(session.identity_map))
            commit_batch(force=True)  # one page, one batch
            assert len(session.identity_map) == 0
    assert largest == 100
    names = set(db.session.scalars(select(Item.name)))
    assert names == {f"I{n}" for n in range(1_050)}


def test_the_pending_count_agrees_with_the_sessions_public_sets(db: Any) -> None:
    """``_pending_changes`` reads SQLAlchemy's bookkeeping; it must match the public sets."""
    from myapp.db.compat import pending_changes as _pending_changes

    def public(session: Any) -> int:
        return len(session.new) + len(session.dirty) + len(session.deleted)

    session = db.session
    session.execute(insert(Item), [{"name": f"p{n}"} for n in range(6)])
    session.commit()
    assert _pending_changes(session) == public(session) == 0
    loaded = session.scalars(select(Item).order_by(Item.id)).all()
    session.add_all([Item(name="new1"), Item(name="new2")])
    assert _pending_changes(session) == public(session) == 2
    loaded[0].name = "changed"
    loaded[1].name = "changed too"
    assert _pending_changes(session) == public(session) == 4
    session.delete(loaded[1])  # modified, then deleted: counted once
    session.delete(loaded[2])
    assert _pending_changes(session) == public(session) == 5
    session.flush()
    assert _pending_changes(session) == public(session) == 0
