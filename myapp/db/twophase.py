"""Two-phase commit across databases: the coordinator, its decision record, and recovery.

A unit of work whose sessions **wrote to two or more databases** (the main one
and the named ones of :meth:`~myapp.db.Database.add_database`) commits with
PostgreSQL's two-phase commit; every other unit of work commits as before, in
one phase, with no extra round trip. The decision is made at commit time, by
the :class:`Coordinator` joined to the transaction as soon as sessions of two
databases are in it:

1. ``tpc_begin``: every session flushes (zope.sqlalchemy), so each one knows
   whether it wrote (zope.sqlalchemy's ``STATUS_CHANGED``);
2. ``commit`` (the coordinator's): if the sessions that wrote belong to two or
   more databases, each of them gets a global transaction id (:func:`make_gid`);
3. ``tpc_vote``: each of those sessions sends ``PREPARE TRANSACTION 'gid'``
   (its data manager, :mod:`myapp.db.datamanager`); sessions that only read
   commit in one phase. Then the coordinator, whose vote comes last, writes the
   **decision record**: a row ``(txid, 'commit')`` in
   ``myapp_twophase.decisions`` of the *main* database, in autocommit, so it
   is durable before anything else happens;
4. ``tpc_finish``: ``COMMIT PREPARED 'gid'`` in every database.

A failure before the decision record is written rolls back every prepared
transaction (``ROLLBACK PREPARED``); a failure after it leaves the rest to
recovery, which commits them. If the connection is lost *while* the decision
is written (it may or may not be committed), nothing is rolled back: the
prepared transactions stay in doubt and recovery follows the record.

**Recovery** (:func:`recover`, ``myapp recover``) lists, on every configured
database, the prepared transactions whose gid is myapp's and that are older
than ``min_age`` seconds (younger ones may belong to a unit still committing),
and resolves each from the decision record: a ``commit`` row commits it;
no row means the coordinator never decided commit, and recovery first writes
an ``abort`` row (``INSERT ... ON CONFLICT DO NOTHING``) then rolls it back.
The primary key on ``txid`` arbitrates between a recovery and a coordinator
that was only slow: whichever inserts first wins, and a coordinator that finds
an ``abort`` row rolls back. Recovery never guesses, never touches another
application's prepared transactions, and a second run finds nothing to do.
Rows whose transactions are all resolved are deleted after ``purge_after``
seconds.

The decision table is created by this module (``CREATE ... IF NOT EXISTS``,
once per process) in its own schema, ``myapp_twophase``: it belongs to this
layer, not to the application's models, and alembic's autogenerate (which
compares the default schema only) never proposes to drop it.

Only PostgreSQL takes part: :func:`check_backends` refuses SQLite, and any
mix with it, when the databases are configured.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from sqlalchemy.engine import Connection, Engine
from zope.sqlalchemy import datamanager as zdm

from . import compat
from .errors import DatabaseError
from .settings import DatabaseConfigError


class Databases(Protocol):
    """What the coordinator and recovery need of :class:`myapp.db.Database` (the main one)."""

    name: str
    engine: Engine
    databases: Any  # name -> Database: each has an ``engine``


log = logging.getLogger("myapp.db.twophase")

#: ``Transaction.extension`` key: the transaction's :class:`Coordinator` (if any).
COORDINATOR = "myapp.twophase"
#: ``Transaction.extension`` key: the session data managers joined to the transaction.
PARTICIPANTS = "myapp.participants"
#: ``Session.info`` key of the session's ``Database`` (the one :mod:`myapp.db.session` sets).
DATABASE_INFO = "myapp.database"

#: every gid myapp prepares starts with this: ``myapp-2pc:<txid>:<database>:<n>``
GID_PREFIX = "myapp-2pc"
_GID = re.compile(r"^myapp-2pc:([0-9a-f]{32}):([a-z][a-z0-9_]*):(\d+)$")
SCHEMA = "myapp_twophase"
DECISIONS = f"{SCHEMA}.decisions"
_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; "
    f"CREATE TABLE IF NOT EXISTS {DECISIONS} ("
    "txid text PRIMARY KEY, "
    "outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')), "
    "gids text NOT NULL DEFAULT '', "
    "decided_at timestamptz NOT NULL DEFAULT now())"
)

#: a coordinator whose first PREPARE is older than this does not decide commit (seconds);
#: far below ``purge_after``, so a decision row is never purged under a live coordinator
DECISION_DEADLINE = 300.0
#: recovery leaves alone prepared transactions younger than this (seconds)
DEFAULT_MIN_AGE = 30.0
#: recovery deletes resolved decision rows older than this (seconds)
DEFAULT_PURGE_AFTER = 3600.0
#: ``myapp check`` warns about in-doubt transactions older than this (seconds)
DEFAULT_WARN_AGE = 60.0


class TwoPhaseCommitError(DatabaseError):
    """A two-phase commit did not commit. ``in_doubt``: recovery will finish it (see message)."""

    def __init__(self, message: str, *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


# -- global transaction ids ---------------------------------------------------


def make_gid(txid: str, database: str, n: int) -> str:
    """The gid of participant ``n`` (in ``database``) of coordinator transaction ``txid``."""
    return f"{GID_PREFIX}:{txid}:{database}:{n}"


def parse_gid(gid: str) -> str | None:
    """The coordinator transaction id of a gid made by :func:`make_gid`; None for other gids."""
    match = _GID.match(gid)
    return match.group(1) if match else None


# -- configuration ------------------------------------------------------------


def check_backends(main: Engine, name: str, other: Engine) -> None:
    """Refuse a second database unless both it and the main one are PostgreSQL.

    SQLite has no prepared transactions, so a unit of work writing to SQLite
    and another database could not commit atomically.
    """
    backends = {main.url.get_backend_name(), other.url.get_backend_name()}
    if backends != {"postgresql"}:
        raise DatabaseConfigError(
            f"the database {name!r} ({other.url.get_backend_name()}) cannot be configured "
            f"next to the main database ({main.url.get_backend_name()}): a unit of work "
            "writing to two databases commits with two-phase commit, which needs PostgreSQL "
            "for every database (SQLite has no prepared transactions; myapp's coordinator "
            "does not drive MySQL/MariaDB's XA transactions); use PostgreSQL for "
            "both, or leave myapp.databases empty"
        )


# -- running statements outside the transaction block ------------------------


def _raw(connection: Connection) -> Any:
    """The psycopg connection under a SQLAlchemy connection."""
    return connection.connection.dbapi_connection


def execute_outside_block(raw: Any, sql: str, params: Any = None) -> Any:
    """Run ``sql`` on the idle psycopg connection ``raw`` in autocommit (its own transaction).

    After ``PREPARE TRANSACTION`` the session's connection is outside any
    transaction block: the decision record and ``COMMIT PREPARED`` run there,
    with no extra connection.
    """
    flip = not raw.autocommit
    if flip:
        raw.autocommit = True
    try:
        return raw.execute(sql, params)
    finally:
        if flip and not raw.closed:
            try:
                raw.autocommit = False
            except psycopg.Error:  # the connection broke meanwhile: the pool discards it
                pass


_ensured: set[str] = set()


def ensure_decision_table(raw: Any, key: str) -> None:
    """Create the decision table once per process and database (``key``), idempotently."""
    if key in _ensured:
        return
    for attempt in range(3):
        try:
            execute_outside_block(raw, _DDL)
            break
        except psycopg.errors.UniqueViolation:  # created concurrently by another process
            if attempt == 2:
                raise
    _ensured.add(key)


def _database_name(dm: Any) -> str:
    database = dm.session.info.get(DATABASE_INFO)
    return getattr(database, "name", "main")


def _root(database: Any) -> Any:
    return getattr(database, "parent", None) or database


# -- the coordinator ----------------------------------------------------------


def enlist(dm: Any, txn: Any) -> None:
    """Record the session data manager ``dm`` in ``txn``; two databases: join a coordinator.

    Sessions without a ``Database`` (a bare session factory) are not
    coordinated. Costs nothing while only one database is in the transaction.
    """
    database = dm.session.info.get(DATABASE_INFO)
    if database is None:
        return
    participants = txn.extension.setdefault(PARTICIPANTS, [])
    participants.append(dm)
    if COORDINATOR in txn.extension:
        return
    root = _root(database)
    for other in participants:
        other_db = other.session.info.get(DATABASE_INFO) if other.session is not None else None
        if other_db is not None and other_db is not database and _root(other_db) is root:
            txn.extension[COORDINATOR] = Coordinator(txn, root)
            return


def coordinator_of(txn: Any) -> Coordinator | None:
    """The coordinator of ``txn``, or None (one database in it: one-phase commit)."""
    return txn.extension.get(COORDINATOR)


class Coordinator:
    """Decides whether a transaction commits in two phases, and records the decision.

    A data manager joined to the transaction, sorted after the sessions' data
    managers: its ``tpc_vote`` runs once every session has prepared.
    """

    transaction_manager = None

    def __init__(self, txn: Any, root: Databases) -> None:
        self.txn = txn
        self.root = root
        self.txid: str | None = None
        self.prepared: list[Any] = []  # the data managers that prepared, in order
        self.first_prepare: float | None = None
        self.decided = False
        self.in_doubt = False
        txn.join(self)

    def sortKey(self) -> str:
        return "~~~~myapp.twophase"  # last: after zope.sqlalchemy's "~sqlalchemy:..." keys

    # the sessions' data managers ask these ------------------------------------

    def gid_for(self, dm: Any) -> str | None:
        """The gid ``dm`` must prepare with, or None (it commits in one phase)."""
        return getattr(dm, "gid", None) if self.txid is not None else None

    def prepared_now(self, dm: Any) -> None:
        if self.first_prepare is None:
            self.first_prepare = time.monotonic()
        self.prepared.append(dm)

    # the transaction package's protocol ---------------------------------------

    def abort(self, txn: Any) -> None:
        # The transaction aborts, or a savepoint taken before this coordinator joined
        # rolls back and removes it: the next session to join makes a new one if needed.
        if txn.extension.get(COORDINATOR) is self:
            del txn.extension[COORDINATOR]

    def savepoint(self) -> _Unchanged:
        return _Unchanged()

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        """Every session has flushed: give a gid to the writers if they span two databases."""
        writers = [
            dm
            for dm in txn.extension.get(PARTICIPANTS, ())
            if dm.session is not None
            and dm.tx is not None
            and compat.session_status(dm.session) == zdm.STATUS_CHANGED
        ]
        if len({_database_name(dm) for dm in writers}) < 2:
            return  # zero or one database written: every session commits in one phase
        self.txid = uuid.uuid4().hex
        for n, dm in enumerate(writers):
            dm.gid = make_gid(self.txid, _database_name(dm), n)

    def tpc_vote(self, txn: Any) -> None:
        """Write the decision record (every writer has prepared): from here it commits."""
        if self.txid is None or not self.prepared:
            return
        assert self.first_prepare is not None
        if time.monotonic() - self.first_prepare > DECISION_DEADLINE:
            raise TwoPhaseCommitError(
                f"two-phase commit {self.txid}: the prepares took more than "
                f"{DECISION_DEADLINE:.0f} s; rolled back"
            )
        gids = " ".join(dm.gid for dm in self.prepared)
        with self._decision_connection() as raw:
            try:
                ensure_decision_table(raw, _engine_key(self.root.engine))
                execute_outside_block(
                    raw,
                    f"INSERT INTO {DECISIONS} (txid, outcome, gids) VALUES (%s, 'commit', %s)",
                    (self.txid, gids),
                )
            except psycopg.errors.UniqueViolation:
                raise TwoPhaseCommitError(
                    f"two-phase commit {self.txid}: recovery had rolled it back (an 'abort' "
                    "decision was recorded first); rolled back"
                ) from None
            except psycopg.Error as exc:
                if raw.closed or raw.broken:
                    self.in_doubt = True  # the INSERT may have committed: recovery decides
                    raise TwoPhaseCommitError(
                        f"two-phase commit {self.txid}: the connection was lost while the "
                        f"decision was written; the outcome is in doubt until 'myapp recover' "
                        f"resolves it ({exc})",
                        in_doubt=True,
                    ) from exc
                raise
        self.decided = True
        log.info("two-phase commit %s decided: commit (%s)", self.txid, gids)

    def tpc_finish(self, txn: Any) -> None:
        pass

    def tpc_abort(self, txn: Any) -> None:
        pass

    @contextmanager
    def _decision_connection(self) -> Iterator[Any]:
        """The main database's prepared session connection if it took part, else a pooled one."""
        for dm in self.prepared:
            if dm.session.info.get(DATABASE_INFO) is self.root:
                yield dm.prepared_raw
                return
        pooled = self.root.engine.raw_connection()
        try:
            yield pooled.dbapi_connection
        finally:
            pooled.close()

    # second phase, on each participant's own connection -----------------------

    def finish(self, dm: Any) -> None:
        """``COMMIT PREPARED`` ``dm``'s transaction; a failure leaves it to recovery."""
        try:
            execute_outside_block(dm.prepared_raw, f"COMMIT PREPARED '{dm.gid}'")
            log.debug("committed prepared %s", dm.gid)
        except psycopg.Error as exc:
            log.error(
                "COMMIT PREPARED %s failed (%s): the decision is commit; 'myapp recover' "
                "will commit it",
                dm.gid,
                exc,
            )

    def cancel(self, dm: Any) -> None:
        """``ROLLBACK PREPARED`` ``dm``'s transaction, unless the decision may be commit."""
        if self.in_doubt or self.decided:
            log.error(
                "two-phase commit %s: %s left in doubt for 'myapp recover'", self.txid, dm.gid
            )
            return
        try:
            execute_outside_block(dm.prepared_raw, f"ROLLBACK PREPARED '{dm.gid}'")
        except psycopg.Error as exc:
            log.warning(
                "ROLLBACK PREPARED %s failed (%s): 'myapp recover' will roll it back", dm.gid, exc
            )


