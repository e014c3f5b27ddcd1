"""The ``myapp`` pytest plugin: isolated tests in which the code under test may commit.

Every test that uses the database runs once per backend: SQLite always,
PostgreSQL when ``--dburl`` (or ``MYAPP_TEST_DBURL``) names a server. On
PostgreSQL the plugin creates a fresh database for the run (per xdist worker)
and drops it at the end.

Per test: one connection, an outer transaction, and the application's
session factory bound to that connection with
``join_transaction_mode="create_savepoint"``. Commits inside the test
(``db.session.commit()``, ``db_transaction()``, a request through
``testapp``) are savepoint releases; rollbacks return to the last savepoint.
After the test the transaction manager is aborted and the outer transaction
rolled back, so nothing survives. A leak guard then fails the test if it
left a connection checked out or a unit of work open.

``@pytest.mark.doomed``: the Pyramid starter's faster pattern (one doomed
transaction for the whole test, no savepoints) for tests that never commit;
a commit raises a clear error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import Connection, Engine, make_url

from myapp.db import Database, create_engine_for
from myapp.db.bridge import current_transaction, get_tm, is_implicit
from myapp.db.scope import Scope
from myapp.db.settings import normalise_url

ENV_DBURL = "MYAPP_TEST_DBURL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("myapp", "myapp database toolkit")
    group.addoption(
        "--dburl",
        default=os.environ.get(ENV_DBURL),
        help=(
            "PostgreSQL server URL; the suite then also runs on PostgreSQL, in a fresh "
            f"database created for the run (env: {ENV_DBURL})"
        ),
    )
    group.addoption(
        "--backends",
        default=None,
        help="comma-separated backends to run: sqlite,postgresql (default: sqlite, plus "
        "postgresql when --dburl is given)",
    )
    group.addoption(
        "--app-ini", default="testing.ini", help="ini file whose [app:main] settings the app uses"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "doomed: use the doomed-transaction fixture mode")
    dburl = config.getoption("--dburl")
    requested = config.getoption("--backends")
    backends = requested.split(",") if requested else ["sqlite"] + (["postgresql"] if dburl else [])
    for name in backends:
        if name not in ("sqlite", "postgresql"):
            raise pytest.UsageError(f"--backends: unknown backend {name!r}")
    if "postgresql" in backends and not dburl:
        raise pytest.UsageError("the postgresql backend needs --dburl or MYAPP_TEST_DBURL")
    config._myapp_backends = backends  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> str:
    return f"myapp backends: {', '.join(config._myapp_backends)}"  # type: ignore[attr-defined]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = list(metafunc.config._myapp_backends)  # type: ignore[attr-defined]
        marker = metafunc.definition.get_closest_marker("postgresql_only")
        if marker is not None:
            backends = [b for b in backends if b == "postgresql"]
            if not backends:
                backends = [
                    pytest.param(
                        "postgresql",
                        marks=pytest.mark.skip(
                            reason="needs PostgreSQL: pass --dburl or set MYAPP_TEST_DBURL"
                        ),
                    )
                ]
        metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test run: ``sqlite`` or ``postgresql``."""
    return request.param


def run_migrations(connection: Connection, revision: str = "head") -> None:
    """Upgrade the schema on ``connection`` with the project's alembic migrations."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "myapp:alembic")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _worker_tag() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{worker}_{os.getpid()}_{secrets.token_hex(3)}"


class PostgresTestDatabase:
    """A PostgreSQL database created for one test run and dropped after it."""

    def __init__(self, server_url: str) -> None:
        self.server_url = make_url(normalise_url(server_url))
        self.name = f"myapp_test_{_worker_tag()}"
        self.url = self.server_url.set(database=self.name)

    def _admin(self) -> Engine:
        return create_engine_for(
            self.server_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
        )

    def create(self) -> str:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        except Exception as exc:
            raise pytest.UsageError(
                f"--dburl {self.server_url.render_as_string()}: cannot create a test database "
                f"there: {exc}"
            ) from exc
        finally:
            admin.dispose()
        return self.url.render_as_string(hide_password=False)

    def drop(self) -> None:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            admin.dispose()


@pytest.fixture(scope="session")
def dbengine(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[Engine]:
    """An engine on a database migrated to head once per run (and per backend)."""
    pg = None
    if backend == "postgresql":
        pg = PostgresTestDatabase(request.config.getoption("--dburl"))
        url = pg.create()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}"
    engine = create_engine_for(url, pool_size=5, max_overflow=10)
    try:
        with engine.begin() as conn:
            run_migrations(conn)
        yield engine
    finally:
        engine.dispose()
        if pg is not None:
            pg.drop()


@pytest.fixture(scope="session")
def app_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[app:main]`` settings of ``--app-ini`` (default testing.ini), if the file exists."""
    ini = request.config.getoption("--app-ini")
    path = os.path.join(str(request.config.rootpath), ini)
    if os.path.exists(path):
        import plaster

        return dict(plaster.get_settings(path, "main"))
    return {"myapp.env": "testing"}


