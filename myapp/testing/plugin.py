"""The ``myapp`` pytest plugin: isolated tests in which the code under test may commit.

Registered by the package's ``pytest11`` entry point, so every pytest run in
an environment where myapp is installed loads it (``-p no:myapp`` disables it).

Backends: every test that uses the database runs once per backend, SQLite
always, PostgreSQL when ``--dburl`` (or ``MYAPP_TEST_DBURL``) names a server.
On PostgreSQL the plugin creates a fresh database for the run (one per
pytest-xdist worker) and drops it at the end.

Per test (:func:`isolated_db`, behind the ``db`` fixture): one connection, an
outer transaction, and the application's session factory bound to that
connection with ``join_transaction_mode="create_savepoint"``. Commits inside
the test (``db.session.commit()``, ``db_transaction()``, a request through
``testapp``) are savepoint releases; rollbacks return to the last savepoint.
After the test the transaction manager is aborted and the outer transaction
rolled back, so nothing survives. The leak guard then fails the test, naming
it, if it left a connection checked out or a unit of work open (and cleans
up, so the next test starts clean).

``@pytest.mark.doomed``: the Pyramid starter's faster pattern (one doomed
transaction for the whole test, no savepoints) for tests that never commit;
every way of committing fails with a message naming the marker.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import sys
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from threading import get_ident
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from transaction.interfaces import AlreadyInTransaction, DoomedTransaction

from myapp.db import (
    Database,
    NestedTransactionError,
    TransactionManaged,
    create_engine_for,
    current_transaction,
    get_tm,
)
from myapp.db.nesting import is_implicit
from myapp.db.scope import Scope
from myapp.db.settings import normalise_url

ENV_DBURL = "MYAPP_TEST_DBURL"
#: what the doomed mode's note is added to
_COMMIT_REFUSALS = (
    TransactionManaged,
    NestedTransactionError,
    DoomedTransaction,
    AlreadyInTransaction,
)
#: prefix of the PostgreSQL databases the plugin creates (and drops)
PG_DATABASE_PREFIX = "myapp_test_"

DOOMED_NOTE = (
    "[myapp] this test runs in the @pytest.mark.doomed mode: the whole test is one doomed "
    "transaction that can never commit (session.commit(), a durable db_transaction(), "
    "transaction.commit() and 'with transaction.manager:' all fail). Drop the marker to test "
    "code that commits: the default db fixture turns its commits into savepoint releases."
)


# ---------------------------------------------------------------------------
# options and backends


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("myapp", "myapp database toolkit")
    group.addoption(
        "--dburl",
        default=os.environ.get(ENV_DBURL) or None,
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
    config.addinivalue_line(
        "markers", "doomed: use the faster doomed-transaction fixture mode (the test never commits)"
    )
    config.addinivalue_line("markers", "postgresql_only: the behaviour under test needs PostgreSQL")
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


#: errors that come from trying to commit (in the doomed mode: the note says why)
_COMMIT_ERRORS = (
    TransactionManaged,
    NestedTransactionError,
    DoomedTransaction,
    AlreadyInTransaction,
)


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


#: this machine, in test database names (several machines may share one server)
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
#: ``myapp_test_<worker>_<host>_<pid>_<random>``
_TEST_DATABASE_NAME = re.compile(
    rf"^{PG_DATABASE_PREFIX}(?P<worker>[A-Za-z0-9]+)_(?P<host>[0-9a-f]{{6}})_(?P<pid>\d+)_[0-9a-f]+$"
)


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

    def __init__(self, server_url: str) -> None:
        self.server_url = make_url(normalise_url(server_url))
        self.name = f"{PG_DATABASE_PREFIX}{_worker_tag()}"
        self.url = self.server_url.set(database=self.name)

    def drop_leftovers(self, conn: Connection) -> list[str]:
        """Drop the test databases of dead runs of this machine; return their names.

        Only names made by this machine (:data:`HOST_TAG`) whose process no
        longer exists and that have no connection are dropped; databases of
        other machines, of live runs, or in older name formats are left alone.
        """
        dropped = []
        names = conn.exec_driver_sql(
            "SELECT datname FROM pg_database WHERE datname LIKE %(pattern)s",
            {"pattern": PG_DATABASE_PREFIX.replace("_", "\\_") + "%"},
        ).scalars()
        for name in list(names):
            match = _TEST_DATABASE_NAME.match(name)
            if match is None or match["host"] != HOST_TAG or _process_alive(int(match["pid"])):
                continue
            connected = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %(name)s", {"name": name}
            ).scalar()
            if connected:
                continue
            try:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            except sqlalchemy.exc.DBAPIError:  # taken meanwhile (another worker dropping it)
                continue
            dropped.append(name)
        return dropped

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
        """Drop the database, closing whatever connections remain on it."""
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
    try:
        engine = create_engine_for(url, pool_size=5, max_overflow=10)
        try:
            with engine.begin() as conn:
                run_migrations(conn)
            yield engine
        finally:
            engine.dispose()
    finally:
        if pg is not None:
            pg.drop()


@pytest.fixture(scope="session")
def app_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[app:main]`` settings of ``--app-ini`` (default testing.ini), if the file exists."""
    ini = request.config.getoption("--app-ini")
    path = os.path.join(str(request.config.rootpath), ini)
    if os.path.exists(path):
        import plaster

        return dict(plaster.get_loader(path, protocols=["wsgi"]).get_wsgi_app_settings())
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