class _Unchanged:
    """The coordinator's savepoint: it holds nothing a savepoint could roll back."""

    def rollback(self) -> None:
        pass


def prepare(dm: Any, connection: Connection) -> None:
    """``PREPARE TRANSACTION`` the session of ``dm`` (through SQLAlchemy: errors are wrapped)."""
    connection.exec_driver_sql(f"PREPARE TRANSACTION '{dm.gid}'")
    dm.prepared_raw = _raw(connection)
    log.debug("prepared %s", dm.gid)


def _engine_key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# -- recovery -----------------------------------------------------------------


@dataclass(frozen=True)
class PreparedTransaction:
    """A prepared transaction of myapp's found on a database."""

    database: str
    gid: str
    txid: str
    age: float  # seconds since its PREPARE


@dataclass
class RecoveryReport:
    """What :func:`recover` found and did."""

    committed: list[PreparedTransaction] = field(default_factory=list)
    rolled_back: list[PreparedTransaction] = field(default_factory=list)
    skipped: list[PreparedTransaction] = field(default_factory=list)  # younger than min_age
    failed: list[tuple[PreparedTransaction, str]] = field(default_factory=list)
    #: finished by another session first (their unit of work, or another recovery)
    gone: list[PreparedTransaction] = field(default_factory=list)
    purged: int = 0

    def lines(self) -> list[str]:
        out = [f"committed {p.database} {p.gid} (decision: commit)" for p in self.committed]
        out += [f"rolled back {p.database} {p.gid} (no commit decision)" for p in self.rolled_back]
        out += [
            f"left alone {p.database} {p.gid} (prepared {p.age:.0f} s ago: may be committing)"
            for p in self.skipped
        ]
        out += [
            f"resolved elsewhere {p.database} {p.gid} (by its unit of work or another recovery)"
            for p in self.gone
        ]
        out += [f"FAILED {p.database} {p.gid}: {why}" for p, why in self.failed]
        return out

    def summary(self) -> str:
        return (
            f"recover: {len(self.committed)} committed, {len(self.rolled_back)} rolled back, "
            f"{len(self.skipped)} left alone (younger than the bound), {len(self.gone)} "
            f"resolved elsewhere, {len(self.failed)} failed, {self.purged} old decision "
            "record(s) purged"
        )


