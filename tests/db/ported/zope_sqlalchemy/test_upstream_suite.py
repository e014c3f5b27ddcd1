"""zope.sqlalchemy's own suite, unmodified, on this environment's libraries and databases.

The ported tests (``test_zope_tests.py``, ``test_readme.py``) check myapp's
bridge; this runs the installed zope.sqlalchemy's ``tests.py`` and README
doctest exactly as its maintainers do (``test_suite()``, ``TEST_DSN``), in a
subprocess (the suite calls ``orm.clear_mappers()``, which would unmap
myapp's models in this process), against SQLite (zope's default, in memory)
and the run's PostgreSQL database (in a schema of its own, so its
``test_users`` tables meet nothing). A release of zope.sqlalchemy, SQLAlchemy,
``transaction`` or psycopg whose combination breaks zope.sqlalchemy itself
fails here by name, before the bridge built on it is blamed. Only zope's own
per-backend skips are accepted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from sqlalchemy.engine import Engine

SCRIPT = """
import sys, unittest
from zope.sqlalchemy import tests
result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(tests.test_suite())
print("RAN", result.testsRun)
sys.exit(0 if result.wasSuccessful() else 1)
"""

#: the skips zope.sqlalchemy's suite makes itself (no two-phase run, SQLAlchemy 2, SQLite)
ZOPE_SKIPS = {
    "No two phase transaction support",
    "Bound metadata is not supported in SQLAlchemy 2.0",
    "No savepoint support",
    "No save point support",
}

SCHEMA = "zope_sqlalchemy_upstream"


@pytest.mark.not_mysql(
    reason="zope.sqlalchemy's own suite runs on its TEST_DSN's SQLite or PostgreSQL (its "
    "RetryTests need psycopg); the ported suites beside it run on MariaDB"
)
def test_upstream_suite(backend: str, dbengine: Engine) -> None:
    """zope.sqlalchemy: tests.test_suite() (ZopeSQLAlchemyTests, MultipleEngineTests,
    RetryTests on PostgreSQL, the README doctest), unmodified.
    """
    if backend == "postgresql":
        with dbengine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
        url = dbengine.url.update_query_dict({"options": f"-csearch_path={SCHEMA}"})
        dsn = url.render_as_string(hide_password=False)
    else:
        dsn = "sqlite:///:memory:"
    env = {**os.environ, "TEST_DSN": dsn}
    env.pop("TEST_TWOPHASE", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        if backend == "postgresql":
            with dbengine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"zope.sqlalchemy's own suite failed on {backend}:\n{output}"
    ran = int(re.search(r"^RAN (\d+)$", proc.stdout, re.MULTILINE).group(1))
    assert ran >= 24, output  # 22 + 1 + the README doctest (+ 2 RetryTests on PostgreSQL)
    skips = set(re.findall(r"\.\.\. skipped '([^']*)'", proc.stdout))
    assert skips <= ZOPE_SKIPS, f"unexpected skips: {skips - ZOPE_SKIPS}\n{output}"
    if backend == "postgresql":
        assert "testRetryThread (zope.sqlalchemy.tests.RetryTests" in proc.stdout
