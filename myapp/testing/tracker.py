"""The leak guard's connection tracker: which pooled connections are out, and where from.

Installed on every engine the toolkit makes (the run's ``dbengine``, the
engines of :class:`~myapp.testing.committed.CommittedRows`, any engine given
to :func:`~myapp.testing.isolation.isolated_db`). The plugin notes each
tracker's checkout count before every test and, after the test's teardown,
reclaims and reports what the test left checked out: O(1) per engine when
nothing is out.
"""

from __future__ import annotations

import itertools
import os
import sys
import weakref
from threading import get_ident
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

_SQLALCHEMY_DIR = os.path.dirname(sqlalchemy.__file__)
_HERE = __file__
#: where the leak guard says isolated_db's own connection was checked out
_OWN_LOCATION = (_HERE, 0, "isolated_db (the test's own connection)")
#: checkout numbers, shared by every tracker (so one mark covers every engine)
_NUMBERS = itertools.count(1)


def _caller() -> tuple[str, int, str]:
    """Where the code that checked a connection out lives (first frame outside SQLAlchemy).

    Cheap on purpose (it runs on every checkout): the location is formatted
    only when a leak is reported.
    """
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if not code.co_filename.startswith(_SQLALCHEMY_DIR) and code.co_filename != _HERE:
            return code.co_filename, frame.f_lineno, code.co_name
        frame = frame.f_back
    return "<unknown>", 0, "?"


def _format_location(location: tuple[str, int, str]) -> str:
    filename, lineno, name = location
    try:
        filename = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        pass
    return f"{filename}:{lineno} in {name}"


class ConnectionTracker:
    """Which pooled connections of an engine are checked out, and where from.

    Installed once per engine (two pool listeners). Every checkout is
    numbered: :func:`isolated_db` notes the number before a test
    (:meth:`snapshot`) and, after it, reports and invalidates whatever was
    checked out since and is still out (:meth:`reclaim_since`: closed and
    returned to the pool), so a leak fails one test instead of starving the
    rest of the run. Both are O(1) when nothing is left checked out.
    """

    _trackers: weakref.WeakKeyDictionary[Engine, ConnectionTracker] = weakref.WeakKeyDictionary()
    #: every live tracker (the per-test guard looks at those with connections out)
    _all: weakref.WeakSet[ConnectionTracker] = weakref.WeakSet()

    def __init__(self, engine: Engine) -> None:
        #: pool record -> (weak proxy, checkout number, where it was checked out)
        self.out: dict[Any, tuple[weakref.ref[Any], int, tuple[str, int, str]]] = {}
        self.checkouts = 0
        self.label = engine.url.render_as_string(hide_password=True)
        # the thread whose next checkout is isolated_db's own connection (see connect_own)
        self._own_thread: int | None = None
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)
        ConnectionTracker._all.add(self)

    @classmethod
    def for_engine(cls, engine: Engine) -> ConnectionTracker:
        tracker = cls._trackers.get(engine)
        if tracker is None:
            tracker = cls._trackers[engine] = cls(engine)
        return tracker

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self.checkouts += 1
        own = self._own_thread
        where = _OWN_LOCATION if own is not None and own == get_ident() else _caller()
        self.out[record] = (weakref.ref(proxy), next(_NUMBERS), where)

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        self.out.pop(record, None)

    def connect_own(self, engine: Engine) -> Connection:
        """``engine.connect()`` for :func:`isolated_db` itself (tracked; no caller walk)."""
        self._own_thread = get_ident()
        try:
            return engine.connect()
        finally:
            self._own_thread = None

    def snapshot(self) -> int:
        """A mark to pass to :meth:`reclaim_since` (checkouts are numbered across trackers)."""
        return next(_NUMBERS)

    def reclaim_since(self, before: int) -> list[str]:
        """Invalidate the connections checked out since ``before`` and still out.

        Returns where each was checked out.
        """
        out = self.out
        if not out:
            return []
        leaked = []
        for record in [r for r, entry in out.items() if entry[1] > before]:
            ref, _number, where = out.pop(record)
            leaked.append(_format_location(where))
            fairy = ref()
            if fairy is not None and fairy.dbapi_connection is not None:
                fairy.invalidate()  # closes the DBAPI connection and checks the slot back in
        return leaked


class LeakError(AssertionError):
    """A test left a connection checked out or a unit of work open (the leak guard)."""


def track(engine: Engine) -> Engine:
    """Put ``engine`` under the leak guard (idempotent); return it.

    Every engine the toolkit makes is tracked; call this on an engine your
    own fixture makes to have the guard check it too.
    """
    ConnectionTracker.for_engine(engine)
    return engine


def mark() -> int:
    """A mark before a test, for :func:`reclaim_all_since` (O(1))."""
    return next(_NUMBERS)


def reclaim_all_since(before: int) -> list[str]:
    """Reclaim what any tracked engine checked out since ``before`` and still has out.

    Returns where each leaked connection was checked out. O(1) per tracked
    engine when no connection is out.
    """
    leaked: list[str] = []
    for tracker in list(ConnectionTracker._all):
        if tracker.out:
            leaked.extend(tracker.reclaim_since(before))
    return leaked
