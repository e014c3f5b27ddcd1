"""``myapp initdb``, ``myapp check`` and ``myapp migrate``, run as real subprocesses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from myapp.models import Base

from .conftest import ROOT, Cli, InProcess, assert_one_error_line, decoy_url, write_ini

SCHEMA = set(Base.metadata.tables) | {"alembic_version"}


def scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", "myapp:alembic")
    return ScriptDirectory.from_config(config)


def head() -> str:
    (only,) = scripts().get_heads()
    return only


def test_initdb_creates_the_schema_and_check_follows(cli: Cli, tmp_path: Path) -> None:
    all_revisions = [rev.revision for rev in scripts().walk_revisions()]

    before = cli.run("check")
    if cli.backend == "sqlite":
        line = assert_one_error_line(before, 1, "does not exist", "myapp initdb")
        sqlite_dir = tmp_path / "var" / "nested"
        assert not (sqlite_dir / "app.sqlite").exists(), "check must not create the SQLite file"
        if sqlite_dir.exists():  # the engine makes the directory; initdb must cope without it
            sqlite_dir.rmdir()
            sqlite_dir.parent.rmdir()
    else:  # an empty database: every migration is pending
        line = assert_one_error_line(before, 1, f"{len(all_revisions)} migration(s) pending")
        assert head() in line
        assert "database: ok" in before.stdout

    # cwd without myapp/alembic: the ini's relative script_location falls back to the package
    created = cli.run("initdb", cwd=tmp_path)
    assert created.returncode == 0, created
    assert f"-> {head()}" in created.stdout
    assert created.stderr == ""
    if cli.backend == "sqlite":
        assert (tmp_path / "var" / "nested" / "app.sqlite").is_file()
    assert cli.tables() == SCHEMA
    assert cli.version() == {head()}

    after = cli.run("check")
    assert after.returncode == 0, after
    assert "database: ok" in after.stdout
    assert f"migrations: up to date ({head()})" in after.stdout

    again = cli.run("initdb")
    assert again.returncode == 0, again
    assert "nothing to do" in again.stdout
    assert cli.tables() == SCHEMA


def test_migrate_downgrade_upgrade_round_trip(migrated_cli: Cli) -> None:
    cli = migrated_cli
    script = scripts()
    previous = script.get_revision(head()).down_revision
    assert isinstance(previous, str)

    down = cli.run("migrate", "downgrade", "-1")
    assert down.returncode == 0, down
    assert f"downgraded {head()} -> {previous}" in down.stdout
    assert cli.version() == {previous}

    current = cli.run("migrate", "current")
    assert current.returncode == 0, current
    assert previous in current.stdout and head() not in current.stdout

    to_base = cli.run("migrate", "downgrade", "base")
    assert to_base.returncode == 0, to_base
    assert cli.tables() == {"alembic_version"}

    pending = cli.run("check")
    count = len(list(script.walk_revisions()))
    assert_one_error_line(pending, 1, f"{count} migration(s) pending", "(empty)")

    up = cli.run("migrate")  # no action: upgrade to head
    assert up.returncode == 0, up
    assert f"upgraded (empty) -> {head()}" in up.stdout
    assert cli.tables() == SCHEMA
    assert cli.version() == {head()}

    drift = cli.run("migrate", "check")  # the models match the migrations
    assert drift.returncode == 0, drift
    assert "No new upgrade operations detected" in drift.stdout


@pytest.fixture
def scripts_copy(migrated_cli: Cli, tmp_path: Path) -> Path:
    """A copy of the migration scripts, and the ini pointing at it (the repository stays as is)."""
    location = tmp_path / "alembic"
    shutil.copytree(
        ROOT / "myapp" / "alembic", location, ignore=shutil.ignore_patterns("__pycache__")
    )
    url = migrated_cli.url if migrated_cli.backend == "sqlite" else decoy_url(tmp_path)
    write_ini(migrated_cli.ini, url, str(location))
    return location


def test_migrate_revision_autogenerate(migrated_cli: Cli, scripts_copy: Path) -> None:
    cli = migrated_cli
    versions = scripts_copy / "versions"
    before = set(versions.iterdir())

    created = cli.run("migrate", "revision", "-m", "nothing changed", "--autogenerate")
    assert created.returncode == 0, created
    (new_file,) = set(versions.iterdir()) - before
    assert new_file.name.endswith("_nothing_changed.py")
    assert f"created {new_file}" in created.stdout
    assert f"down_revision = '{head()}'" in new_file.read_text()
    assert not (ROOT / "myapp" / "alembic" / "versions" / new_file.name).exists()

    pending = cli.run("check")
    assert_one_error_line(pending, 1, "1 migration(s) pending", f"at {head()}")

    # alembic check refuses a database that is not at the (new) head
    refused = cli.run("migrate", "check")
    assert_one_error_line(refused, 1, "alembic:", "not up to date")
    assert cli.version() == {head()}


FAILING_MIGRATION = """\
import sqlalchemy as sa
from alembic import op

revision = "c1c1fa11c1c1"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("cli_probe", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO cli_probe (id) VALUES (1)")
    raise RuntimeError("migration failed on purpose")


def downgrade():
    op.drop_table("cli_probe")
"""


@pytest.mark.not_mysql(
    reason="MySQL/MariaDB DDL is not transactional: what a failing migration leaves there, and "
    "what myapp says about it, is tests/commands/test_half_applied_migrations.py"
)
def test_a_failing_migration_leaves_nothing(migrated_cli: Cli, scripts_copy: Path) -> None:
    """The whole upgrade is one transaction: the table created before the error is gone."""
    cli = migrated_cli
    (scripts_copy / "versions" / "c1c1fa11c1c1_failing.py").write_text(
        FAILING_MIGRATION.format(down=head())
    )
    result = cli.run("migrate")
    assert_one_error_line(result, 1, "RuntimeError: migration failed on purpose")
    assert cli.tables() == SCHEMA
    assert cli.version() == {head()}

    unknown = cli.run("migrate", "downgrade", "nosuchrevision")
    assert_one_error_line(unknown, 1, "alembic:", "nosuchrevision")
    assert cli.version() == {head()}


def test_migrate_history_and_stamp(in_process: InProcess) -> None:
    history = in_process("migrate", "history")
    assert history.returncode == 0, history
    for revision in scripts().walk_revisions():
        assert revision.revision in history.stdout

    cli = in_process.cli
    forgotten = in_process("migrate", "stamp", "base")  # records, runs nothing
    assert (forgotten.returncode, forgotten.stdout) == (0, "stamped (empty)\n"), forgotten
    assert cli.tables() == SCHEMA
    adopted = in_process("migrate", "stamp", "head")
    assert (adopted.returncode, adopted.stdout) == (0, f"stamped {head()}\n"), adopted
    assert cli.version() == {head()}