# ---------------------------------------------------------------------------
# the leak guard's connection tracker

_SQLALCHEMY_DIR = os.path.dirname(sqlalchemy.__file__)
_HERE = __file__
#: where the leak guard says isolated_db's own connection was checked out
_OWN_LOCATION = (_HERE, 0, "isolated_db (the test's own connection)")


def _caller() -> tuple[str, int, str]:
    """Where the code that checked a connection out lives (first frame outside SQLAlchemy).

    Cheap on purpose (it runs on every checkout): the location is formatted
    only when a leak is reported.
    """
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if not code.co_filename.startswith(_SQLALCHEMY_DIR) and code.co_filename != _HERE:
            return code.co_filename, frame.f_lineno, code.co_name
        frame = frame.f_back
    return "<unknown>", 0, "?"


def _format_location(location: tuple[str, int, str]) -> str:
    filename, lineno, name = location
    try:
        filename = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        pass
    return f"{filename}:{lineno} in {name}"


class ConnectionTracker:
    """Which pooled connections of an engine are checked out, and where from.

    Installed once per engine (two pool listeners). Every checkout is
    numbered: :func:`isolated_db` notes the number before a test
    (:meth:`snapshot`) and, after it, reports and invalidates whatever was
    checked out since and is still out (:meth:`reclaim_since`: closed and
    returned to the pool), so a leak fails one test instead of starving the
    rest of the run. Both are O(1) when nothing is left checked out.
    """

    _trackers: weakref.WeakKeyDictionary[Engine, ConnectionTracker] = weakref.WeakKeyDictionary()

    def __init__(self, engine: Engine) -> None:
        #: pool record -> (weak proxy, checkout number, where it was checked out)
        self.out: dict[Any, tuple[weakref.ref[Any], int, tuple[str, int, str]]] = {}
        self.checkouts = 0
        # the thread whose next checkout is isolated_db's own connection (see connect_own)
        self._own_thread: int | None = None
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    @classmethod
    def for_engine(cls, engine: Engine) -> ConnectionTracker:
        tracker = cls._trackers.get(engine)
        if tracker is None:
            tracker = cls._trackers[engine] = cls(engine)
        return tracker

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self.checkouts += 1
        own = self._own_thread
        where = _OWN_LOCATION if own is not None and own == get_ident() else _caller()
        self.out[record] = (weakref.ref(proxy), self.checkouts, where)

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        self.out.pop(record, None)

    def connect_own(self, engine: Engine) -> Connection:
        """``engine.connect()`` for :func:`isolated_db` itself (tracked; no caller walk)."""
        self._own_thread = get_ident()
        try:
            return engine.connect()
        finally:
            self._own_thread = None

    def snapshot(self) -> int:
        """A mark to pass to :meth:`reclaim_since` (the number of checkouts so far)."""
        return self.checkouts

    def reclaim_since(self, before: int) -> list[str]:
        """Invalidate the connections checked out since ``before`` and still out.

        Returns where each was checked out.
        """
        out = self.out
        if not out:
            return []
        leaked = []
        for record in [r for r, entry in out.items() if entry[1] > before]:
            ref, _number, where = out.pop(record)
            leaked.append(_format_location(where))
            fairy = ref()
            if fairy is not None and fairy.dbapi_connection is not None:
                fairy.invalidate()  # closes the DBAPI connection and checks the slot back in
        return leaked


# ---------------------------------------------------------------------------
# per-test isolation


class LeakError(AssertionError):
    """A test left a connection checked out or a unit of work open (the leak guard)."""


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
        """The test's session (the current scope's): ``commit()`` releases a savepoint."""
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
        """Discard the test's uncommitted work (back to the last savepoint)."""
        self.session.rollback()


class RequestThread:
    """Runs WSGI calls on one worker thread, as a real server would.

    The worker has its own thread-local transaction manager, so a request's
    unit of work never collides with the test's own (possibly open) one, and
    the request goes through pyramid_tm exactly as in production.
    """

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="testapp")
        self.used = False

    def run(self, fn: Callable[[], Any]) -> Any:
        self.used = True
        return self.executor.submit(fn).result()

    def open_transaction(self) -> Any:
        return self.executor.submit(lambda: current_transaction(get_tm())).result()

    def abort(self) -> None:
        self.executor.submit(lambda: get_tm().manager.abort_all()).result()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


_RequestThread = RequestThread  # the name tests/stack knew


def _schedule_factory_sequence_reset() -> None:
    # the factories restart their sequences before the test's first object (lazily: a
    # test that builds none pays nothing); a no-op until something imported them
    factories = sys.modules.get("myapp.testing.factories")
    if factories is not None:
        factories.schedule_sequence_reset()


