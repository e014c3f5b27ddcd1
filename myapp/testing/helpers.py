"""Test helpers: persisted fixtures, commits and rollbacks inside one test.

All of them take ``db`` (the fixture) or a session, and work on the test's
session: in the ``db`` fixture, a "commit" is a savepoint release inside the
test's outer transaction, so committed fixture data survives the defensive
rollbacks of the code under test and still vanishes after the test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import event, inspect, select

from myapp.db import join_transaction
from myapp.db.manager import unit_manager
from myapp.db.nesting import Nesting, Unit, UnitSavepoint
from myapp.db.session import begin_implicit

T = TypeVar("T")


def _session(db: Any) -> Any:
    """``db.session`` for the ``db`` fixture, or ``db`` itself when given a session."""
    return getattr(db, "session", db)


def _pk_filter(model_class: type, identity: Any) -> list[Any]:
    columns = inspect(model_class).primary_key
    values = identity if isinstance(identity, tuple) else (identity,)
    if len(values) != len(columns):
        raise ValueError(
            f"{model_class.__name__} has a {len(columns)}-column primary key; got {identity!r}"
        )
    return [col == value for col, value in zip(columns, values, strict=True)]


def persisted_fixture(db: Any, factory_instance: T, model_class: type[T], **kwargs: Any) -> T:
    """Commit ``factory_instance``, reload it from the database and assert that it exists.

    ``kwargs`` are set on the instance before the commit. Returns the reloaded
    object, attached to ``db.session``. Use it in fixtures whose objects the
    code under test must find after its defensive rollback (``engine.run``).
    """
    if not isinstance(factory_instance, model_class):
        raise TypeError(
            f"persisted_fixture: expected a {model_class.__name__}, "
            f"got {type(factory_instance).__name__}"
        )
    session = _session(db)
    for name, value in kwargs.items():
        setattr(factory_instance, name, value)
    session.add(factory_instance)
    session.commit()
    identity = inspect(factory_instance).identity
    if identity is None:
        raise AssertionError(f"{model_class.__name__} has no identity after the commit")
    session.expire_all()
    reloaded = session.scalars(
        select(model_class).where(*_pk_filter(model_class, identity))
    ).one_or_none()
    if reloaded is None:
        raise AssertionError(f"{model_class.__name__}{identity!r} was not persisted")
    return reloaded


@contextmanager
def ensure_committed(db: Any) -> Iterator[Any]:
    """Commit everything pending in ``db.session`` now, and again at the end of the block.

    Yields the session. Use it around code that starts with a defensive
    rollback (``engine.run``): whatever the test created before is committed
    (a savepoint release under the ``db`` fixture) and so survives it. If the
    block raises, nothing more is committed. Refused inside a unit of work
    the test opened itself (``db_transaction()``, ``with transaction.manager:``,
    ``nested_savepoint()``), where a commit cannot happen.
    """
    session = _session(db)
    nesting = unit_manager().nesting
    txn = nesting.manager.current
    if txn is not None and txn.isDoomed():
        raise RuntimeError(
            "ensure_committed() in a doomed transaction cannot commit: in the test suite this "
            "is the @pytest.mark.doomed mode; drop the marker to commit"
        )
    if nesting.in_unit_of_work():
        raise RuntimeError(
            "ensure_committed() inside an open unit of work cannot commit: leave the "
            "db_transaction(), 'with transaction.manager:' or nested_savepoint() block first"
        )
    session.commit()
    yield session
    session.commit()


class _Floor(Unit):
    """The unit :func:`nested_savepoint` puts on the nesting stack.

    Units of work inside it nest (it is an enclosing unit); ``session.commit()``
    only flushes and ``session.rollback()`` returns to its savepoint (re-taken,
    so that work done after a rollback is still covered).
    """

    kind = "nested_savepoint()"

    def session_commit(self, nesting: Nesting, session: Any) -> None:
        session.flush()

    def session_rollback(self, nesting: Nesting, session: Any) -> None:
        assert self.savepoint is not None
        self.savepoint.rollback()
        self.savepoint = UnitSavepoint(self.txn, session)


@contextmanager
def nested_savepoint(db: Any) -> Iterator[Any]:
    """A savepoint whose changes are all rolled back at exit, even those the block committed.

    Inside, ``db.session.commit()`` only flushes, ``db.session.rollback()``
    returns to the savepoint, and ``db_transaction()`` nests (a savepoint of
    its own) instead of committing. A unit of work that commits by itself (a
    durable ``db_transaction``, ``engine.run``, a batch) is refused there:
    its commit could not be undone; so is ``transaction.commit()``. For
    partial-rollback scenarios inside one test; the ``db`` fixture already
    isolates tests from each other.
    """
    session = _session(db)
    nesting = unit_manager().nesting
    txn = nesting.manager.current
    if txn is None:
        txn = begin_implicit(nesting.manager)
    join_transaction(session)
    floor = _Floor(txn, outermost=False, savepoint=UnitSavepoint(txn, session))
    nesting.push(floor)
    try:
        yield session
    finally:
        nesting.pop(floor)
        assert floor.savepoint is not None
        floor.savepoint.rollback()
        session.expire_all()


def capture_original_values(obj: Any, fields: Iterable[str]) -> dict[str, Any]:
    """Snapshot ``fields`` of the persistent ``obj`` for :func:`verify_rollback_restores_values`.

    Expired attributes are loaded from the database first. Raises
    ``ValueError`` if ``obj`` is not in the database yet or one of the fields
    has a change not flushed yet: its current value would not be an original.
    """
    state = inspect(obj)
    if state.key is None:
        raise ValueError(
            f"capture_original_values: this {type(obj).__name__} is not in the database yet; "
            "flush or commit it first"
        )
    values = {}
    for name in fields:
        value = getattr(obj, name)
        if name in state.attrs and state.attrs[name].history.has_changes():
            raise ValueError(
                f"capture_original_values: {type(obj).__name__}.{name} has an unflushed change "
                f"({value!r}); capture the values before modifying the object"
            )
        values[name] = copy.deepcopy(value)
    return values


def verify_rollback_restores_values(
    session: Any, model_class: type[T], obj_id: Any, original_values: Mapping[str, Any]
) -> T:
    """Assert that the row ``obj_id`` holds ``original_values`` in the database.

    Expires the session (``db`` or a session), queries afresh, and fails
    with a message listing every field that differs, expected vs found.
    Returns the reloaded object.
    """
    session = _session(session)
    session.expire_all()
    reloaded = session.scalars(
        select(model_class).where(*_pk_filter(model_class, obj_id))
    ).one_or_none()
    if reloaded is None:
        raise AssertionError(f"{model_class.__name__} {obj_id!r} no longer exists")
    differences = [
        f"  {name}: expected {expected!r}, found {getattr(reloaded, name)!r}"
        for name, expected in original_values.items()
        if getattr(reloaded, name) != expected
    ]
    if differences:
        # raised, not asserted: the message stays exactly this under assertion rewriting
        raise AssertionError(
            f"the rollback did not restore {model_class.__name__} {obj_id!r} "
            f"({len(differences)} field(s) differ):\n" + "\n".join(differences)
        )
    return reloaded


def lock_waiters(
    engine: Any,
    query_like: str,
    at_least: int = 1,
    timeout: float = 30,
    give_up: Callable[[], bool] | None = None,
) -> int:
    """Wait until ``at_least`` sessions wait on a lock while running ``query_like``.

    PostgreSQL (``pg_stat_activity``) and MySQL/MariaDB (sessions whose statement is in
    InnoDB's ``LOCK WAIT`` or still running after a second); ``query_like`` is a case-insensitive
    ``LIKE`` pattern. Returns how many sessions wait once there are enough, or when
    ``timeout`` seconds passed or ``give_up()`` answered True (say, the thread
    that should block has ended): a test asserts on the count, then releases
    the lock it holds.
    """
    import time

    from sqlalchemy import text

    statement = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query ILIKE :query"
    )
    if engine.dialect.name in ("mysql", "mariadb"):
        # InnoDB's LOCK WAIT, or a statement still running after a second (MariaDB does not
        # always list a transaction blocked in its first locking read in INNODB_TRX)
        statement = text(
            "SELECT count(*) FROM information_schema.processlist p"
            " LEFT JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id"
            " WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID() AND p.command = 'Query'"
            " AND LOWER(p.info) LIKE LOWER(:query)"
            " AND (t.trx_state = 'LOCK WAIT' OR p.time >= 1)"
        )
    deadline = time.monotonic() + timeout
    with engine.connect() as probe:
        while True:
            waiting = int(probe.scalar(statement, {"query": query_like}))
            probe.rollback()  # pg_stat_activity is a snapshot per transaction
            done = give_up is not None and give_up()
            if waiting >= at_least or done or time.monotonic() > deadline:
                return waiting
            time.sleep(0.02)


@contextmanager
def count_events(target: Any, *names: str) -> Iterator[dict[str, int]]:
    """Count SQLAlchemy events (``commit``, ``rollback``, ``release_savepoint``...) on ``target``.

    Yields a dict of counts, name -> times the event fired inside the block.
    """
    counts = dict.fromkeys(names, 0)
    listeners = []
    for name in names:

        def listener(*args: Any, _name: str = name) -> None:
            counts[_name] += 1

        event.listen(target, name, listener)
        listeners.append((name, listener))
    try:
        yield counts
    finally:
        for name, listener in listeners:
            event.remove(target, name, listener)
