"""Fixtures for the ``myapp`` command line: the real console script, run in subprocesses.

``cli`` gives each test a fresh database on the current backend (a SQLite file
under tmp_path, or a PostgreSQL database created for the test) and a
temporary ini file copied from testing.ini. On PostgreSQL (and MySQL/MariaDB) the URL reaches the
subprocess through ``DATABASE_URL``, as in production; the ini's own
``sqlalchemy.url`` then points at a SQLite file that must never be created.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from myapp.db import create_engine_for
from myapp.testing.cli import (  # noqa: F401  (re-exported to the tests)
    ROOT,
    Result,
    assert_one_error_line,
    clean_environ,
    myapp_command,
    run_myapp,
    write_ini,
)
from myapp.testing.database import test_database_for
from myapp.testing.plugin import run_migrations, server_url


def decoy_url(tmp_path: Path) -> str:
    """The ini's URL on PostgreSQL runs: DATABASE_URL must win, so this file never appears."""
    return f"sqlite:///{tmp_path}/never-used.sqlite"


class Cli:
    """``myapp`` against one test database, through a temporary ini file."""

    def __init__(self, backend: str, ini: Path, url: str, environ: dict[str, str]) -> None:
        self.backend = backend
        self.ini = ini
        self.url = url
        self.environ = environ

    def run(self, *args: str, cwd: Path = ROOT, input: str | None = None, **kw: Any) -> Result:
        return run_myapp("-c", str(self.ini), *args, cwd=cwd, env=self.environ, input=input, **kw)

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        """A separate engine on the test database, to look at what the commands did."""
        engine = create_engine_for(self.url)
        try:
            yield engine
        finally:
            engine.dispose()

    def tables(self) -> set[str]:
        with self.engine() as engine:
            return set(inspect(engine).get_table_names())

    def version(self) -> set[str]:
        with self.engine() as engine, engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}

    def item_names(self) -> list[str]:
        with self.engine() as engine, engine.connect() as conn:
            return list(conn.scalars(text("SELECT name FROM items ORDER BY id")))

    def migrate_in_process(self) -> None:
        """Bring the schema to head without a subprocess (for tests about other commands)."""
        with self.engine() as engine, engine.begin() as conn:
            run_migrations(conn)


@pytest.fixture
def cli(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    """A fresh, empty database on ``backend`` and the ini file pointing at it."""
    ini_sqlite = tmp_path / "var" / "nested" / "app.sqlite"  # the directory does not exist yet
    if backend != "sqlite":
        pg = test_database_for(server_url(request.config, backend) or "")
        url = pg.create()
        ini = write_ini(tmp_path / "app.ini", decoy_url(tmp_path))
        try:
            yield Cli(backend, ini, url, clean_environ(DATABASE_URL=url))
        finally:
            pg.drop()
        assert not (tmp_path / "never-used.sqlite").exists(), "DATABASE_URL did not win"
    else:
        url = f"sqlite:///{ini_sqlite}"
        ini = write_ini(tmp_path / "app.ini", url)
        yield Cli(backend, ini, url, clean_environ())


@pytest.fixture
def migrated_cli(cli: Cli) -> Cli:
    """``cli`` with its database at head (migrated in-process)."""
    cli.migrate_in_process()
    return cli


class InProcess:
    """``main()`` called in this process (fast), on ``cli``'s database, output captured.

    The same runner as the console script; for variations of behaviour that
    the subprocess tests already cover end to end.
    """

    def __init__(self, cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
        self.cli = cli
        self.capsys = capsys

    def __call__(self, *argv: str, registry: Any = None) -> Result:
        from myapp.commands import main
        from myapp.db import current_transaction, get_tm

        status = main(["-c", str(self.cli.ini), *argv], registry=registry)
        out, err = self.capsys.readouterr()
        assert current_transaction(get_tm()) is None, "a transaction was left open"
        return Result(list(argv), status, out, err)


@pytest.fixture
def in_process(
    migrated_cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> InProcess:
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    monkeypatch.delenv("MYAPP_CONFIG", raising=False)
    if migrated_cli.backend != "sqlite":
        monkeypatch.setenv("DATABASE_URL", migrated_cli.url)
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    return InProcess(migrated_cli, capsys)
