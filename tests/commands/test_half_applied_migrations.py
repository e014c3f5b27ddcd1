"""A migration that fails in the middle, on every backend (issue 17, DDL is not transactional).

PostgreSQL and SQLite roll the whole migration back. MySQL/MariaDB cannot: the
steps before the failure stay applied while ``alembic_version`` still names the
revision before. ``myapp migrate`` must say exactly that (which revision, which
statements were kept, which failed), ``myapp check`` must fail on it, and a
rerun once the cause is gone must finish the migration (its steps check the
schema first: :mod:`myapp.db.ddl`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from myapp.commands.migrations import JOURNAL_TABLE
from myapp.testing.cli import ROOT, Result, write_ini

from .conftest import Cli

HEAD = "7a6883c67e96"  # myapp's head revision, which the failing one follows
HALF = "5e1f0a11ed00"

FAILING_MIGRATION = f'''"""a migration that fails half-way (tests)

Revision ID: {HALF}
Revises: {HEAD}
"""
import os

import sqlalchemy as sa
from alembic import op

from myapp.db import ddl

revision = "{HALF}"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl.create_table(
        "half_notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.String(50), nullable=True),
    )
    ddl.add_column("items", sa.Column("half_flag", sa.Boolean, nullable=True))
    if os.environ.get("MYAPP_TEST_HALF_FAIL"):
        op.execute("ALTER TABLE no_such_table ADD COLUMN x INTEGER")
    ddl.create_index("ix_half_notes_body", "half_notes", ["body"])


def downgrade() -> None:
    ddl.drop_index("ix_half_notes_body", "half_notes")
    ddl.drop_column("items", "half_flag")
    ddl.drop_table("half_notes")
'''


@pytest.fixture
def half(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """Run ``myapp`` in-process on ``cli``'s database with myapp's migrations + the failing one."""
    scripts = tmp_path / "alembic"
    shutil.copytree(
        ROOT / "myapp" / "alembic", scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    (scripts / "versions" / "20261201_half_applied.py").write_text(FAILING_MIGRATION)
    ini = write_ini(tmp_path / "half.ini", cli.url, script_location=str(scripts))
    for name in ("MYAPP_ENV", "MYAPP_CONFIG", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> Result:
        from myapp.commands import main

        status = main(["-c", str(ini), *argv])
        out, err = capsys.readouterr()
        return Result(list(argv), status, out, err)

    return run


def schema(cli: Cli) -> tuple[set[str], set[str], set[str]]:
    """Tables, the columns of ``items``, the indexes of ``half_notes`` (if any)."""
    with cli.engine() as engine:
        inspector = inspect(engine)
        tables = set(inspector.get_table_names())
        columns = {c["name"] for c in inspector.get_columns("items")}
        indexes = (
            {i["name"] for i in inspector.get_indexes("half_notes")}
            if "half_notes" in tables
            else set()
        )
    return tables, columns, indexes


def test_a_migration_failing_in_the_middle(
    backend: str, cli: Cli, half: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert half("migrate", "upgrade", HEAD).returncode == 0  # myapp's own revisions
    monkeypatch.setenv("MYAPP_TEST_HALF_FAIL", "1")
    failed = half("migrate")
    assert failed.returncode != 0, failed
    said = failed.stdout + failed.stderr
    assert "no_such_table" in said  # the error itself
    assert cli.version() == {HEAD}  # still recorded at the revision before it
    tables, columns, indexes = schema(cli)

    if backend == "mysql":
        # DDL committed as it ran: the first two steps stay, and the command says so
        assert "half_notes" in tables and "half_flag" in columns
        assert f"migration {HALF} failed half-way" in said, said
        assert "MySQL/MariaDB cannot roll DDL back" in said
        assert f"recorded at revision {HEAD}" in said
        assert "2 statement(s)" in said
        assert "1. CREATE TABLE half_notes" in said
        assert "2. ALTER TABLE items ADD COLUMN half_flag" in said
        assert "then it failed:" in said and "no_such_table" in said
        assert "ix_half_notes_body" not in indexes  # nothing after the failure
        checked = half("check")  # a later command reports it, and check fails on it
        assert checked.returncode != 0
        assert f"migration {HALF} failed half-way" in checked.stdout + checked.stderr
    else:
        # transactional DDL: the migration left nothing behind
        assert "half_notes" not in tables and "half_flag" not in columns
        assert "half-way" not in said

    monkeypatch.delenv("MYAPP_TEST_HALF_FAIL")  # the cause fixed: the rerun finishes it
    rerun = half("migrate")
    assert rerun.returncode == 0, rerun
    if backend == "mysql":
        assert "WARNING" in rerun.stdout and f"migration {HALF} failed half-way" in rerun.stdout
    assert f"upgraded {HEAD} -> {HALF}" in rerun.stdout
    assert cli.version() == {HALF}
    tables, columns, indexes = schema(cli)
    assert "half_notes" in tables and "half_flag" in columns
    assert "ix_half_notes_body" in indexes
    assert JOURNAL_TABLE not in tables  # the journal is gone with the half-applied state
    checked = half("check")
    assert checked.returncode == 0, checked
    assert "half-way" not in checked.stdout + checked.stderr


def test_each_step_of_myapps_migrations_is_safe_to_rerun(backend: str, cli: Cli, half: Any) -> None:
    """Down to base and up again, then every revision's upgrade run twice over itself."""
    assert half("migrate", "upgrade", HEAD).returncode == 0
    assert half("migrate", "stamp", "base").returncode == 0  # forget it, keep the schema
    rerun = half("migrate", "upgrade", HEAD)  # every step meets its own result
    assert rerun.returncode == 0, rerun
    assert cli.version() == {HEAD}
    assert half("migrate", "downgrade", "base").returncode == 0
    tables, _, _ = schema_after_downgrade(cli)
    assert tables <= {"alembic_version"}


def schema_after_downgrade(cli: Cli) -> tuple[set[str], None, None]:
    with cli.engine() as engine:
        return set(inspect(engine).get_table_names()), None, None


@pytest.mark.mysql_only
def test_initdb_creates_a_missing_mysql_database(
    backend: str, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from sqlalchemy.engine import make_url

    from myapp.commands import main
    from myapp.db import create_engine_for

    url = make_url(cli.url)
    missing = url.set(database=(url.database or "") + "_new")
    ini = write_ini(tmp_path / "new.ini", missing.render_as_string(hide_password=False))
    for name in ("MYAPP_ENV", "MYAPP_CONFIG", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    admin = create_engine_for(url.render_as_string(hide_password=False))
    try:
        assert main(["-c", str(ini), "initdb"]) == 0
        out = capsys.readouterr().out
        assert f"created the database {missing.database}" in out
        assert f"upgraded (empty) -> {HEAD}" in out
        with admin.connect() as conn:
            collation = conn.exec_driver_sql(
                "SELECT default_collation_name FROM information_schema.schemata "
                "WHERE schema_name = %(name)s",
                {"name": missing.database},
            ).scalar()
        assert collation == "utf8mb4_nopad_bin"
        assert main(["-c", str(ini), "initdb"]) == 0  # again: harmless
        assert "nothing to do" in capsys.readouterr().out
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{missing.database}`")
        admin.dispose()