def _databases(root: Databases) -> list[tuple[str, Engine]]:
    return [(root.name, root.engine)] + [(n, d.engine) for n, d in root.databases.items()]


#: SQLSTATEs of COMMIT/ROLLBACK PREPARED for a gid no longer prepared (undefined_object) or
#: being finished by another session right now (object_not_in_prerequisite_state: "is busy")
_RESOLVED_ELSEWHERE = ("42704", "55000")

_LIST = (
    "SELECT gid, EXTRACT(EPOCH FROM now() - prepared)::float8 FROM pg_prepared_xacts "
    "WHERE database = current_database() AND starts_with(gid, 'myapp-2pc:') ORDER BY prepared"
)


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def prepared_transactions(root: Databases) -> list[PreparedTransaction]:
    """myapp's prepared transactions on every configured PostgreSQL database, oldest first."""
    found: list[PreparedTransaction] = []
    for name, engine in _databases(root):
        if engine.url.get_backend_name() != "postgresql":
            continue
        with _autocommit(engine) as connection:
            for gid, age in connection.exec_driver_sql(_LIST):
                txid = parse_gid(gid)
                if txid is not None:
                    found.append(PreparedTransaction(name, gid, txid, float(age)))
    return found


def _decide(connection: Connection, txid: str) -> str:
    """The recorded outcome of ``txid``; records ``abort`` first if there is none."""
    outcome = connection.exec_driver_sql(
        f"WITH ins AS (INSERT INTO {DECISIONS} (txid, outcome) VALUES (%(t)s, 'abort') "
        "ON CONFLICT (txid) DO NOTHING RETURNING outcome) "
        f"SELECT outcome FROM ins UNION ALL SELECT outcome FROM {DECISIONS} WHERE txid = %(t)s",
        {"t": txid},
    ).scalar()
    if outcome is None:  # a concurrent recovery inserted it after this statement's snapshot
        outcome = connection.exec_driver_sql(
            f"SELECT outcome FROM {DECISIONS} WHERE txid = %(t)s", {"t": txid}
        ).scalar_one()
    return str(outcome)