_UNKNOWN: Any = object()


class _IsolatedDB(AbstractContextManager[TestDB]):
    """The context manager :func:`isolated_db` returns (one use)."""

    __slots__ = (
        "_activation",
        "_before",
        "_connection",
        "_doomed_txn",
        "_outer",
        "_saved",
        "_scope",
        "_tm",
        "_tracker",
        "database",
        "doomed",
        "label",
        "request_thread",
    )

    def __init__(
        self, database: Database, doomed: bool, request_thread: RequestThread | None, label: str
    ) -> None:
        self.database = database
        self.doomed = doomed
        self.request_thread = request_thread
        self.label = label
        self._outer: Any = None
        self._scope: Scope | None = None
        self._activation: Any = None
        self._doomed_txn: Any = None

    def __enter__(self) -> TestDB:
        database = self.database
        engine = database.engine
        tracker = self._tracker = ConnectionTracker.for_engine(engine)
        tm = self._tm = get_tm()
        if current_transaction(tm) is not None:
            tm.manager.abort_all()
        _schedule_factory_sequence_reset()
        self._before = tracker.snapshot()
        connection = self._connection = tracker.connect_own(engine)
        kw = database.session_factory.kw
        self._saved = (kw.get("bind"), kw.get("join_transaction_mode"))
        try:
            self._outer = connection.begin()
            # doomed: the session works in the outer transaction itself (no savepoint)
            kw["bind"] = connection
            kw["join_transaction_mode"] = "rollback_only" if self.doomed else "create_savepoint"
            scope = self._scope = Scope(
                database.session_factory, database=database, autobegin=not self.doomed, kind="test"
            )
            if self.doomed:
                doomed_txn = self._doomed_txn = tm.begin()
                doomed_txn.doom()
            activation = scope.activate()
            activation.__enter__()
            self._activation = activation
        except BaseException:
            self._teardown(_UNKNOWN)
            raise
        return TestDB(database, connection, scope, self.doomed)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        problems: list[str] = []
        txn = _UNKNOWN
        try:
            if exc_type is None:
                tm = self._tm
                txn = current_transaction(tm)
                if txn is not None and not is_implicit(txn) and txn is not self._doomed_txn:
                    problems.append(
                        "left transaction.manager with an open unit of work (begun explicitly "
                        "and never committed or aborted; it was aborted)"
                    )
                request_thread = self.request_thread
                if request_thread is not None and request_thread.used:
                    request_thread.used = False
                    if request_thread.open_transaction() is not None:
                        request_thread.abort()
                        problems.append("a request left its transaction open (it was aborted)")
        finally:
            leaked = self._teardown(txn)
        if leaked:
            problems.append(
                f"left {len(leaked)} connection(s) checked out (checked out at "
                + "; ".join(leaked)
                + "; invalidated and returned to the pool)"
            )
        if problems and exc_type is None:
            raise LeakError(f"leak guard: {self.label} " + "; ".join(problems))

    def _teardown(self, txn: Any) -> list[str]:
        """Abort, roll back, close, restore the factory; return the leaked connections."""
        try:
            try:
                if self._activation is not None:
                    self._activation.__exit__(None, None, None)
                    self._activation = None
            finally:
                try:
                    # the test thread's transaction (looked up once, by __exit__'s check if it ran:
                    # nothing between the check and here touches this thread's manager)
                    if txn is _UNKNOWN:
                        txn = current_transaction(self._tm)
                    if txn is not None:
                        self._tm.manager.abort_all()
                finally:
                    if self._scope is not None:
                        self._scope.close()
                    outer = self._outer
                    if outer is not None and outer.is_active:
                        outer.rollback()
        finally:
            self._connection.close()
            bind, mode = self._saved
            self.database.session_factory.configure(
                bind=bind, join_transaction_mode=mode or "conditional_savepoint"
            )
            leaked = self._tracker.reclaim_since(self._before)
        return leaked


def isolated_db(
    database: Database,
    *,
    doomed: bool = False,
    request_thread: RequestThread | None = None,
    label: str = "the test",
) -> AbstractContextManager[TestDB]:
    """One isolated database for the ``with`` block (the ``db`` fixture's engine room).

    Savepoint mode (default): the session factory is bound to one connection
    inside an outer transaction with ``join_transaction_mode="create_savepoint"``;
    the scope autobegins implicit units of work. Doomed mode: the session
    joins the outer transaction directly, inside one doomed transaction of
    the manager. At exit everything is rolled back; if the block ended
    normally, :class:`LeakError` names what it left behind (already cleaned up).
    The factories' sequences restart before the block's first object.
    """
    return _IsolatedDB(database, doomed, request_thread, label)


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


def threaded_wsgi(app: Any, request_thread: RequestThread) -> Callable[..., list[bytes]]:
    """Wrap ``app`` so that every call runs on ``request_thread`` (as a server thread would)."""

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

    return threaded_app


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
