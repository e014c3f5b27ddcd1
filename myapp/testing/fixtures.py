"""The toolkit's fixtures (registered by the plugin only when the toolkit is configured).

| fixture | scope | what it is |
|---|---|---|
| ``backend`` | session | ``"sqlite"`` or ``"postgresql"`` (parametrized) |
| ``dbengine`` | session | an engine on the run's database, schema built once |
| ``database`` | session | the :class:`~myapp.db.Database` the app under test uses |
| ``app_settings`` | session | the app's settings (``myapp_ini``, ``myapp_settings``) |
| ``app`` | session | the WSGI app (``myapp_app`` or the ini's) wired to ``database`` |
| ``db`` | test | the isolated database of one test |
| ``dbsession`` / ``tm`` | test | ``db.session``; the test thread's transaction manager |
| ``testapp`` | test | a WebTest ``TestApp`` through the real pyramid_tm tween |
| ``app_request`` | test | a prepared Pyramid request whose ``dbsession`` is ``db.session`` |
| ``request_thread`` | session | the worker thread that runs ``testapp``'s requests |
| ``committed_rows`` | test | a :class:`~myapp.testing.committed.CommittedRows` (real commits) |

Every fixture may be overridden by a ``conftest.py`` fixture of the same
name (pytest's rule), e.g. ``dbengine`` to build the schema another way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from myapp.db import Database, create_engine_for, get_tm

from .committed import CommittedRows
from .config import ToolkitConfig
from .database import test_database_for
from .isolation import TestDB, isolated_db
from .request_thread import RequestThread, threaded_wsgi
from .tracker import LeakError, track


def toolkit_config(config: pytest.Config) -> ToolkitConfig:
    """The run's :class:`ToolkitConfig` (read when pytest started)."""
    return config._myapp_toolkit  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test run: ``sqlite``, ``postgresql`` or ``mysql``."""
    return request.param


@pytest.fixture(scope="session")
def dbengine(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[Engine]:
    """An engine on a fresh database whose schema is built once per run (and per backend).

    The schema comes from ``myapp_metadata`` (``create_all``) or the alembic
    migrations (``myapp_script_location``, ``myapp_alembic_ini``, or the
    ``[alembic]`` section of ``myapp_ini``). The engine is under the leak guard.
    """
    build = toolkit_config(request.config).schema_builder()
    pg = None
    if backend != "sqlite":
        pg = test_database_for(request.config._myapp_servers[backend])  # type: ignore[attr-defined]
        url = pg.create()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}"
    try:
        engine = track(create_engine_for(url, pool_size=5, max_overflow=10))
        try:
            with engine.begin() as conn:
                build(conn)
            yield engine
        finally:
            engine.dispose()
    finally:
        if pg is not None:
            pg.drop()


@pytest.fixture(scope="session")
def app_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """App settings: ``[app:main]`` of ``myapp_ini`` (or ``--app-ini``), ``myapp_settings``."""
    return toolkit_config(request.config).app_settings()


@pytest.fixture(scope="session")
def database(dbengine: Engine, app_settings: dict[str, Any]) -> Database:
    """The :class:`Database` the application under test uses (per backend)."""
    return Database(dbengine, timezone=app_settings.get("myapp.timezone", "Europe/Paris"))


@pytest.fixture(scope="session")
def app(request: pytest.FixtureRequest, database: Database, app_settings: dict[str, Any]) -> Any:
    """The WSGI application (``myapp_app``, or ``myapp_ini``'s), wired to the test database.

    The factory is called as PasteDeploy would (``factory(global_config,
    **settings)``) with ``settings["myapp.database"]`` set to ``database``:
    ``config.include("myapp.db.pyramid")`` uses it instead of building one.
    """
    toolkit = toolkit_config(request.config)
    settings = dict(app_settings)
    settings["myapp.database"] = database
    return toolkit.app_factory()(toolkit.global_config(), **settings)


@pytest.fixture(scope="session")
def request_thread() -> Iterator[RequestThread]:
    """The worker thread that runs ``testapp``'s requests."""
    worker = RequestThread()
    yield worker
    worker.shutdown()


@pytest.fixture
def db(
    request: pytest.FixtureRequest, database: Database, request_thread: RequestThread
) -> Iterator[TestDB]:
    """One isolated database per test; ``db.session`` may commit and roll back freely.

    With ``@pytest.mark.doomed`` the test runs in one doomed transaction
    instead (faster; any commit fails). After the test, the leak guard fails
    it, naming it, if it left a connection checked out or a unit of work open.
    """
    doomed = request.node.get_closest_marker("doomed") is not None
    leak = None
    try:
        with isolated_db(
            database, doomed=doomed, request_thread=request_thread, label=request.node.nodeid
        ) as testdb:
            yield testdb
    except LeakError as exc:
        leak = str(exc)
    if leak is not None:
        pytest.fail(leak, pytrace=False)


@pytest.fixture
def dbsession(db: TestDB) -> Any:
    """``db.session``: the test's session (commits are savepoint releases)."""
    return db.session


@pytest.fixture
def tm(db: TestDB) -> Any:
    """The test thread's transaction manager (thread-local, explicit mode)."""
    return get_tm()


@pytest.fixture
def testapp(app: Any, db: TestDB, request_thread: RequestThread) -> Any:
    """A WebTest ``TestApp`` through the real pyramid_tm tween, on the test's connection.

    Each request runs on a worker thread with its own transaction manager. A
    failing request is really rolled back (to a savepoint); a successful one
    is visible to the next request and to the test; all of it vanishes after
    the test.
    """
    import webtest

    if db.doomed:
        pytest.fail(
            "testapp cannot run in the @pytest.mark.doomed mode: requests commit", pytrace=False
        )
    return webtest.TestApp(
        threaded_wsgi(app, request_thread), extra_environ={"HTTP_HOST": "example.com"}
    )


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


@pytest.fixture
def committed_rows(request: pytest.FixtureRequest, dbengine: Engine) -> Iterator[CommittedRows]:
    """Real commits on the run's database (a new engine), deleted after the test.

    See :class:`~myapp.testing.committed.CommittedRows`: register what the
    test commits with ``delete_after``; the engine is under the leak guard.
    """
    leak = None
    try:
        with CommittedRows.on(dbengine) as rows:
            yield rows
    except LeakError as exc:
        leak = f"leak guard: {request.node.nodeid} {exc}"
    if leak is not None:
        pytest.fail(leak, pytrace=False)
