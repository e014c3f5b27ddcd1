"""Units of work across two PostgreSQL databases: one phase for one database, two for two.

Real servers (a private cluster with ``max_prepared_transactions > 0``), real
commits, checked from other connections.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError

from myapp.db import (
    Database,
    NestedTransactionError,
    current_session,
    db_read_only,
    db_transaction,
    on_commit,
    savepoint,
)

from .conftest import Pair


def _insert(name: str | None, id_: int, note: str = "x", table: str = "entries") -> None:
    current_session(name).execute(
        text(f"INSERT INTO {table} VALUES (:id{', :note' if table == 'entries' else ''})"),
        {"id": id_, "note": note},
    )


class Statements:
    """The SQL statements each database's engine sent (a listener on both engines)."""

    def __init__(self, db: Database) -> None:
        self.sent: dict[str, list[str]] = {}
        for database in (db, *db.databases.values()):
            sent = self.sent.setdefault(database.name, [])

            def listen(*args: Any, sent: list[str] = sent) -> None:
                sent.append(args[2].split()[0].upper())

            event.listen(database.engine, "before_cursor_execute", listen)

    def of(self, name: str) -> list[str]:
        return self.sent[name]


@pytest.fixture
def db(pair: Pair) -> Any:
    database = pair.database()
    yield database
    database.dispose()


def test_a_unit_writing_to_both_databases_commits_in_both_with_two_phase_commit(
    pair: Pair, db: Database
) -> None:
    statements = Statements(db)
    with db.scope():
        with db_transaction():
            _insert(None, 1, "main")
            _insert("ledger", 1, "ledger")
    assert pair.rows("main") == [(1, "main")]
    assert pair.rows("ledger") == [(1, "ledger")]
    assert statements.of("main") == ["INSERT", "PREPARE"]
    assert statements.of("ledger") == ["INSERT", "PREPARE"]
    assert pair.prepared() == []
    assert [outcome for _txid, outcome in pair.decisions()] == ["commit"]


def test_a_unit_writing_to_one_database_commits_in_one_phase_as_before(
    pair: Pair, db: Database
) -> None:
    statements = Statements(db)
    with db.scope():
        with db_transaction():
            _insert(None, 1)
        with db_transaction():  # reads the ledger, writes the main database only
            current_session("ledger").execute(text("SELECT count(*) FROM entries")).scalar()
            _insert(None, 2)
        with db_transaction():
            _insert("ledger", 3)
    assert statements.of("main") == ["INSERT", "INSERT"]
    assert statements.of("ledger") == ["SELECT", "INSERT"]
    assert pair.rows("main") == [(1, "x"), (2, "x")]
    assert pair.rows("ledger") == [(3, "x")]
    assert pair.decisions() == []  # no decision record, no table even


def test_an_exception_rolls_back_both_databases(pair: Pair, db: Database) -> None:
    with db.scope(), pytest.raises(RuntimeError), db_transaction():
        _insert(None, 1)
        _insert("ledger", 1)
        raise RuntimeError("boom")
    assert pair.rows("main") == [] and pair.rows("ledger") == []
    assert pair.prepared() == []


@pytest.mark.parametrize("failing", ["main", "ledger"])
def test_a_failing_prepare_rolls_back_the_other_prepared_database(
    pair: Pair, db: Database, failing: str
) -> None:
    with db.scope():
        with pytest.raises(IntegrityError, match="checked_unique"), db_transaction():
            _insert(None, 1)
            _insert("ledger", 1)
            # a deferred unique constraint is checked by PREPARE TRANSACTION
            _insert(None if failing == "main" else "ledger", 7, table="checked")
            _insert(None if failing == "main" else "ledger", 7, table="checked")
    assert pair.rows("main") == [] and pair.rows("ledger") == []
    assert pair.prepared() == []
    assert pair.decisions() == []
    with db.scope(), db_transaction():  # the sessions are usable again
        _insert(None, 2)
        _insert("ledger", 2)
    assert pair.rows("main") == [(2, "x")] and pair.rows("ledger") == [(2, "x")]


def test_savepoints_span_both_databases(pair: Pair, db: Database) -> None:
    with db.scope(), db_transaction():
        _insert(None, 1)
        _insert("ledger", 1)
        with pytest.raises(RuntimeError), savepoint():
            _insert(None, 2)
            _insert("ledger", 2)
            raise RuntimeError("only the savepoint rolls back")
        with db_transaction():  # nested: a savepoint, released
            _insert("ledger", 3)
    assert pair.rows("main") == [(1, "x")]
    assert pair.rows("ledger") == [(1, "x"), (3, "x")]


