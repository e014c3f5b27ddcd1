"""The private PostgreSQL clusters of myapp.testing.pgcluster: a real primary and a real replica.

Everything here runs real servers (``initdb``, ``pg_basebackup -R``,
``pg_ctl``) on free ports; nothing is mocked. The module shares one cluster
(primary + streaming replica, ``max_prepared_transactions = 5``) through the
session fixture factory; the teardown tests start clusters of their own and
check with ``ps`` and ``/proc`` that no server process survives them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from psycopg import sql
from sqlalchemy.orm import Session

from myapp.testing.pgcluster import (
    DIR_PREFIX,
    REPLICA_DELAY_SQL,
    PgCluster,
    available,
    pg_cluster_fixture,
    sweep_leftovers,
)

pg_cluster = pg_cluster_fixture(replica=True, max_prepared_transactions=5)


def _alive(pid: int) -> bool:
    """Running, by ps (a zombie waiting for init to reap it has exited)."""
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return out.returncode == 0 and not out.stdout.strip().startswith("Z")


def _ps_lines_mentioning(text: str) -> list[str]:
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid,user,args"], capture_output=True, text=True, check=True
    )
    return [line for line in out.stdout.splitlines() if text in line]


def _assert_gone(root: Path, pids: list[int]) -> None:
    assert pids, "the cluster had no processes to check"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "server processes survived the teardown"
    assert not _ps_lines_mentioning(str(root)), "a process still names the cluster directory"
    assert not root.exists(), f"{root} was not deleted"


def _table(conn: psycopg.Connection) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    return name


def test_servers_run_as_the_postgres_user_on_private_ports(pg_cluster: PgCluster) -> None:
    assert available() is None
    primary, replica = pg_cluster.primary, pg_cluster.replica
    assert primary is not None and replica is not None
    assert primary.port != 5432 and replica.port != 5432 and primary.port != replica.port
    for server in (primary, replica):
        user = subprocess.run(
            ["ps", "-o", "user=", "-p", str(server.pid)], capture_output=True, text=True
        ).stdout.strip()
        assert user == ("postgres" if os.geteuid() == 0 else os.environ.get("USER", user))
        assert str(server.datadir).startswith(str(pg_cluster.root))
    assert primary.query("SHOW wal_level") == "replica"
    assert primary.query("SHOW max_prepared_transactions") == "5"
    assert primary.query("SELECT pg_is_in_recovery()") is False


def test_replica_is_in_recovery_and_receives_committed_rows(pg_cluster: PgCluster) -> None:
    assert pg_cluster.replica is not None and pg_cluster.primary is not None
    assert pg_cluster.replica.query("SELECT pg_is_in_recovery()") is True
    url = pg_cluster.create_database("replicated_rows")
    engine = sqlalchemy.create_engine(url)
    replica_engine = sqlalchemy.create_engine(pg_cluster.replica.url("replicated_rows"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE items (id int PRIMARY KEY, name text)")
            conn.exec_driver_sql("INSERT INTO items VALUES (1, 'from the primary')")
        pg_cluster.wait_for_replica(timeout=30)
        with replica_engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar() is True
            assert conn.exec_driver_sql("SELECT name FROM items").scalar() == "from the primary"
            # a hot standby refuses writes
            with pytest.raises(sqlalchemy.exc.InternalError, match="read-only transaction"):
                conn.exec_driver_sql("INSERT INTO items VALUES (2, 'on the replica')")
        lag = pg_cluster.replica_lag()
        assert lag.streaming and lag.bytes == 0 and lag.seconds == 0.0
    finally:
        engine.dispose()
        replica_engine.dispose()


def test_lag_is_visible_while_the_replica_is_down(pg_cluster: PgCluster) -> None:
    primary, replica = pg_cluster.primary, pg_cluster.replica
    assert primary is not None and replica is not None
    with primary.connect() as conn:
        table = _table(conn)
    pg_cluster.wait_for_replica()
    pg_cluster.stop_replica()
    try:
        assert not replica.is_running()
        with pytest.raises(psycopg.OperationalError):
            replica.connect(connect_timeout=3).close()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            engine = sqlalchemy.create_engine(replica.url())
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
        with primary.connect() as conn:
            conn.execute(
                f"INSERT INTO {table} SELECT g, 'while down' FROM generate_series(1, 500) g"
            )
            # the slot keeps the WAL the absent replica has not received
            kept = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM "
                "pg_replication_slots WHERE slot_name = 'myapp_replica'"
            ).fetchone()
            streaming = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
        assert kept is not None and kept[0] > 0
        assert streaming == (0,)
    finally:
        pg_cluster.start_replica()
    pg_cluster.wait_for_replica(timeout=60)
    assert replica.query(f"SELECT count(*) FROM {table}") == 500
    assert replica.query("SELECT pg_is_in_recovery()") is True
    lag = pg_cluster.replica_lag()
    assert lag.bytes == 0
    # streaming again (the walsender may need a moment to report it)
    deadline = time.monotonic() + 20
    while not pg_cluster.replica_lag().streaming and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pg_cluster.replica_lag().streaming


def test_a_paused_replica_lags_and_catches_up(pg_cluster: PgCluster) -> None:
    primary, replica = pg_cluster.primary, pg_cluster.replica
    assert primary is not None and replica is not None
    with primary.connect() as conn:
        table = _table(conn)
    pg_cluster.wait_for_replica()
    pg_cluster.pause_replay()
    try:
        with primary.connect() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, 'after the pause')")
        time.sleep(0.2)  # let the replica receive it (and not replay it)
        assert replica.query(f"SELECT count(*) FROM {table}") == 0
        lag = pg_cluster.replica_lag()
        assert lag.bytes > 0 and lag.seconds > 0 and lag.streaming
        # the standby's own estimate alone (what a check without the primary can run)
        assert replica.query(REPLICA_DELAY_SQL) > 0
    finally:
        pg_cluster.resume_replay()
    pg_cluster.wait_for_replica(timeout=30)
    assert replica.query(f"SELECT count(*) FROM {table}") == 1
    assert pg_cluster.replica_lag().bytes == 0
    assert primary.query(REPLICA_DELAY_SQL) is None  # not a standby


def test_prepared_transactions_commit_and_roll_back(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.primary
    assert primary is not None
    with primary.connect() as conn:
        table = _table(conn)
    gid_commit, gid_abort = f"myapp-{uuid.uuid4()}", f"myapp-{uuid.uuid4()}"
    for gid, row in ((gid_commit, 1), (gid_abort, 2)):
        with primary.connect(autocommit=False) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (%s, 'prepared')", (row,))
            # a utility statement takes no bind parameter: the gid is a quoted literal
            conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with primary.connect() as conn:
        pending = {r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts")}
        assert {gid_commit, gid_abort} <= pending
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        conn.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid_commit)))
        conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid_abort)))
        assert [r[0] for r in conn.execute(f"SELECT id FROM {table}")] == [1]
        assert not {r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts")} & {
            gid_commit,
            gid_abort,
        }


def test_prepared_transaction_survives_a_crash_of_the_primary(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.primary
    assert primary is not None
    with primary.connect() as conn:
        table = _table(conn)
    gid = f"myapp-{uuid.uuid4()}"
    # psycopg's own two-phase API (what zope.sqlalchemy's twophase sessions use)
    conn = primary.connect(autocommit=False)
    try:
        conn.tpc_begin(conn.xid(1, gid, "myapp"))
        conn.execute(f"INSERT INTO {table} VALUES (1, 'in doubt')")
        conn.tpc_prepare()
    finally:
        conn.close()  # the prepared transaction outlives its connection
    pg_cluster.primary.stop("immediate")  # as after a crash: no shutdown checkpoint
    pg_cluster.primary.start()
    with primary.connect(autocommit=False) as conn:
        in_doubt = [x for x in conn.tpc_recover() if x.gtrid == gid]
        assert len(in_doubt) == 1
        conn.tpc_commit(in_doubt[0])
    assert primary.query(f"SELECT v FROM {table}") == "in doubt"
    pg_cluster.wait_for_replica(timeout=60)


def test_sqlalchemy_two_phase_commit_across_two_databases(pg_cluster: PgCluster) -> None:
    """What issue 16 builds on: SQLAlchemy's twophase sessions over psycopg 3, and recovery."""
    suffix = uuid.uuid4().hex[:8]
    main_url = pg_cluster.create_database(f"main_{suffix}")
    ledger_url = pg_cluster.create_database(f"ledger_{suffix}")
    main, ledger = sqlalchemy.create_engine(main_url), sqlalchemy.create_engine(ledger_url)
    try:
        for engine in (main, ledger):
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE t (id int PRIMARY KEY)")
        with Session(twophase=True) as session:
            session.connection(bind_arguments={"bind": main}).exec_driver_sql(
                "INSERT INTO t VALUES (1)"
            )
            session.connection(bind_arguments={"bind": ledger}).exec_driver_sql(
                "INSERT INTO t VALUES (1)"
            )
            session.commit()  # PREPARE TRANSACTION in both, then COMMIT PREPARED in both
        for engine in (main, ledger):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
        # a coordinator that dies after the prepare leaves the transaction in doubt ...
        conn = main.connect()
        xa = conn.begin_twophase()
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        xa.prepare()
        conn.invalidate()  # the connection is gone; the prepared transaction stays
        with main.connect() as other:
            assert xa.xid in other.recover_twophase()
            assert other.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
            # ... and recovery resolves it from another connection
            other.commit_prepared(xa.xid, recover=True)
            assert other.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2
            assert xa.xid not in other.recover_twophase()
    finally:
        main.dispose()
        ledger.dispose()


