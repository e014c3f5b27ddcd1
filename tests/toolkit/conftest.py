"""Tests of the test toolkit itself (myapp.testing): fixtures, helpers, leak guard, backends.

Tests that must watch a test fail run an inner pytest session with
``pytester``; :func:`run_inner` passes the outer run's backend (and
``--dburl``) through, so those inner sessions run on PostgreSQL too.
"""

from __future__ import annotations

from typing import Any

import pytest

# imported here, once: pytester's in-process runs unload the modules they import, and
# SQLAlchemy warns (an error in this suite) when a dialect registers its functions twice
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

from myapp.models import Company, Driver
from myapp.testing import persisted_fixture
from myapp.testing.factories import CompanyFactory, DriverFactory
from myapp.testing.plugin import server_url


def pytest_configure(config: pytest.Config) -> None:
    # pytest_plugins = ["pytester"] is only allowed in the rootdir's conftest.py (this one is
    # not when the whole suite runs): load pytester the way such a line would
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture
def company(db: Any) -> Company:
    return persisted_fixture(db, CompanyFactory(), Company)


@pytest.fixture
def driver(db: Any, company: Company) -> Driver:
    return persisted_fixture(db, DriverFactory(company=company), Driver)


#: the inner runs' pytest.ini: the toolkit configured without an ini file of the app's
#: (their rootdir has none), as a project that names its app factory and migrations would
INNER_INI = """\
[pytest]
addopts = -p no:cacheprovider -p no:randomly
filterwarnings =
    error::sqlalchemy.exc.SAWarning
myapp_app = myapp:main
myapp_script_location = myapp:alembic
myapp_settings =
    myapp.env = testing
myapp_db_prefix = myapp_test_
"""
#: the test database prefix of the inner runs (and of this suite: setup.cfg)
PREFIX = "myapp_test_"


class Inner:
    """Runs inner pytest sessions on one backend (the outer test's)."""

    def __init__(self, pytester: pytest.Pytester, backend: str, dburl: str | None) -> None:
        self.pytester = pytester
        self.backend = backend
        self.dburl = dburl
        # the plugin comes from the package's pytest11 entry point (no -p needed)
        pytester.makeini(INNER_INI)

    def args(self) -> list[str]:
        args = ["--backends", self.backend]
        if self.backend != "sqlite":
            assert self.dburl, f"the {self.backend} backend needs --dburl"
            args += ["--dburl", self.dburl]
        return args

    def run(self, *args: str) -> pytest.RunResult:
        """An in-process run (fast); the outer test must not hold a unit of work."""
        return self._checked(self.pytester.runpytest(*self.args(), *args))

    def run_subprocess(self, *args: str, timeout: float = 300) -> pytest.RunResult:
        return self._checked(
            self.pytester.runpytest_subprocess(*self.args(), *args, timeout=timeout)
        )

    def _checked(self, result: pytest.RunResult) -> pytest.RunResult:
        # the plugin was loaded (entry point) and the inner run used this backend only
        result.stdout.fnmatch_lines([f"myapp backends: {self.backend}"])
        return result


@pytest.fixture(scope="session")
def _app_modules_loaded() -> None:
    """Build the application once in this process, on a throw-away in-memory database.

    pytester's in-process runs unload the modules each run imported; the
    application's OpenAPI/YAML stack does not survive being imported twice.
    Loading everything here, before any inner run, keeps it loaded.
    """
    from myapp import main
    from myapp.db import Database, create_engine_for

    database = Database(create_engine_for("sqlite://"))
    try:
        # the settings the inner runs use too (their rootdir has no testing.ini)
        main({}, **{"myapp.env": "testing", "myapp.database": database})
    finally:
        database.dispose()


@pytest.fixture
def inner(
    pytester: pytest.Pytester,
    backend: str,
    request: pytest.FixtureRequest,
    _app_modules_loaded: None,
) -> Inner:
    """Inner pytest runs on this test's backend; its ``--dburl`` server passed through."""
    return Inner(pytester, backend, server_url(request.config, backend))
