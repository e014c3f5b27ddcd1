"""myapp.db.events: a listener on every engine, even one at a recycled address.

No database server: in-memory SQLite engines, each dropped after use.
"""

from __future__ import annotations

import gc
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from myapp.db.events import listen_once
from myapp.db.guard import _on_error, install_failure_guard
from myapp.db.model import Base
from myapp.db.readpath import _map_read_only, install_error_mapping
from myapp.models import Event

FRESH = 2000


def _listeners(engine: Any) -> list[Any]:
    return list(engine.dialect.dispatch.handle_error)


def _engines_whose_dialect_outlives_them(n: int) -> list[Any]:
    """``n`` engines that flushed an ORM row, then were dropped: their dialects live on."""
    kept = []
    for i in range(n):
        engine = create_engine("sqlite://")
        install_failure_guard(engine)
        install_error_mapping(engine)
        Base.metadata.create_all(engine, tables=[Event.__table__])
        with Session(engine) as session:
            session.add(Event(id=f"e{i}", title="t"))
            session.flush()
            session.rollback()
        kept.append(engine.dialect)
        engine.dispose()
        del engine
    gc.collect()
    return kept


def test_sqlalchemy_keys_dialect_listeners_by_the_engine() -> None:
    """The library behaviour :mod:`myapp.db.events` works around (fails if SQLAlchemy changes it).

    A ``handle_error`` listener given to an engine is stored on its dialect,
    while ``event.contains`` looks it up by the engine: a dialect that outlives
    its engine keeps the engine's entry alive for whatever engine comes next
    at the same address.
    """
    engine = create_engine("sqlite://")

    def listener(context: Any) -> None:
        return None

    event.listen(engine, "handle_error", listener)
    assert listener in _listeners(engine)  # stored on the dialect...
    assert event.contains(engine, "handle_error", listener)  # ...registered under the engine
    assert not event.contains(engine.dialect, "handle_error", listener)


def test_every_new_engine_gets_the_guard_and_the_read_only_mapping() -> None:
    dialects = _engines_whose_dialect_outlives_them(150)
    assert all(d is not None for d in dialects)
    missing = 0
    for _ in range(FRESH):
        engine = create_engine("sqlite://")
        install_failure_guard(engine)
        install_error_mapping(engine)
        listeners = _listeners(engine)
        missing += _on_error not in listeners or _map_read_only not in listeners
        del engine, listeners
    assert missing == 0, f"{missing} of {FRESH} new engines were left without their listeners"


def test_listen_once_is_idempotent_per_engine() -> None:
    engine = create_engine("sqlite://")
    calls: list[Any] = []

    def listener(context: Any) -> None:
        calls.append(context)

    assert listen_once(engine, "handle_error", listener)
    assert not listen_once(engine, "handle_error", listener)
    assert _listeners(engine).count(listener) == 1
