"""Database commands: ``initdb``, ``migrate`` (alembic) and ``check``.

They manage their own transactions (``atomic = False``): alembic runs on a
connection of the application's engine (so ``DATABASE_URL`` and the SQLite
workaround apply) inside ``engine.begin()``, which commits the whole
migration or, on error, rolls all of it back (DDL is transactional on
PostgreSQL and, with myapp's workaround, on SQLite).

**MySQL/MariaDB: DDL is not transactional.** Each ``CREATE``/``ALTER``/``DROP``
commits at once; a migration that fails half-way keeps the steps it made,
while ``alembic_version`` still names the revision before it. There
:func:`upgrade` records every statement the migration under way has
applied; if it fails, the error says which revision failed, which of its
statements were applied and kept, which statement failed, and the recorded
revision, and a journal table (:data:`JOURNAL_TABLE`, written on its own
autocommit connection) keeps that for the commands that come later:
``migrate``, ``initdb`` and ``check`` report a half-applied migration before
anything else (``check`` fails). myapp's migrations are made of steps that
check the schema first (:mod:`myapp.db.ddl`), so running ``myapp migrate``
again, once the cause is fixed, finishes the migration; the journal is then
dropped.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command as alembic_command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from myapp.db.mysql import CHARSET, COLLATION, is_mysql
from myapp.db.mysql import error_code as mysql_error_code
from myapp.db.replicas import replica_lines
from myapp.db.twophase import in_doubt_lines

from .context import CommandContext
from .errors import CommandError, connection_error_message, one_line
from .registry import Command, register

#: Where the migrations ship inside the package (used when the ini's path does not resolve).
PACKAGED_SCRIPTS = "myapp:alembic"


def alembic_config(ctx: CommandContext) -> Config:
    """An alembic ``Config`` read from the command's ini file (its ``[alembic]`` section).

    A relative ``script_location`` is looked up in the current directory,
    then next to the ini file; ``myapp/alembic`` falls back to the migrations
    installed with the package, so ``myapp -c /etc/myapp.ini migrate`` works
    from anywhere.
    """
    config = Config(ctx.config_file, stdout=ctx.stdout)
    location = config.get_main_option("script_location")
    if not location:
        config.set_main_option("script_location", PACKAGED_SCRIPTS)
    elif ":" not in location and not os.path.isabs(location) and not os.path.isdir(location):
        beside_ini = os.path.join(os.path.dirname(ctx.config_file), location)
        if os.path.isdir(beside_ini):
            config.set_main_option("script_location", beside_ini)
        elif os.path.normpath(location) == os.path.join("myapp", "alembic"):
            config.set_main_option("script_location", PACKAGED_SCRIPTS)
    return config


def database_label(engine: Engine) -> str:
    """The engine's URL with the password hidden."""
    return engine.url.render_as_string(hide_password=True)


def missing_sqlite_file(engine: Engine) -> str | None:
    """The path of a SQLite file database that does not exist yet, else None."""
    url = engine.url
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or os.path.exists(database):
        return None
    return database


@contextmanager
def migration_connection(ctx: CommandContext, config: Config) -> Iterator[Connection]:
    """A connection in a transaction, handed to env.py; committed if the block succeeds."""
    engine: Engine = ctx.db.engine
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        raise CommandError(connection_error_message(exc, engine)) from exc
    try:
        with connection.begin():
            config.attributes["connection"] = connection
            yield connection
    finally:
        config.attributes.pop("connection", None)
        connection.close()