def test_a_database_first_used_inside_a_rolled_back_savepoint_is_rolled_back(
    pair: Pair, db: Database
) -> None:
    with db.scope(), db_transaction():
        _insert(None, 1)
        with pytest.raises(RuntimeError), savepoint():
            _insert("ledger", 1)
            raise RuntimeError("the ledger's whole transaction began in the savepoint")
        _insert("ledger", 2)  # joins again: still two databases, still two phases
    assert pair.rows("main") == [(1, "x")]
    assert pair.rows("ledger") == [(2, "x")]
    assert [o for _t, o in pair.decisions()] == ["commit"]


def test_on_commit_hooks_run_after_both_databases_committed(pair: Pair, db: Database) -> None:
    seen: list[Any] = []
    with db.scope(), db_transaction():
        _insert(None, 1)
        _insert("ledger", 1)
        on_commit(lambda: seen.append((pair.rows("main"), pair.rows("ledger"), pair.prepared())))
    assert seen == [([(1, "x")], [(1, "x")], [])]


def test_no_hook_runs_when_the_two_phase_commit_fails(pair: Pair, db: Database) -> None:
    seen: list[str] = []
    with db.scope(), pytest.raises(IntegrityError), db_transaction():
        _insert(None, 1)
        _insert("ledger", 1)
        _insert("ledger", 7, table="checked")
        _insert("ledger", 7, table="checked")
        on_commit(lambda: seen.append("ran"))
    assert seen == []


def test_durable_units_and_read_only_units_keep_their_meaning(pair: Pair, db: Database) -> None:
    with db.scope():
        with db_transaction(durable=True):
            _insert(None, 1)
            _insert("ledger", 1)
        with db_transaction(), pytest.raises(NestedTransactionError), db_transaction(durable=True):
            pass
        with db_read_only():
            assert current_session("ledger").execute(text("SELECT count(*) FROM entries")).scalar()
            with pytest.raises(Exception, match=r"read-only|read only"):
                _insert("ledger", 2)
    assert pair.rows("main") == [(1, "x")] and pair.rows("ledger") == [(1, "x")]


def test_a_serialization_failure_is_retried_across_both_databases(pair: Pair, db: Database) -> None:
    attempts: list[int] = []

    @db_transaction(attempts=3)
    def unit() -> None:
        attempts.append(1)
        _insert(None, len(attempts))
        _insert("ledger", len(attempts))
        if len(attempts) == 1:  # what PostgreSQL raises under SERIALIZABLE
            current_session().execute(
                text(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' "
                    "USING ERRCODE = 'serialization_failure'; END $$"
                )
            )

    with db.scope():
        unit()
    assert len(attempts) == 2
    assert pair.rows("main") == [(2, "x")] and pair.rows("ledger") == [(2, "x")]
    assert pair.prepared() == []


def test_an_unknown_database_name_is_a_clear_error(db: Database) -> None:
    from myapp.db import NoScope

    with db.scope(), pytest.raises(NoScope, match=r"no database named 'ledgr'.*main, ledger"):
        current_session("ledgr")


def _app(database: Database) -> Any:
    from pyramid.config import Configurator

    config = Configurator(settings={"myapp.database": database, "retry.attempts": 3})
    config.include("myapp.db.pyramid")

    def write(request: Any) -> dict[str, Any]:
        id_ = int(request.matchdict["id"])
        _insert(None, id_)
        _insert("ledger", id_)
        if request.params.get("fail"):
            raise RuntimeError("the view fails after writing to both")
        return {"ok": True}

    def read(request: Any) -> dict[str, Any]:
        sessions = (current_session(), current_session("ledger"))
        counts = [s.execute(text("SELECT count(*) FROM entries")).scalar() for s in sessions]
        return {"counts": counts}

    config.add_route("entry", "/entries/{id}")
    config.add_view(write, route_name="entry", request_method="POST", renderer="json")
    config.add_view(read, route_name="entry", request_method="GET", renderer="json")
    return config.make_wsgi_app()


def test_a_request_writing_to_both_databases_commits_in_both_or_neither(
    pair: Pair, db: Database
) -> None:
    import webtest

    app = webtest.TestApp(_app(db))
    statements = Statements(db)
    app.post("/entries/1")
    assert statements.of("ledger")[-1] == "PREPARE"
    with pytest.raises(RuntimeError):
        app.post("/entries/2?fail=1")
    assert app.get("/entries/0").json == {"counts": [1, 1]}  # GET: both read-only sessions
    assert pair.rows("main") == [(1, "x")] and pair.rows("ledger") == [(1, "x")]
    assert pair.prepared() == []
    assert db.engine.pool.checkedout() == 0
    assert db.database("ledger").engine.pool.checkedout() == 0