def recover(
    root: Databases,
    *,
    min_age: float = DEFAULT_MIN_AGE,
    purge_after: float = DEFAULT_PURGE_AFTER,
) -> RecoveryReport:
    """Resolve myapp's in-doubt prepared transactions on every database from the decision record.

    Safe at any time, concurrently with traffic and with another recovery:
    transactions prepared less than ``min_age`` seconds ago are left alone
    (their unit of work may still be committing), and the decision of each
    older one is read, or recorded as ``abort``, under the decision table's
    primary key before anything is done. Decision rows older than
    ``purge_after`` seconds whose transactions are all resolved are deleted.
    """
    report = RecoveryReport()
    if root.engine.url.get_backend_name() != "postgresql":
        return report
    found = prepared_transactions(root)
    engines = dict(_databases(root))
    with _autocommit(root.engine) as main:
        raw = _raw(main)
        ensure_decision_table(raw, _engine_key(root.engine))
        outcomes: dict[str, str] = {}
        for prepared in found:
            if prepared.age < min_age:
                report.skipped.append(prepared)
                continue
            if prepared.txid not in outcomes:
                outcomes[prepared.txid] = _decide(main, prepared.txid)
            outcome = outcomes[prepared.txid]
            verb = "COMMIT" if outcome == "commit" else "ROLLBACK"
            try:
                with _autocommit(engines[prepared.database]) as connection:
                    connection.exec_driver_sql(f"{verb} PREPARED '{prepared.gid}'")
            except Exception as exc:
                if getattr(getattr(exc, "orig", None), "sqlstate", None) in _RESOLVED_ELSEWHERE:
                    report.gone.append(prepared)  # its coordinator (or a recovery) was first
                else:
                    report.failed.append((prepared, " ".join(str(exc).split())[:200]))
                continue
            (report.committed if outcome == "commit" else report.rolled_back).append(prepared)
        still = {p.txid for p in prepared_transactions(root)}
        report.purged = main.exec_driver_sql(
            f"DELETE FROM {DECISIONS} WHERE decided_at < now() - make_interval(secs => %(s)s) "
            "AND NOT (txid = ANY(%(still)s::text[]))",
            {"s": purge_after, "still": sorted(still)},
        ).rowcount
    for line in report.lines():
        log.info("recover: %s", line)
    return report