@pytest.fixture(scope="session")
def database(dbengine: Engine, app_settings: dict[str, Any]) -> Database:
    """The :class:`Database` the application under test uses (per backend)."""
    return Database(dbengine, timezone=app_settings.get("myapp.timezone", "Europe/Paris"))


@pytest.fixture(scope="session")
def app(database: Database, app_settings: dict[str, Any]) -> Any:
    """The WSGI application, wired to the test database."""
    from myapp import main

    settings = dict(app_settings)
    settings["myapp.database"] = database
    return main({}, **settings)


class TestDB:
    """What the ``db`` fixture yields: ``db.session`` as in the seeds, and friends."""

    __test__ = False

    def __init__(self, database: Database, connection: Connection, scope: Scope, doomed: bool):
        self.database = database
        self.connection = connection
        self.scope = scope
        self.doomed = doomed

    @property
    def session(self) -> Any:
        return self.scope.session

    @property
    def engine(self) -> Engine:
        return self.database.engine

    @property
    def tm(self) -> Any:
        return get_tm()

    def commit(self) -> None:
        """Commit the test's pending work (a savepoint release underneath)."""
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()


class _RequestThread:
    """Runs WSGI calls on one worker thread, as a real server would.

    The worker has its own thread-local transaction manager, so a request's
    unit of work never collides with the test's own (possibly open) one.
    """

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="testapp")

    def run(self, fn: Callable[[], Any]) -> Any:
        return self.executor.submit(fn).result()

    def open_transaction(self) -> Any:
        return self.run(lambda: current_transaction(get_tm()))


@pytest.fixture(scope="session")
def request_thread() -> Iterator[_RequestThread]:
    worker = _RequestThread()
    yield worker
    worker.executor.shutdown(wait=True)


@pytest.fixture
def db(
    request: pytest.FixtureRequest, database: Database, request_thread: _RequestThread
) -> Iterator[TestDB]:
    """One isolated database per test; ``db.session`` may commit and roll back freely."""
    doomed = request.node.get_closest_marker("doomed") is not None
    engine = database.engine
    tm = get_tm()
    if current_transaction(tm) is not None:
        tm.abort()
    connection = engine.connect()
    outer = connection.begin()
    factory = database.session_factory
    if doomed:
        factory.configure(bind=connection, join_transaction_mode="conservative_savepoint")
    else:
        factory.configure(bind=connection, join_transaction_mode="create_savepoint")
    scope = Scope(factory, database=database, autobegin=not doomed, kind="test")
    if doomed:
        txn = tm.begin()
        txn.doom()
    testdb = TestDB(database, connection, scope, doomed)
    problems: list[str] = []
    try:
        with scope.activate():
            yield testdb
            txn = current_transaction(tm)
            if txn is not None and not is_implicit(txn) and not doomed:
                problems.append("a unit of work is still open in the test's transaction manager")
            if request_thread.open_transaction() is not None:
                problems.append("a request left its transaction open")
    finally:
        if current_transaction(tm) is not None:
            tm.abort()
        scope.close()
        checked_out = engine.pool.checkedout()
        if checked_out > 1:
            problems.append(
                f"{checked_out - 1} connection(s) still checked out besides the fixture's"
            )
        if outer.is_active:
            outer.rollback()
        connection.close()
        factory.configure(bind=engine, join_transaction_mode="conservative_savepoint")
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def dbsession(db: TestDB) -> Any:
    """``db.session``: the test's session (commits are savepoint releases)."""
    return db.session


@pytest.fixture
def tm(db: TestDB) -> Any:
    """The test thread's transaction manager (thread-local, explicit mode)."""
    return get_tm()


@pytest.fixture
def testapp(app: Any, db: TestDB, request_thread: _RequestThread) -> Any:
    """A WebTest ``TestApp`` through the real pyramid_tm tween, on the test's connection.

    A failing request is really rolled back; a successful one is visible to
    the next request and to the test; all of it vanishes after the test.
    """
    import webtest

    if db.doomed:
        pytest.fail("testapp cannot run in the doomed mode: requests commit", pytrace=False)

    def threaded_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        def call() -> list[bytes]:
            result = app(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

        return request_thread.run(call)

    return webtest.TestApp(threaded_app, extra_environ={"HTTP_HOST": "example.com"})


@pytest.fixture
def app_request(app: Any, db: TestDB) -> Iterator[Any]:
    """A prepared Pyramid request for unit tests, whose ``dbsession`` is ``db.session``."""
    from pyramid.scripting import prepare

    env = prepare(registry=app.registry)
    request = env["request"]
    request.dbsession = db.session
    request.tm = get_tm()
    try:
        yield request
    finally:
        env["closer"]()