def current_heads(connection: Connection) -> tuple[str, ...]:
    """The revisions the database is at (empty: never migrated)."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


def describe_heads(heads: tuple[str, ...]) -> str:
    return ", ".join(heads) if heads else "(empty)"


def pending_revisions(script: ScriptDirectory, heads: tuple[str, ...]) -> list[str]:
    """The revisions between the database's ``heads`` and the code's heads, newest first."""
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [rev for rev in heads if rev not in known]
    if unknown:
        raise CommandError(
            f"the database is at revision {', '.join(unknown)}, which this code does not know "
            "(was it migrated by a newer version?)"
        )
    return [rev.revision for rev in script.iterate_revisions(tuple(script.get_heads()), heads)]


#: MySQL/MariaDB: the migration that failed half-way and what of it was applied
JOURNAL_TABLE = "myapp_migration_journal"
#: statements that change nothing and are not recorded in the journal
_READS = ("SELECT", "SHOW", "DESCRIBE", "EXPLAIN", "SET ")


class HalfApplied:
    """What the journal says about a migration that failed half-way (MySQL/MariaDB)."""

    def __init__(self, revision: str, recorded: str, statements: list[str], error: str) -> None:
        self.revision = revision
        self.recorded = recorded
        self.statements = statements
        self.error = error

    def describe(self) -> str:
        applied = "".join(f"\n    {i}. {one_line(s)}" for i, s in enumerate(self.statements, 1))
        return (
            f"migration {self.revision} failed half-way and MySQL/MariaDB cannot roll DDL back: "
            f"the database is recorded at revision {self.recorded}, and "
            f"{len(self.statements)} statement(s) of {self.revision} were applied and kept:"
            f"{applied or ' (none)'}\n  then it failed: {self.error}\n"
            f"  Nothing after that statement was applied. Fix the cause and run 'myapp migrate' "
            f"again: each step of myapp's migrations checks the schema first, so the rerun "
            f"skips what is already there and finishes {self.revision}."
        )


def _journal_engine(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def read_journal(engine: Engine) -> HalfApplied | None:
    """The half-applied migration the journal records (MySQL/MariaDB), or None."""
    if not is_mysql(engine.dialect):
        return None
    from sqlalchemy import inspect

    with _journal_engine(engine).connect() as conn:
        if not inspect(conn).has_table(JOURNAL_TABLE):
            return None
        rows = conn.exec_driver_sql(
            f"SELECT revision, recorded, step, statement FROM {JOURNAL_TABLE} ORDER BY step"
        ).all()
    if not rows:
        return None
    statements = [r.statement for r in rows if r.step > 0]
    error = next((r.statement for r in rows if r.step == 0), "")
    return HalfApplied(rows[0].revision, rows[0].recorded, statements, error)


def _write_journal(engine: Engine, half: HalfApplied) -> None:
    with _journal_engine(engine).connect() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (revision VARCHAR(64) NOT NULL, "
            "recorded VARCHAR(200) NOT NULL, step INTEGER NOT NULL, statement TEXT NOT NULL, "
            "PRIMARY KEY (step))"
        )
        conn.exec_driver_sql(f"DELETE FROM {JOURNAL_TABLE}")
        rows = [(0, half.error), *enumerate(half.statements, 1)]
        for step, statement in rows:
            conn.exec_driver_sql(
                f"INSERT INTO {JOURNAL_TABLE} (revision, recorded, step, statement) "
                "VALUES (%(revision)s, %(recorded)s, %(step)s, %(statement)s)",
                {
                    "revision": half.revision,
                    "recorded": half.recorded,
                    "step": step,
                    "statement": statement,
                },
            )


def _clear_journal(engine: Engine) -> None:
    with _journal_engine(engine).connect() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {JOURNAL_TABLE}")


def report_half_applied(ctx: CommandContext) -> HalfApplied | None:
    """Say so if the journal records a half-applied migration; return it."""
    half = read_journal(ctx.db.engine)
    if half is not None:
        ctx.out(f"{database_label(ctx.db.engine)}: WARNING: " + half.describe())
    return half


class _StepRecorder:
    """The statements each revision of this run applied (MySQL/MariaDB).

    A revision's ``alembic_version`` update is committed by the next DDL
    statement (MySQL commits before each one), not at once: which revisions
    are really recorded is read from the database after a failure, and the
    statements of every revision after the recorded one count as applied.
    """

    def __init__(self) -> None:
        self.finished: list[str] = []  # revisions alembic finished, in order
        self.runs: list[list[str]] = [[]]  # statements of each revision, the current last

    def after_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.strip()
        if not text.upper().startswith(_READS) and "alembic_version" not in text:
            self.runs[-1].append(text)

    def on_version_apply(self, *, step: Any, **kw: Any) -> None:
        self.finished.append(step.up_revision_id)
        self.runs.append([])

    def applied_since(self, recorded: tuple[str, ...]) -> list[str]:
        """The statements applied after the revision the database records."""
        start = 0
        for i, revision in enumerate(self.finished):
            if revision in recorded:
                start = i + 1
        return [statement for run in self.runs[start:] for statement in run]


def upgrade(ctx: CommandContext, revision: str = "heads") -> None:
    """Upgrade the database to ``revision`` and say what changed.

    On MySQL/MariaDB, a migration that fails half-way is reported (and
    journaled) as described in the module docstring.
    """
    config = alembic_config(ctx)
    engine: Engine = ctx.db.engine
    mysql = is_mysql(engine.dialect)
    if mysql:
        report_half_applied(ctx)
    recorder = _StepRecorder()
    with migration_connection(ctx, config) as connection:
        before = current_heads(connection)
        if not mysql:
            alembic_command.upgrade(config, revision)
        else:
            config.attributes["on_version_apply"] = recorder.on_version_apply
            event.listen(connection, "after_cursor_execute", recorder.after_execute)
            try:
                alembic_command.upgrade(config, revision)
            except Exception as exc:
                _half_applied(ctx, config, recorder, exc)
                raise
            finally:
                event.remove(connection, "after_cursor_execute", recorder.after_execute)
                config.attributes.pop("on_version_apply", None)
        after = current_heads(connection)
    if mysql:
        _clear_journal(engine)
    label = database_label(ctx.db.engine)
    if before == after:
        ctx.out(f"{label}: already at {describe_heads(after)}, nothing to do")
    else:
        ctx.out(f"{label}: upgraded {describe_heads(before)} -> {describe_heads(after)}")


def _half_applied(
    ctx: CommandContext, config: Config, recorder: _StepRecorder, exc: Exception
) -> None:
    """A migration failed on MySQL/MariaDB: journal what it applied and raise the explanation."""
    engine: Engine = ctx.db.engine
    with engine.connect() as conn:
        heads = current_heads(conn)
    script = ScriptDirectory.from_config(config)
    pending = pending_revisions(script, heads)
    failed = pending[-1] if pending else "(unknown)"
    error = one_line(str(getattr(exc, "orig", None) or exc))
    half = HalfApplied(failed, describe_heads(heads), recorder.applied_since(heads), error)
    if not half.statements:
        raise CommandError(
            f"migration {failed} failed before changing anything ({error}); the database is "
            f"at revision {describe_heads(heads)}"
        ) from exc
    _write_journal(engine, half)
    raise CommandError(half.describe()) from exc


def is_missing_database(exc: BaseException) -> bool:
    """True if connecting failed because the database does not exist.

    PostgreSQL: SQLSTATE 3D000; MySQL/MariaDB: error 1049 ("Unknown database").
    """
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if mysql_error_code(exc) == 1049:
        return True
    return sqlstate == "3D000" or (
        orig is not None and "does not exist" in str(orig) and "database" in str(orig)
    )


def create_mysql_database(engine: Engine) -> str:
    """``CREATE DATABASE`` for ``engine``'s MySQL/MariaDB database (utf8mb4, myapp's
    collation), connected to the server without a database. Returns the name; raises
    :class:`CommandError` with the statement to run when it cannot."""
    from sqlalchemy import create_engine

    name = engine.url.database or ""
    admin = create_engine(engine.url.set(database=""), isolation_level="AUTOCOMMIT")
    statement = f"CREATE DATABASE `{name}` CHARACTER SET {CHARSET} COLLATE {COLLATION}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(statement)
    except DBAPIError as exc:
        raise CommandError(
            f"the database {name!r} does not exist and could not be created "
            f"({one_line(str(exc.orig or exc))}); create it with: {statement}"
        ) from exc
    finally:
        admin.dispose()
    return name


def create_postgresql_database(engine: Engine) -> str:
    """``CREATE DATABASE`` for ``engine``'s database, connected to the server's ``postgres``
    database with the same credentials. Returns the name; raises :class:`CommandError` with
    the command to run when it cannot (no such right, server unreachable)."""
    from sqlalchemy import create_engine

    name = engine.url.database or ""
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            quoted = connection.dialect.identifier_preparer.quote(name)
            connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
    except DBAPIError as exc:
        url = engine.url
        where = " ".join(
            part
            for part in (
                f"-h {url.host}" if url.host else "",
                f"-p {url.port}" if url.port else "",
                f"-U {url.username}" if url.username else "",
            )
            if part
        )
        raise CommandError(
            f"the database {name!r} does not exist and could not be created "
            f"({one_line(str(exc.orig or exc))}); create it with: createdb {where} {name}".replace(
                "  ", " "
            )
        ) from exc
    finally:
        admin.dispose()
    return name


@register
class InitDB(Command):
    name = "initdb"
    help = "Create the database (and the SQLite file) and migrate it to the latest schema"
    description = (
        "Create the database schema by running every alembic migration up to head. "
        "For SQLite the file and its directory are created; a PostgreSQL or MySQL/MariaDB "
        "database that does not exist yet is created (CREATE DATABASE, with the URL's "
        "credentials; MySQL/MariaDB: utf8mb4, collation utf8mb4_nopad_bin), or the error "
        "says which command creates it. Running it again is harmless. MySQL/MariaDB cannot "
        "roll DDL back: a migration that fails half-way is reported (what was applied, what "
        "failed) and the next initdb or migrate finishes it."
    )
    atomic = False

    def handle(self, ctx: CommandContext, **options: Any) -> None:
        engine: Engine = ctx.db.engine
        if engine.dialect.name == "postgresql" or is_mysql(engine.dialect):
            missing = False
            try:
                with engine.connect():
                    pass
            except DBAPIError as exc:
                if not is_missing_database(exc):
                    raise CommandError(connection_error_message(exc, engine)) from exc
                missing = True
            if missing:  # outside the except block: its errors are about creating it
                create = create_mysql_database if is_mysql(engine.dialect) else None
                name = (create or create_postgresql_database)(engine)
                engine.dispose()
                ctx.out(f"{database_label(engine)}: created the database {name}")
        upgrade(ctx, "heads")


@register
class Migrate(Command):
    name = "migrate"
    help = "Run alembic migrations: upgrade (default), downgrade, current, history, revision"
    description = """
        Alembic, configured from the same ini file (its [alembic] section) and connected
        to the application's database (DATABASE_URL wins over sqlalchemy.url). Each action
        runs in one database transaction: on PostgreSQL and SQLite a failing migration leaves
        nothing behind. MySQL/MariaDB commit each DDL statement at once: a migration that
        fails half-way is reported with the statements it applied and the one that failed,
        'myapp check' fails until it is finished, and rerunning 'myapp migrate' finishes it
        (myapp's migration steps check the schema before acting).

        examples:
          myapp migrate                          upgrade to the latest revision
          myapp migrate downgrade -1             undo the last migration
          myapp migrate revision -m "add x" --autogenerate
          myapp migrate check                    fail if the models and migrations differ
        """
    atomic = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="action")
        up = actions.add_parser("upgrade", help="upgrade to REV (default: head)")
        up.add_argument("revision", nargs="?", default="heads", metavar="REV")
        down = actions.add_parser("downgrade", help="downgrade to REV (e.g. -1, base, a revision)")
        down.add_argument("revision", metavar="REV")
        actions.add_parser("current", help="show the database's revision (-v: details)")
        history = actions.add_parser("history", help="list the migrations (-v: details)")
        history.add_argument("-r", "--rev-range", metavar="RANGE", help="e.g. base:head, -2:")
        revision = actions.add_parser("revision", help="create a new migration file")
        revision.add_argument("-m", "--message", required=True, help="what the migration does")
        revision.add_argument(
            "--autogenerate",
            action="store_true",
            help="compare the models with the database and write the operations",
        )
        actions.add_parser("check", help="fail if the models differ from the migrated database")
        stamp = actions.add_parser("stamp", help="record REV as applied without running anything")
        stamp.add_argument("revision", metavar="REV")

    def handle(self, ctx: CommandContext, *, action: str | None = None, **options: Any) -> None:
        action = action or "upgrade"
        if action == "upgrade":
            upgrade(ctx, options.get("revision") or "heads")
            return
        config = alembic_config(ctx)
        if action == "history":  # needs only the scripts
            alembic_command.history(config, rev_range=options.get("rev_range"), verbose=ctx.verbose)
            return
        if action == "revision" and not options.get("autogenerate"):
            self._revision(ctx, config, options["message"], autogenerate=False)
            return
        with migration_connection(ctx, config) as connection:
            if action == "downgrade":
                before = current_heads(connection)
                alembic_command.downgrade(config, options["revision"])
                after = current_heads(connection)
                ctx.out(
                    f"{database_label(ctx.db.engine)}: downgraded "
                    f"{describe_heads(before)} -> {describe_heads(after)}"
                )
            elif action == "current":
                alembic_command.current(config, verbose=ctx.verbose)
                if not current_heads(connection):
                    ctx.out("(empty: no migration applied; run 'myapp initdb')")
            elif action == "revision":
                self._revision(ctx, config, options["message"], autogenerate=True)
            elif action == "check":
                alembic_command.check(config)
            elif action == "stamp":
                alembic_command.stamp(config, options["revision"])
                ctx.out(f"stamped {describe_heads(current_heads(connection))}")
            else:  # pragma: no cover - argparse restricts the choices
                raise CommandError(f"unknown migrate action {action!r}")

    @staticmethod
    def _revision(ctx: CommandContext, config: Config, message: str, *, autogenerate: bool) -> None:
        scripts = alembic_command.revision(config, message=message, autogenerate=autogenerate)
        for script in scripts if isinstance(scripts, list) else [scripts]:
            if script is not None:
                ctx.out(f"created {script.path}")


@register
class Check(Command):
    name = "check"
    help = "Check the database: reachable, and no migration pending"
    description = (
        "Connect to the database and compare its alembic revision with the code's. "
        "Exit status 1 if the database is unreachable or migrations are pending."
    )
    atomic = False

    def handle(self, ctx: CommandContext, **options: Any) -> None:
        config = alembic_config(ctx)
        script = ScriptDirectory.from_config(config)
        engine = ctx.db.engine
        label = database_label(engine)
        missing = missing_sqlite_file(engine)
        if missing:  # connecting would create an empty file
            raise CommandError(
                f"cannot connect to the database {label}: the file {missing} does not exist; "
                "run 'myapp initdb'"
            )
        with migration_connection(ctx, config) as connection:
            connection.exec_driver_sql("SELECT 1")
            heads = current_heads(connection)
        ctx.out(f"database: ok ({label})")
        half = read_journal(engine)
        if half is not None:
            raise CommandError(half.describe())
        for line in replica_lines(ctx.db):  # each read replica's state and lag
            ctx.out(line)
        for line in in_doubt_lines(ctx.db):  # two databases: old in-doubt prepared transactions
            ctx.out(line)
        pending = pending_revisions(script, heads)
        if pending:
            raise CommandError(
                f"{len(pending)} migration(s) pending: the database is at "
                f"{describe_heads(heads)}, the code at {', '.join(script.get_heads())}; "
                "run 'myapp migrate' (or 'myapp initdb')"
            )
        ctx.out(f"migrations: up to date ({describe_heads(heads)})")