@pytest.mark.slow
def test_close_stops_every_process_and_deletes_the_directory() -> None:
    cluster = PgCluster(replica=True).start()
    root, pids = cluster.root, cluster.process_ids()
    assert root is not None and root.name.startswith(DIR_PREFIX)
    assert len(pids) >= 8  # two postmasters, their auxiliary processes, walsender, walreceiver
    assert _ps_lines_mentioning(str(root))
    cluster.close()
    _assert_gone(root, pids)
    cluster.close()  # idempotent


@pytest.mark.slow
def test_the_fixture_cleans_up_after_a_failing_test(pytester: pytest.Pytester) -> None:
    report = pytester.path / "cluster.json"
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            f"""
            import json
            from myapp.testing.pgcluster import pg_cluster_fixture

            cluster = pg_cluster_fixture(replica=True)

            def test_fails(cluster):
                with open({str(report)!r}, "w") as f:
                    json.dump({{"root": str(cluster.root), "pids": cluster.process_ids()}}, f)
                assert cluster.replica.query("SELECT pg_is_in_recovery()") is True
                raise AssertionError("this test fails on purpose")
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=180)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*this test fails on purpose*"])
    seen = json.loads(report.read_text())
    _assert_gone(Path(seen["root"]), seen["pids"])


@pytest.mark.slow
def test_a_killed_owner_leaves_servers_the_next_cluster_sweeps(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys, time
        from myapp.testing.pgcluster import PgCluster

        cluster = PgCluster(replica=True).start()
        postmasters = [cluster.primary.pid, cluster.replica.pid]
        print(json.dumps({"root": str(cluster.root), "pids": cluster.process_ids(),
                          "postmasters": postmasters}), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        seen = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)  # no atexit, no finaliser: the servers are orphaned
        proc.wait()
    root, pids = Path(seen["root"]), seen["pids"]
    # (short-lived backends among pids may have ended on their own: the postmasters may not)
    assert all(_alive(p) for p in seen["postmasters"]), "the servers outlive their killed owner"
    removed = sweep_leftovers()
    assert root in removed
    _assert_gone(root, pids)


@pytest.mark.slow
def test_a_cluster_never_closed_is_stopped_at_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import json
        from myapp.testing.pgcluster import PgCluster

        cluster = PgCluster().start()
        print(json.dumps({"root": str(cluster.root), "pids": cluster.process_ids()}), flush=True)
        del cluster  # dropped, never closed: the exit handler still stops it
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(out.stdout.splitlines()[0])
    _assert_gone(Path(seen["root"]), seen["pids"])