def in_doubt_lines(root: Databases, *, older_than: float = DEFAULT_WARN_AGE) -> list[str]:
    """``myapp check``'s lines about two-phase commit: none with a single database."""
    if not root.databases:
        return []
    lines: list[str] = []
    for name, engine in _databases(root):
        with _autocommit(engine) as connection:
            limit = connection.exec_driver_sql("SHOW max_prepared_transactions").scalar_one()
        if int(limit) == 0:
            lines.append(
                f"warning: two-phase commit impossible on {name}: max_prepared_transactions = 0 "
                "(units of work writing to two databases fail); set it to at least the pool size"
            )
    old = [p for p in prepared_transactions(root) if p.age >= older_than]
    by_db: dict[str, list[PreparedTransaction]] = {}
    for p in old:
        by_db.setdefault(p.database, []).append(p)
    for name, items in by_db.items():
        lines.append(
            f"warning: {len(items)} in-doubt prepared transaction(s) on {name} older than "
            f"{older_than:.0f} s (oldest {max(p.age for p in items):.0f} s): they hold locks "
            "and block VACUUM; run 'myapp recover'"
        )
    if not old:
        lines.append(f"two-phase commit: no in-doubt transaction older than {older_than:.0f} s")
    return lines


def txids(items: Iterable[PreparedTransaction]) -> set[str]:
    """The coordinator transaction ids of ``items``."""
    return {p.txid for p in items}
