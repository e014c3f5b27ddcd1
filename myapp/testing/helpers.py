"""Test helpers with the seeds' names (seed 000 and seed 001)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import inspect, select

from myapp.db.bridge import (
    COMMIT_FLOOR,
    begin_implicit,
    current_transaction,
    get_tm,
    is_implicit,
    join_transaction,
)

T = TypeVar("T")


class HasSession(Protocol):
    session: Any


def _session(db: Any) -> Any:
    return getattr(db, "session", db)


def persisted_fixture(
    db: HasSession, factory_instance: T, model_class: type[T], **kwargs: Any
) -> T:
    """Commit ``factory_instance``, reload it from the database and assert that it exists.

    ``kwargs`` are set on the instance before the commit. Returns the reloaded
    object, attached to ``db.session``.
    """
    session = _session(db)
    for name, value in kwargs.items():
        setattr(factory_instance, name, value)
    session.add(factory_instance)
    session.commit()
    identity = inspect(factory_instance).identity
    assert identity is not None, f"{model_class.__name__} has no identity after the commit"
    session.expire_all()
    mapper = inspect(model_class)
    pk_filter = [col == value for col, value in zip(mapper.primary_key, identity, strict=True)]
    reloaded = session.scalars(select(model_class).where(*pk_filter)).one_or_none()
    assert reloaded is not None, f"{model_class.__name__}{identity!r} was not persisted"
    return reloaded


@contextmanager
def ensure_committed(db: HasSession) -> Iterator[Any]:
    """Commit everything pending in ``db.session`` now; yields the session.

    Use it before code that starts with a defensive rollback (``engine.run``).
    Raises if called inside a unit of work that the test itself opened.
    """
    session = _session(db)
    txn = current_transaction(get_tm())
    if txn is not None and not is_implicit(txn):
        raise RuntimeError(
            "ensure_committed() inside an open unit of work: leave the db_transaction() "
            "or 'with transaction.manager:' block first"
        )
    session.commit()
    yield session


@contextmanager
def nested_savepoint(db: HasSession) -> Iterator[Any]:
    """A savepoint whose changes are rolled back at exit, even if the block commits.

    Inside, ``db.session.commit()`` only flushes (it commits up to this
    savepoint) and ``db.session.rollback()`` returns to the savepoint.
    """
    session = _session(db)
    tm = get_tm()
    txn = current_transaction(tm)
    if txn is None:
        txn = begin_implicit(tm)
    join_transaction(session)
    sp = txn.savepoint()
    previous = session.info.get(COMMIT_FLOOR)
    session.info[COMMIT_FLOOR] = sp
    try:
        yield session
    finally:
        session.info[COMMIT_FLOOR] = previous
        if previous is None:
            del session.info[COMMIT_FLOOR]
        sp.rollback()
        session.expire_all()


def capture_original_values(obj: Any, fields: Iterable[str]) -> dict[str, Any]:
    """Snapshot ``fields`` of ``obj`` (loaded now) for :func:`verify_rollback_restores_values`."""
    return {name: getattr(obj, name) for name in fields}


def verify_rollback_restores_values(
    session: Any, model_class: type, obj_id: Any, original_values: Mapping[str, Any]
) -> Any:
    """Assert that the row ``obj_id`` holds ``original_values`` in the database.

    Expires the session, queries afresh, and lists every field that differs
    (expected vs found) in the assertion message. Returns the reloaded object.
    """
    session = _session(session)
    session.expire_all()
    mapper = inspect(model_class)
    (pk,) = mapper.primary_key
    reloaded = session.scalars(select(model_class).where(pk == obj_id)).one_or_none()
    assert reloaded is not None, f"{model_class.__name__} {obj_id!r} no longer exists"
    differences = [
        f"  {name}: expected {expected!r}, found {getattr(reloaded, name)!r}"
        for name, expected in original_values.items()
        if getattr(reloaded, name) != expected
    ]
    assert not differences, (
        f"rollback did not restore {model_class.__name__} {obj_id!r}:\n" + "\n".join(differences)
    )
    return reloaded