def test_the_maintenance_switch_covers_every_database(pair: Pair, db: Database) -> None:
    from myapp.db import MaintenanceMode

    db.maintenance.on = True
    try:
        with db.scope(), pytest.raises(MaintenanceMode), db_transaction():
            _insert("ledger", 1)
    finally:
        db.maintenance.on = False
    with db.scope(), db_transaction():
        _insert("ledger", 1)
    assert pair.rows("ledger") == [(1, "x")]


def test_two_phase_commit_without_the_pipelined_begin(pair: Pair) -> None:
    from myapp.db import create_engine_for

    db = Database(create_engine_for(pair.main_url, pipeline_begin=False))
    db.add_database("ledger", Database(create_engine_for(pair.ledger_url, pipeline_begin=False)))
    try:
        statements = Statements(db)
        with db.scope(), db_transaction():
            _insert(None, 1)
            _insert("ledger", 1)
        assert statements.of("ledger") == ["INSERT", "PREPARE"]
        assert pair.rows("main") == [(1, "x")] and pair.rows("ledger") == [(1, "x")]
        assert pair.prepared() == []
        for engine in (db.engine, db.database("ledger").engine):
            assert engine.pool.checkedin() == 1
            pooled = engine.raw_connection()  # the one the unit used
            try:
                assert (
                    pooled.dbapi_connection.autocommit is False
                )  # flipped back after COMMIT PREPARED
            finally:
                pooled.close()
        with db.scope(), db_transaction():
            _insert(None, 2)
        assert pair.rows("main") == [(1, "x"), (2, "x")]
    finally:
        db.dispose()


def test_a_connection_lost_while_the_decision_is_written_leaves_it_to_recovery(
    pair: Pair, db: Database
) -> None:
    import logging

    from myapp.db import TwoPhaseCommitError
    from myapp.db.twophase import recover

    pids: list[int] = []

    def remember(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("PREPARE"):
            pids.append(conn.connection.dbapi_connection.info.backend_pid)

    event.listen(db.engine, "after_cursor_execute", remember)

    class KillMainAfterBothPrepares(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("prepared ") and len(self.seen) == 1:
                assert pair.cluster.primary is not None
                with pair.cluster.primary.connect() as conn:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            self.seen.append(record)

        seen: list[logging.LogRecord] = []

    logger = logging.getLogger("myapp.db.twophase")
    handler = KillMainAfterBothPrepares(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with db.scope(), pytest.raises(TwoPhaseCommitError) as raised, db_transaction():
            _insert(None, 1)
            _insert("ledger", 1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert raised.value.in_doubt and "in doubt" in str(raised.value)
    assert len(pair.prepared()) == 2  # not rolled back: the decision might have been written
    report = recover(db, min_age=0)
    assert len(report.rolled_back) == 2 and report.failed == []  # it was not: no commit row
    assert pair.prepared() == []
    assert pair.rows("main") == [] and pair.rows("ledger") == []
    with db.scope(), db_transaction():  # the pool replaced the dead connection
        _insert(None, 2)
        _insert("ledger", 2)
    assert pair.rows("main") == [(2, "x")] and pair.rows("ledger") == [(2, "x")]


def test_two_named_databases_without_the_main_one_record_the_decision_in_main(
    pair: Pair, db: Database, twophase_cluster: Any
) -> None:
    archive_url = twophase_cluster.create_database(f"{pair.ledger_url.rsplit('/', 1)[1]}_archive")
    with twophase_cluster.primary.connect(archive_url.rsplit("/", 1)[1]) as conn:
        conn.execute("CREATE TABLE entries (id int PRIMARY KEY, note text NOT NULL)")
    db.add_database("archive", Database.from_url(archive_url))
    statements = Statements(db)
    with db.scope(), db_transaction():
        _insert("ledger", 1)
        _insert("archive", 1)
    assert statements.of("main") == []  # the decision went through a pooled raw connection
    assert statements.of("archive") == ["INSERT", "PREPARE"]
    assert [o for _t, o in pair.decisions()] == ["commit"]
    assert pair.rows("ledger") == [(1, "x")]
    with twophase_cluster.primary.connect(archive_url.rsplit("/", 1)[1]) as conn:
        assert conn.execute("SELECT id FROM entries").fetchall() == [(1,)]
    assert pair.prepared() == []
    assert db.engine.pool.checkedout() == 0
