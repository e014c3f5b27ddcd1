"""Read replicas: which one may serve a read, and how each one is doing.

A :class:`ReplicaSet` holds zero or more replicas, each with a read engine
(:func:`myapp.db.readpath.create_read_engine`: autocommit, read-only by the
server). :meth:`ReplicaSet.choose` returns a replica that is up and whose
replay lag is under ``max_lag`` seconds, or None (then the primary serves the
read). A replica's state is checked at most every ``check_interval`` seconds,
by the request that finds it stale (one extra round trip to that replica, on
one request per interval); a replica whose connection fails in a request is
marked down at once (an engine ``handle_error`` listener) and skipped until its
next check. Nothing of this reaches the client: the request that met the
failure is replayed (:func:`myapp.db.pyramid.tag_retryable`) and reads from
another replica or the primary.

Lag is the replica's own estimate: 0 when it has replayed everything it
received, else the age of the last transaction it replayed
(``now() - pg_last_xact_replay_timestamp()``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, ExceptionContext, make_url

#: on the replica: is it one, and how stale is what it replayed. With the primary's current
#: WAL position (``%(primary)s``, or NULL when unknown): replayed up to it means no lag; else the
#: age of the last transaction replayed (NULL, reported as lagging, when it replayed none since
#: it started, or when it is not streaming and the primary's position is unknown)
LAG_SQL = """\
SELECT pg_is_in_recovery(), CASE
  WHEN NOT pg_is_in_recovery() THEN 0
  WHEN CAST(%(primary)s AS pg_lsn) IS NOT NULL
   AND pg_wal_lsn_diff(CAST(%(primary)s AS pg_lsn), pg_last_wal_replay_lsn()) <= 0 THEN 0
  WHEN CAST(%(primary)s AS pg_lsn) IS NULL AND pg_last_wal_receive_lsn() IS NULL THEN NULL
  WHEN CAST(%(primary)s AS pg_lsn) IS NULL
   AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
  ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"""


@dataclass(frozen=True)
class ReplicaState:
    """One replica at one check: ``state`` is ``ok``, ``lagging``, ``down`` or ``unknown``."""

    url: str
    state: str
    lag: float | None
    in_recovery: bool | None
    checked_at: float | None
    error: str | None = None

    def line(self) -> str:
        """One line for ``myapp check``."""
        lag = f"lag {self.lag:.3f} s" if self.lag is not None else "lag unknown"
        extra = f": {self.error}" if self.error else ""
        role = "" if self.in_recovery in (None, True) else " (not in recovery: a primary?)"
        return f"replica {self.url}: {self.state}, {lag}{role}{extra}"


class Replica:
    """One replica: its read engine, session factory and last known state."""

    def __init__(self, url: str, engine: Engine, factory: Callable[[], Any]) -> None:
        self.url = url
        self.engine = engine
        self.factory = factory
        self.state = ReplicaState(_safe_url(url), "unknown", None, None, None)
        self._lock = threading.Lock()
        event.listen(engine, "handle_error", self._on_error)

    def _on_error(self, context: ExceptionContext) -> None:
        # a lost connection, or one that could not be made: down until the next check
        if context.is_disconnect or context.connection is None:
            self.mark_down(str(context.original_exception).strip().splitlines()[0:1])

    def mark_down(self, error: Any) -> None:
        message = error[0] if isinstance(error, list) and error else str(error or "")
        self.state = ReplicaState(
            self.state.url, "down", None, None, time.monotonic(), message or "connection lost"
        )

    def check(self, max_lag: float, primary_lsn: str | None = None) -> ReplicaState:
        """Ask the replica its lag now (one round trip on a pooled connection).

        ``primary_lsn``: the primary's current WAL position, read just before
        (without it, the replica's own estimate: right after a restart it may
        not know how far behind it is, and is then reported lagging).
        """
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    in_recovery, lag = conn.exec_driver_sql(LAG_SQL, {"primary": primary_lsn}).one()
                    lag = None if lag is None else float(lag)
                else:
                    conn.execute(text("SELECT 1"))
                    in_recovery, lag = None, 0.0
        except Exception as exc:  # down: any failure to answer
            text_ = str(getattr(exc, "orig", exc)).strip()
            self.mark_down(text_.splitlines()[0] if text_ else type(exc).__name__)
            return self.state
        state = "ok" if lag is not None and lag <= max_lag else "lagging"
        self.state = ReplicaState(self.state.url, state, lag, in_recovery, time.monotonic(), None)
        return self.state

    def usable(
        self, max_lag: float, check_interval: float, primary_lsn: Callable[[], str | None]
    ) -> bool:
        """Is this replica up and close enough? Checks it again if its state is too old."""
        state = self.state
        stale = state.checked_at is None or time.monotonic() - state.checked_at >= check_interval
        if stale and self._lock.acquire(blocking=False):  # one thread checks, others use the last
            try:
                state = self.check(max_lag, primary_lsn())
            finally:
                self._lock.release()
        return state.state == "ok"


class ReplicaSet:
    """The replicas of a :class:`~myapp.db.Database` and the routing rule for reads."""

    def __init__(
        self,
        replicas: Sequence[Replica] = (),
        *,
        max_lag: float = 5.0,
        check_interval: float = 2.0,
        read_your_writes: float = 10.0,
    ) -> None:
        self.replicas = list(replicas)
        self.max_lag = max_lag
        self.check_interval = check_interval
        self.read_your_writes = read_your_writes
        #: an engine on the primary, for its current WAL position (set by the Database)
        self.primary: Engine | None = None
        self._next = 0

    def __bool__(self) -> bool:
        return bool(self.replicas)

    def __len__(self) -> int:
        return len(self.replicas)

    def choose(self) -> Replica | None:
        """A healthy replica (round robin among them), or None: read from the primary."""
        count = len(self.replicas)
        if not count:
            return None
        start = self._next
        self._next = (start + 1) % count
        for i in range(count):
            replica = self.replicas[(start + i) % count]
            if replica.usable(self.max_lag, self.check_interval, self.primary_lsn):
                return replica
        return None

    def primary_lsn(self) -> str | None:
        """The primary's current WAL position (one round trip), or None if unknown."""
        if self.primary is None or self.primary.dialect.name != "postgresql":
            return None
        try:
            with self.primary.connect() as conn:
                return str(conn.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar())
        except Exception:  # the primary's own trouble is not the replica's state
            return None

    def check(self, replica: Replica) -> ReplicaState:
        """Check ``replica`` now, against the primary's current WAL position."""
        return replica.check(self.max_lag, self.primary_lsn())

    def report(self) -> list[ReplicaState]:
        """Check every replica now; their states, in configuration order."""
        return [self.check(replica) for replica in self.replicas]

    def dispose(self, close: bool = True) -> None:
        for replica in self.replicas:
            replica.engine.dispose(close=close)


def _safe_url(url: str) -> str:
    """The URL without its password, for reports and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def replica_report(database: Any) -> list[ReplicaState]:
    """Each configured replica's state and lag, checked now (for ``myapp check``)."""
    replicas: ReplicaSet | None = getattr(database, "replicas", None)
    return replicas.report() if replicas else []


def replica_lines(database: Any) -> list[str]:
    """One line per configured replica, checked now (``myapp check`` prints them)."""
    return [state.line() for state in replica_report(database)]
