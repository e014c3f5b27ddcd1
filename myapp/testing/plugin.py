"""The ``myapp`` pytest plugin: hooks and options (registered by the ``pytest11`` entry point).

Every pytest run in an environment where myapp is installed loads this
module (``-p no:myapp`` disables it). Unconfigured, it only adds its command
line and ini options, its markers and the leak guard on engines the toolkit
made (none, then). Configured (an ini option of :mod:`myapp.testing.config`:
``myapp_ini``, ``myapp_app``, ``myapp_metadata``, ``myapp_script_location``
or ``myapp_alembic_ini``), it registers the fixtures of
:mod:`myapp.testing.fixtures` and parametrizes the tests that use the
database by backend.

One job per module:

* here: options, backends, the doomed-mode note, the per-test leak guard;
* :mod:`myapp.testing.config`: the ini options;
* :mod:`myapp.testing.fixtures`: the fixtures;
* :mod:`myapp.testing.database`: the PostgreSQL test database, the schema;
* :mod:`myapp.testing.tracker`: the leak guard's connection tracker;
* :mod:`myapp.testing.isolation`: per-test isolation (``isolated_db``, ``db``);
* :mod:`myapp.testing.request_thread`: requests on a worker thread (``testapp``);
* :mod:`myapp.testing.committed`: real commits, cleaned up (``committed_rows``).

Backends: every test that uses the database runs once per backend, SQLite
always, PostgreSQL and MySQL/MariaDB (the ``mysql`` backend) when ``--dburl``
(repeatable, or ``MYAPP_TEST_DBURL``) names such a server. A test marked
``@pytest.mark.not_mysql(reason=...)`` is not generated for the mysql backend;
the run's summary lists those tests and their reasons.

The leak guard: before each test the plugin notes a mark (O(1)); after the
test's teardown it reclaims whatever connection any engine the toolkit made
(``dbengine``, ``committed_rows``, engines passed to ``track``) checked out
during the test and still has out, and fails the test at its teardown,
naming it and where each connection was checked out. Checking costs one
look per tracked engine when nothing leaked.

``@pytest.mark.doomed``: the Pyramid starter's faster pattern (one doomed
transaction for the whole test, no savepoints) for tests that never commit;
every way of committing fails with a message naming the marker.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from transaction.interfaces import AlreadyInTransaction, DoomedTransaction

from myapp.db import NestedTransactionError, TransactionManaged

from . import tracker
from .config import INI_OPTIONS, ToolkitConfig

# re-exported: these names lived here before the split
from .database import (  # noqa: F401
    HOST_TAG,
    PG_DATABASE_PREFIX,
    PostgresTestDatabase,
    build_schema,
    run_migrations,
    set_database_prefix,
)
from .isolation import TestDB, isolated_db  # noqa: F401
from .request_thread import RequestThread, _RequestThread, threaded_wsgi  # noqa: F401
from .tracker import ConnectionTracker, LeakError  # noqa: F401

ENV_DBURL = "MYAPP_TEST_DBURL"
#: the backends a run may use
BACKENDS = ("sqlite", "postgresql", "mysql")
#: the name the fixtures module is registered under
FIXTURES_PLUGIN = "myapp.testing.fixtures"

DOOMED_NOTE = (
    "[myapp] this test runs in the @pytest.mark.doomed mode: the whole test is one doomed "
    "transaction that can never commit (session.commit(), a durable db_transaction(), "
    "transaction.commit() and 'with transaction.manager:' all fail). Drop the marker to test "
    "code that commits: the default db fixture turns its commits into savepoint releases."
)

#: errors that come from trying to commit (in the doomed mode: the note says why)
_COMMIT_ERRORS = (
    TransactionManaged,
    NestedTransactionError,
    DoomedTransaction,
    AlreadyInTransaction,
)
_MARK = pytest.StashKey[int]()


# ---------------------------------------------------------------------------
# options and backends


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("myapp", "myapp database toolkit")
    group.addoption(
        "--dburl",
        action="append",
        default=None,
        help=(
            "a PostgreSQL (postgresql://) or MySQL/MariaDB (mysql://, mariadb://) server URL; "
            "repeat it for both. The suite then also runs on that backend, in a fresh "
            f"database created for the run (env: {ENV_DBURL}, URLs separated by spaces or commas)"
        ),
    )
    group.addoption(
        "--backends",
        default=None,
        help="comma-separated backends to run: sqlite,postgresql,mysql (default: sqlite, plus "
        "the backend of each --dburl)",
    )
    group.addoption(
        "--app-ini",
        default=None,
        help="PasteDeploy ini file for the app fixtures (overrides the myapp_ini ini option)",
    )
    for name, (kind, help_text) in INI_OPTIONS.items():
        parser.addini(name, help_text, type=kind)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "doomed: use the faster doomed-transaction fixture mode (the test never commits)"
    )
    config.addinivalue_line("markers", "postgresql_only: the behaviour under test needs PostgreSQL")
    config.addinivalue_line(
        "markers",
        "not_mysql(reason): the test is not generated for the mysql backend, for the reason "
        "given (listed at the end of the run)",
    )
    config.addinivalue_line(
        "markers",
        "mysql_only: a MySQL/MariaDB behaviour; deselected when the run has no mysql backend",
    )
    config.addinivalue_line(
        "markers",
        "server_only: the behaviour needs a database server (PostgreSQL or MySQL/MariaDB), "
        "not SQLite (row locks, SKIP LOCKED, ...)",
    )
    config.addinivalue_line("markers", "myapp_deselect: (internal) deselected by the plugin")
    toolkit = ToolkitConfig.from_pytest(config)
    config._myapp_toolkit = toolkit  # type: ignore[attr-defined]
    config._myapp_not_mysql = []  # type: ignore[attr-defined]
    if toolkit.db_prefix:
        try:
            set_database_prefix(toolkit.db_prefix)
        except ValueError as exc:
            raise pytest.UsageError(f"myapp_db_prefix: {exc}") from exc
    servers = server_urls_from(config.getoption("--dburl"), os.environ.get(ENV_DBURL))
    config._myapp_servers = servers  # type: ignore[attr-defined]
    # compatibility: getoption("--dburl") answers the PostgreSQL server (or None)
    config.option.dburl = servers.get("postgresql")
    requested = config.getoption("--backends")
    backends = requested.split(",") if requested else ["sqlite", *servers]
    for name in backends:
        if name not in BACKENDS:
            raise pytest.UsageError(f"--backends: unknown backend {name!r}")
        if name != "sqlite" and name not in servers:
            raise pytest.UsageError(
                f"the {name} backend needs --dburl or MYAPP_TEST_DBURL "
                f"({'postgresql' if name == 'postgresql' else 'mysql or mariadb'}://...)"
            )
    config._myapp_backends = backends  # type: ignore[attr-defined]
    if toolkit.active and not config.pluginmanager.has_plugin(FIXTURES_PLUGIN):
        from . import fixtures

        config.pluginmanager.register(fixtures, FIXTURES_PLUGIN)


def server_urls_from(options: list[str] | None, env: str | None) -> dict[str, str]:
    """``{"postgresql": url, "mysql": url}`` from ``--dburl`` (repeatable) or the environment."""
    urls = list(options or [])
    if not urls and env:
        urls = env.replace(",", " ").split()
    servers: dict[str, str] = {}
    for url in urls:
        backend = backend_of_url(url)
        if backend is None:
            raise pytest.UsageError(
                f"--dburl {url}: not a postgresql://, mysql:// or mariadb:// server URL"
            )
        if backend in servers:
            raise pytest.UsageError(f"--dburl: two {backend} servers ({servers[backend]}, {url})")
        servers[backend] = url
    return servers


def backend_of_url(url: str) -> str | None:
    """The test backend of a server URL: ``postgresql``, ``mysql`` (MySQL or MariaDB), or None."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme in ("mysql", "mariadb"):
        return "mysql"
    return None


