"""Test databases: a fresh server database per run (or xdist worker), and its schema.

:class:`PostgresTestDatabase` (and :class:`MysqlTestDatabase`, MySQL/MariaDB)
creates ``<prefix><worker>_<host>_<pid>_<random>`` on the ``--dburl`` server
and drops it after the run; a run killed with SIGKILL leaves its database
behind, and the next run on the same machine drops it. :func:`test_database_for`
picks the class from the URL. :func:`build_schema` builds the schema once per run, from a
``MetaData`` (``create_all``) or alembic migrations (``upgrade head`` on the
given connection).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket

import pytest
import sqlalchemy
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection, Engine, make_url

from myapp.db import create_engine_for
from myapp.db.mysql import CHARSET, COLLATION, is_mysql
from myapp.db.settings import normalise_url

#: default prefix of the PostgreSQL databases the toolkit creates (and drops)
PG_DATABASE_PREFIX = "test_"
#: the prefix in force (the ``myapp_db_prefix`` ini option sets it when pytest starts)
_prefix = [PG_DATABASE_PREFIX]


def set_database_prefix(prefix: str) -> None:
    """The prefix of the databases :class:`PostgresTestDatabase` makes from now on."""
    _check_prefix(prefix)
    _prefix[0] = prefix


def database_prefix() -> str:
    """The prefix in force (``myapp_db_prefix``, default ``test_``)."""
    return _prefix[0]


def _check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,29}", prefix):
        raise ValueError(
            f"test database prefix {prefix!r}: use 1-30 lowercase letters, digits or '_', "
            "starting with a letter"
        )


def run_migrations(
    connection: Connection,
    revision: str = "head",
    *,
    script_location: str | None = None,
    alembic_ini: str | None = None,
) -> None:
    """``alembic upgrade revision`` on ``connection`` (in the caller's transaction).

    The migrations come from ``script_location`` (``"package:alembic"``) or
    the ``[alembic]`` section of ``alembic_ini``; with neither, myapp's own.
    The project's ``env.py`` must use ``config.attributes["connection"]``
    when it is set (alembic's recipe "Sharing a Connection across one or
    more programmatic migration commands").
    """
    from alembic import command
    from alembic.config import Config

    config = Config(alembic_ini) if alembic_ini else Config()
    if script_location is not None or not alembic_ini:
        config.set_main_option("script_location", script_location or "myapp:alembic")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def build_schema(
    connection: Connection,
    *,
    metadata: MetaData | None = None,
    script_location: str | None = None,
    alembic_ini: str | None = None,
) -> None:
    """Build the test schema on ``connection``: ``metadata.create_all`` or the migrations."""
    if metadata is not None:
        metadata.create_all(connection)
    else:
        run_migrations(connection, script_location=script_location, alembic_ini=alembic_ini)


#: this machine, in test database names (several machines may share one server)
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _name_pattern(prefix: str) -> re.Pattern[str]:
    """``<prefix><worker>_<host>_<pid>_<random>``: the names :class:`PostgresTestDatabase` makes."""
    return re.compile(
        rf"^{re.escape(prefix)}(?P<worker>[A-Za-z0-9]+)_(?P<host>[0-9a-f]{{6}})_(?P<pid>\d+)_[0-9a-f]+$"
    )


#: the names made with the default prefix
_TEST_DATABASE_NAME = _name_pattern(PG_DATABASE_PREFIX)


def _worker_tag() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{worker}_{HOST_TAG}_{os.getpid()}_{secrets.token_hex(3)}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class PostgresTestDatabase:
    """A PostgreSQL database created for one test run (or xdist worker) and dropped after it.

    A run killed with SIGKILL cannot drop its database: the next run on the
    same machine does (:meth:`drop_leftovers`), if the run that made it is
    gone and nobody is connected to it.
    """

    def __init__(self, server_url: str, prefix: str | None = None) -> None:
        prefix = prefix or database_prefix()
        _check_prefix(prefix)
        self.prefix = prefix
        self.server_url = make_url(normalise_url(server_url))
        self.name = f"{prefix}{_worker_tag()}"
        self.url = self.server_url.set(database=self.name)

    def drop_leftovers(self, conn: Connection) -> list[str]:
        """Drop the test databases of dead runs of this machine; return their names.

        Only names made by this machine (:data:`HOST_TAG`) whose process no
        longer exists and that have no connection are dropped; databases of
        other machines, of live runs, or in older name formats are left alone.
        """
        dropped = []
        names = conn.exec_driver_sql(
            self._list_sql, {"pattern": self.prefix.replace("_", "\\_") + "%"}
        ).scalars()
        pattern = _name_pattern(self.prefix)
        for name in list(names):
            match = pattern.match(name)
            if match is None or match["host"] != HOST_TAG or _process_alive(int(match["pid"])):
                continue
            if self._sessions(conn, name):
                continue
            try:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quote(name)}")
            except sqlalchemy.exc.DBAPIError:  # taken meanwhile (another worker dropping it)
                continue
            dropped.append(name)
        return dropped

    # -- what differs between servers ---------------------------------------------------

    #: the names of the server's databases that match ``%(pattern)s``
    _list_sql = "SELECT datname FROM pg_database WHERE datname LIKE %(pattern)s"

    @staticmethod
    def _quote(name: str) -> str:
        return f'"{name}"'

    @staticmethod
    def _sessions(conn: Connection, name: str) -> list[int]:
        """The ids of the other sessions connected to the database ``name``."""
        return list(
            conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = %(name)s "
                "AND pid <> pg_backend_pid()",
                {"name": name},
            ).scalars()
        )

    def _create_sql(self) -> str:
        return f"CREATE DATABASE {self._quote(self.name)}"

    def _drop(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quote(self.name)} WITH (FORCE)")

    # -----------------------------------------------------------------------------------

    def _admin(self) -> Engine:
        return create_engine_for(
            self.server_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
        )

    def create(self) -> str:
        """Create the database; return its URL (password included)."""
        admin = self._admin()
        try:
            with admin.connect() as conn:
                self.drop_leftovers(conn)
                conn.exec_driver_sql(self._create_sql())
        except Exception as exc:
            raise pytest.UsageError(
                f"--dburl {self.server_url.render_as_string()}: cannot create a test database "
                f"there: {exc}"
            ) from exc
        finally:
            admin.dispose()
        return self.url.render_as_string(hide_password=False)

    def drop(self) -> None:
        """Drop the database, closing whatever connections remain on it."""
        admin = self._admin()
        try:
            with admin.connect() as conn:
                self._drop(conn)
        finally:
            admin.dispose()


class MysqlTestDatabase(PostgresTestDatabase):
    """A MySQL/MariaDB database created for one test run (or xdist worker) and dropped after it.

    Created ``utf8mb4`` with myapp's collation (:data:`myapp.db.mysql.COLLATION`).
    The same naming and leftover rules as :class:`PostgresTestDatabase`; the
    server has no ``DROP DATABASE ... WITH (FORCE)``, so :meth:`drop` first
    kills the connections still on the database (``KILL CONNECTION``).
    """

    _list_sql = (
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %(pattern)s"
    )

    @staticmethod
    def _quote(name: str) -> str:
        return f"`{name}`"

    @staticmethod
    def _sessions(conn: Connection, name: str) -> list[int]:
        return list(
            conn.exec_driver_sql(
                "SELECT id FROM information_schema.processlist WHERE db = %(name)s "
                "AND id <> CONNECTION_ID()",
                {"name": name},
            ).scalars()
        )

    def _create_sql(self) -> str:
        return (
            f"CREATE DATABASE {self._quote(self.name)} CHARACTER SET {CHARSET} COLLATE {COLLATION}"
        )

    def _drop(self, conn: Connection) -> None:
        for session_id in self._sessions(conn, self.name):
            try:
                conn.exec_driver_sql(f"KILL CONNECTION {int(session_id)}")
            except sqlalchemy.exc.DBAPIError:  # gone meanwhile
                pass
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quote(self.name)}")


def test_database_for(server_url: str, prefix: str | None = None) -> PostgresTestDatabase:
    """The test database class for ``server_url``'s backend (PostgreSQL or MySQL/MariaDB)."""
    backend = make_url(normalise_url(server_url)).get_backend_name()
    if is_mysql(backend):
        return MysqlTestDatabase(server_url, prefix)
    return PostgresTestDatabase(server_url, prefix)


test_database_for.__test__ = False  # type: ignore[attr-defined]
