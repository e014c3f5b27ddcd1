"""Backends: --dburl / MYAPP_TEST_DBURL, both backends in one command, a fresh PostgreSQL
database per run (and per xdist worker) dropped afterwards, pytest-xdist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest
from sqlalchemy import create_engine, text

from myapp.db.settings import normalise_url
from myapp.testing.plugin import ENV_DBURL, HOST_TAG

from .conftest import INNER_INI
from .conftest import PREFIX as PG_DATABASE_PREFIX

RECORDING_TESTS = """
    import json
    import os
    import uuid

    import pytest
    from sqlalchemy import text

    from myapp.models import Company

    RECORDS = {records!r}

    @pytest.mark.parametrize("n", range({n}))
    def test_record_database(db, backend, n):
        if backend == "postgresql":
            name = db.session.scalar(text("SELECT current_database()"))
        else:
            name = db.engine.url.database
        db.session.add(Company(name=f"company {{n}}"))
        db.session.commit()
        record = {{
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "backend": backend,
            "database": name,
        }}
        with open(os.path.join(RECORDS, uuid.uuid4().hex + ".json"), "w") as f:
            json.dump(record, f)
"""


def _records(path):
    return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))]


def _pg_databases(dburl: str) -> set[str]:
    engine = create_engine(normalise_url(dburl))
    try:
        with engine.connect() as conn:
            return set(
                conn.scalars(
                    text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
                    {"prefix": PG_DATABASE_PREFIX + "%"},
                )
            )
    finally:
        engine.dispose()


def _recording(inner, tmp_path, n: int):
    records = tmp_path / "records"
    records.mkdir()
    inner.pytester.makepyfile(
        test_inner_record=textwrap.dedent(RECORDING_TESTS.format(records=str(records), n=n))
    )
    return records


def test_xdist_one_database_per_worker(inner, tmp_path):
    records = _recording(inner, tmp_path, n=12)
    result = inner.run_subprocess("-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=12)

    by_worker = defaultdict(set)
    for record in _records(records):
        assert record["backend"] == inner.backend
        by_worker[record["worker"]].add(record["database"])
    assert sorted(by_worker) == ["gw0", "gw1"]
    assert all(len(names) == 1 for names in by_worker.values())  # one database per worker
    (db0,), (db1,) = by_worker["gw0"], by_worker["gw1"]
    assert db0 != db1
    if inner.backend == "postgresql":
        assert db0.startswith(PG_DATABASE_PREFIX + "gw0_")
        assert db1.startswith(PG_DATABASE_PREFIX + "gw1_")
        assert not {db0, db1} & _pg_databases(inner.dburl), "a test database was not dropped"


@pytest.mark.postgresql_only
def test_fresh_postgresql_database_per_run_dropped_after(inner, tmp_path):
    records = _recording(inner, tmp_path, n=2)
    before = _pg_databases(inner.dburl)
    for _ in range(2):
        inner.run().assert_outcomes(passed=2)
    names = {record["database"] for record in _records(records)}
    assert len(names) == 2  # each run had its own database ...
    assert all(name.startswith(PG_DATABASE_PREFIX) for name in names)
    assert not names & before  # ... created fresh ...
    assert not names & _pg_databases(inner.dburl)  # ... and dropped after the run


@pytest.mark.postgresql_only
@pytest.mark.parametrize("how", ["option", "environment"])
def test_one_command_runs_both_backends(inner, tmp_path, monkeypatch, how):
    records = _recording(inner, tmp_path, n=1)
    if how == "option":
        monkeypatch.delenv(ENV_DBURL, raising=False)
        result = inner.pytester.runpytest("--dburl", inner.dburl, "-v")
    else:
        monkeypatch.setenv(ENV_DBURL, inner.dburl)
        result = inner.pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "myapp backends: sqlite, postgresql",
            "*test_record_database[[]sqlite-0[]] PASSED*",
            "*test_record_database[[]postgresql-0[]] PASSED*",
        ]
    )
    assert sorted(r["backend"] for r in _records(records)) == ["postgresql", "sqlite"]


def test_sqlite_alone_and_postgresql_only_tests(pytester, monkeypatch, _app_modules_loaded):
    monkeypatch.delenv(ENV_DBURL, raising=False)
    pytester.makeini(INNER_INI)
    pytester.makepyfile(
        test_inner_pg_only=textwrap.dedent(
            """
            import pytest

            def test_anywhere(db, backend):
                assert backend == "sqlite"

            @pytest.mark.postgresql_only
            def test_needs_postgresql(db):
                pass
            """
        )
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["myapp backends: sqlite", "*needs PostgreSQL: pass --dburl or set MYAPP_TEST_DBURL*"]
    )


def test_usage_errors_are_clear(pytester, monkeypatch):
    monkeypatch.delenv(ENV_DBURL, raising=False)
    pytester.makeini(INNER_INI)
    pytester.makepyfile(test_inner_nothing="def test_nothing(db): pass\n")
    result = pytester.runpytest("--backends", "postgresql")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the postgresql backend needs --dburl or MYAPP_TEST_DBURL*"])
    result = pytester.runpytest("--backends", "oracle")
    result.stderr.fnmatch_lines(["*--backends: unknown backend 'oracle'*"])


def test_unreachable_server_is_reported(pytester, monkeypatch, _app_modules_loaded):
    monkeypatch.delenv(ENV_DBURL, raising=False)
    pytester.makeini(INNER_INI)
    pytester.makepyfile(test_inner_nothing="def test_nothing(db): pass\n")
    result = pytester.runpytest(
        "--backends", "postgresql", "--dburl", "postgresql://127.0.0.1:1/test"
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*cannot create a test database there*"])


@pytest.mark.postgresql_only
def test_a_killed_runs_database_is_dropped_by_the_next_run(inner, tmp_path):
    """SIGKILL leaves the run's database behind; the next run on this machine drops it."""
    started = tmp_path / "started"
    inner.pytester.makepyfile(
        test_inner_hang=textwrap.dedent(
            f"""
            import pathlib
            import time

            from sqlalchemy import text

            def test_hang(db):
                name = db.session.scalar(text("SELECT current_database()"))
                pathlib.Path({str(started)!r}).write_text(name)
                time.sleep(600)
            """
        )
    )
    command = [sys.executable, "-m", "pytest", *inner.args(), "test_inner_hang.py"]
    proc = subprocess.Popen(
        command, cwd=inner.pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert started.exists(), "the inner run never reached its test"
        leftover = started.read_text()
    finally:
        proc.kill()  # SIGKILL: no teardown, the database stays
        proc.wait(timeout=60)
    assert leftover in _pg_databases(inner.dburl)
    engine = create_engine(normalise_url(inner.dburl), isolation_level="AUTOCOMMIT")
    deadline = time.monotonic() + 30  # until the server has noticed the closed connections
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            connected = conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                {"name": leftover},
            )
        if not connected:
            break
        time.sleep(0.1)

    # a database of a live process (this one) and one of another machine are not touched
    other_host = "000000" if HOST_TAG != "000000" else "111111"
    kept = [
        f"{PG_DATABASE_PREFIX}main_{HOST_TAG}_{os.getpid()}_feed01",
        f"{PG_DATABASE_PREFIX}main_{other_host}_{proc.pid}_feed02",
    ]
    try:
        with engine.connect() as conn:
            for name in kept:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        inner.pytester.makepyfile(test_inner_hang="def test_next(db):\n    pass\n")
        inner.run_subprocess().assert_outcomes(passed=1)
        remaining = _pg_databases(inner.dburl)
        assert leftover not in remaining, "the killed run's database was not dropped"
        assert set(kept) <= remaining
    finally:
        with engine.connect() as conn:
            for name in kept:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        engine.dispose()