def server_url(config: pytest.Config, backend: str) -> str | None:
    """The ``--dburl`` server of ``backend`` (``postgresql``, ``mysql``), or None."""
    return config._myapp_servers.get(backend)  # type: ignore[attr-defined,no-any-return]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Name the tests that were not generated for the mysql backend, with their reasons."""
    excluded = getattr(config, "_myapp_not_mysql", None)
    if excluded:
        terminalreporter.write_sep("-", f"not run on mysql: {len(excluded)} test(s) (not_mysql)")
        for nodeid, reason in excluded:
            terminalreporter.write_line(f"{nodeid}: {reason}")


def pytest_report_header(config: pytest.Config) -> str:
    if not config._myapp_toolkit.active:  # type: ignore[attr-defined]
        return "myapp toolkit: not configured (no myapp_* ini option): no fixtures"
    return f"myapp backends: {', '.join(config._myapp_backends)}"  # type: ignore[attr-defined]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "backend" in metafunc.fixturenames and config._myapp_toolkit.active:  # type: ignore[attr-defined]
        backends = list(config._myapp_backends)  # type: ignore[attr-defined]
        marker = metafunc.definition.get_closest_marker("postgresql_only")
        if marker is not None:
            backends = [b for b in backends if b == "postgresql"]
            if not backends and config.getoption("--backends"):
                # backends chosen explicitly, PostgreSQL not among them: deselected, not skipped
                backends = [pytest.param("postgresql", marks=pytest.mark.myapp_deselect)]
            elif not backends:
                backends = [
                    pytest.param(
                        "postgresql",
                        marks=pytest.mark.skip(
                            reason="needs PostgreSQL: pass --dburl or set MYAPP_TEST_DBURL"
                        ),
                    )
                ]
        if metafunc.definition.get_closest_marker("server_only") is not None:
            backends = [b for b in backends if b != "sqlite"]
            if not backends and config.getoption("--backends"):
                backends = [pytest.param("postgresql", marks=pytest.mark.myapp_deselect)]
            elif not backends:
                backends = [
                    pytest.param(
                        "postgresql",
                        marks=pytest.mark.skip(
                            reason="needs a database server: pass --dburl or set MYAPP_TEST_DBURL"
                        ),
                    )
                ]
        if metafunc.definition.get_closest_marker("mysql_only") is not None:
            # not a skip where no MySQL server is given: deselected (pytest says how many)
            backends = [b for b in backends if b == "mysql"] or [
                pytest.param("mysql", marks=pytest.mark.myapp_deselect)
            ]
        not_mysql = metafunc.definition.get_closest_marker("not_mysql")
        if not_mysql is not None and "mysql" in backends:
            reason = not_mysql.kwargs.get("reason") or (not_mysql.args or [""])[0]
            if not reason:
                raise pytest.UsageError(
                    f"{metafunc.definition.nodeid}: @pytest.mark.not_mysql needs a reason"
                )
            backends = [b for b in backends if b != "mysql"]
            config._myapp_not_mysql.append((metafunc.definition.nodeid, reason))  # type: ignore[attr-defined]
            if not backends:  # a mysql-only run (--backends mysql): the test is not for it
                backends = [pytest.param("mysql", marks=pytest.mark.myapp_deselect)]
        metafunc.parametrize("backend", backends, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``mysql_only`` tests of a run without the mysql backend."""
    deselected = [item for item in items if item.get_closest_marker("myapp_deselect")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("myapp_deselect")]


# ---------------------------------------------------------------------------
# the doomed mode's note


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    """In the doomed mode, say so on every error that comes from trying to commit."""
    try:
        return (yield)
    except _COMMIT_ERRORS as exc:
        _add_doomed_note(pyfuncitem, exc)
        raise


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """The same note when a fixture of a doomed test tries to commit."""
    try:
        return (yield)
    except _COMMIT_ERRORS as exc:
        _add_doomed_note(request.node, exc)
        raise


def _add_doomed_note(node: Any, exc: BaseException) -> None:
    if node.get_closest_marker("doomed") is not None and DOOMED_NOTE not in getattr(
        exc, "__notes__", ()
    ):
        exc.add_note(DOOMED_NOTE)


# ---------------------------------------------------------------------------
# the leak guard, for every test


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    item.stash[_MARK] = tracker.mark()
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """After the test's fixtures are torn down: fail it if it left a connection checked out."""
    before = item.stash.get(_MARK, None)
    try:
        result = yield
    finally:
        leaked = tracker.reclaim_all_since(before) if before is not None else []
    if leaked:
        pytest.fail(
            f"leak guard: {item.nodeid} left {len(leaked)} connection(s) checked out "
            "(checked out at " + "; ".join(leaked) + "; invalidated and returned to the pool)",
            pytrace=False,
        )
    return result
