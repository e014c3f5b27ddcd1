"""Fixtures for the invoicing, demo-data and domain-command tests.

Two kinds of tests live here:

* service tests on the plugin's ``db`` fixture (the code under test commits;
  its commits are savepoint releases, everything vanishes after the test);
* tests that need *real* commits seen by other connections or processes
  (``myapp`` run in a subprocess and killed with SIGKILL, concurrent
  generators on separate connections): they use ``store``, a database of
  their own (a SQLite file, or a PostgreSQL database created with
  :class:`~myapp.testing.plugin.PostgresTestDatabase` and dropped at the end),
  migrated once per backend and emptied before every test. The ini file is
  testing.ini with its ``sqlalchemy.url`` replaced; on PostgreSQL the URL
  reaches the command through ``DATABASE_URL`` (as in tests/commands).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine

from myapp.db import create_engine_for
from myapp.models import Booking, Invoice
from myapp.testing.cli import (  # noqa: F401  (re-exported to the tests)
    ROOT,
    TIMEOUT,
    Result,
    assert_one_error_line,
    clean_environ,
    myapp_command,
    write_ini,
)
from myapp.testing.database import test_database_for
from myapp.testing.factories import insert_company_rows
from myapp.testing.plugin import run_migrations, server_url

#: a fixed creation time for rows written by the tests
T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: the tables the domain tests write, children first
DOMAIN_TABLES = ("invoices", "dispatch_runs", "bookings", "drivers", "companies")


class Store:
    """A database of the tests' own on one backend, for real commits; see the module docstring."""

    def __init__(self, backend: str, url: str, ini: Path) -> None:
        self.backend = backend
        self.url = url
        self.ini = ini
        self.engine: Engine = create_engine_for(url, pool_size=5, max_overflow=10)
        extra = {"DATABASE_URL": url} if backend != "sqlite" else {}
        self.environ = clean_environ(**extra)

    # -- running myapp -------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [*myapp_command(), "-c", str(self.ini), *args]

    def run(self, *args: str) -> Result:
        """``myapp -c INI ARGS`` in a subprocess, stdout and stderr captured (pipes)."""
        proc = subprocess.run(
            self.argv(*args),
            cwd=ROOT,
            env=self.environ,
            input="",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return Result(list(args), proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            self.argv(*args), cwd=ROOT, env=self.environ, stdin=subprocess.DEVNULL, **kwargs
        )

    # -- data ------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the domain tables (ids start again at 1)."""
        with self.engine.begin() as conn:
            if self.backend == "postgresql":
                conn.exec_driver_sql(
                    f"TRUNCATE {', '.join(DOMAIN_TABLES)} RESTART IDENTITY CASCADE"
                )
            else:
                for table in DOMAIN_TABLES:
                    conn.exec_driver_sql(f"DELETE FROM {table}")
                    if self.backend == "mysql":  # ids start again at 1 (DDL: commits)
                        conn.exec_driver_sql(f"ALTER TABLE {table} AUTO_INCREMENT = 1")

    def company(self, name: str = "c", drivers: int = 0) -> tuple[int, list[int]]:
        with self.engine.begin() as conn:
            return insert_company_rows(conn, name, drivers, created=T0)

    def bookings(self, company_id: int, specs: list[tuple[datetime, str]]) -> None:
        """Bookings of ``company_id``: ``(pickup_time, status)`` each, no driver."""
        rows = [
            {
                "company_id": company_id,
                "pickup_time": pickup,
                "pickup_address": "a",
                "dropoff_address": "b",
                "status": status,
                "driver_id": None,
                "created": T0,
                "updated": T0,
            }
            for pickup, status in specs
        ]
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 5000):
                conn.execute(insert(Booking.__table__), rows[start : start + 5000])

    def scalar(self, sql: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.scalar(text(sql) if isinstance(sql, str) else sql)

    def invoice_count(self) -> int:
        return self.scalar(select(func.count()).select_from(Invoice))

    def assert_each_completed_booking_invoiced_once(self, start: datetime, end: datetime) -> int:
        """Exactly the completed bookings of the period have one invoice each, amount = tariff."""
        from myapp.services.invoicing import tariff

        with self.engine.connect() as conn:
            expected = {
                row.id: (row.company_id, tariff(row.pickup_time))
                for row in conn.execute(
                    select(Booking.id, Booking.company_id, Booking.pickup_time).where(
                        Booking.status == "completed",
                        Booking.pickup_time >= start,
                        Booking.pickup_time < end,
                    )
                )
            }
            invoices = conn.execute(
                select(Invoice.booking_id, Invoice.company_id, Invoice.amount)
            ).all()
        booking_ids = [row.booking_id for row in invoices]
        assert len(booking_ids) == len(set(booking_ids)), "a booking was invoiced twice"
        assert {row.booking_id: (row.company_id, row.amount) for row in invoices} == expected
        return len(invoices)

    def other_backends(self) -> int:
        """PostgreSQL: connections to this database other than ours (killed clients linger)."""
        return self.scalar(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture(scope="session")
def store_database(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A database of the tests' own on ``backend``, migrated once (see :class:`Store`)."""
    directory = tmp_path_factory.mktemp(f"store-{backend}")
    pg = None
    if backend != "sqlite":  # PostgreSQL or MySQL/MariaDB
        pg = test_database_for(server_url(request.config, backend) or "")
        url = pg.create()
        ini = write_ini(directory / "app.ini", f"sqlite:///{directory}/never-used.sqlite")
    else:
        url = f"sqlite:///{directory}/store.sqlite"
        ini = write_ini(directory / "app.ini", url)
    store = Store(backend, url, ini)
    try:
        with store.engine.begin() as conn:
            run_migrations(conn)
        yield store
    finally:
        store.close()
        if pg is not None:
            pg.drop()
    assert not (directory / "never-used.sqlite").exists(), "DATABASE_URL did not win"


@pytest.fixture
def store(store_database: Store) -> Iterator[Store]:
    """``store_database``, emptied; fails the test if it left a connection checked out."""
    store_database.reset()
    yield store_database
    assert store_database.engine.pool.checkedout() == 0, "a connection was left checked out"


class InProcess:
    """``main()`` in this process on ``store``'s database, output captured (fast)."""

    def __init__(self, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = store
        self.capsys = capsys

    def __call__(self, *argv: str) -> Result:
        from myapp.commands import main
        from myapp.db import current_transaction, get_tm

        status = main(["-c", str(self.store.ini), *argv])
        out, err = self.capsys.readouterr()
        assert current_transaction(get_tm()) is None, "a transaction was left open"
        return Result(list(argv), status, out, err)


@pytest.fixture
def myapp(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> InProcess:
    """Run ``myapp`` commands in-process against ``store``."""
    for name in ("MYAPP_ENV", "MYAPP_CONFIG", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    if store.backend != "sqlite":
        monkeypatch.setenv("DATABASE_URL", store.url)
    return InProcess(store, capsys)
