"""/healthz and the JSON error responses.

* ``GET /healthz``: 200 with the dialect when the database answers, 503 JSON
  when it does not (PostgreSQL: a closed port; SQLite: the database file's
  directory vanished, so the file cannot be opened).
* Unknown routes give a JSON 404; production settings
  (``myapp.expose_errors = false``) never put a traceback or SQL text in a
  500 body.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyramid.paster import get_appsettings
from sqlalchemy import text
from stack_helpers import add_view, build_app, threaded

from myapp import main

ROOT = Path(__file__).resolve().parents[3]


def test_healthz_ok(testapp: Any, backend: str) -> None:
    response = testapp.get("/healthz", status=200)
    assert response.content_type == "application/json"
    assert response.json == {"status": "ok", "database": backend}


@pytest.fixture
def unreachable_app(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, Any]]:
    """``myapp.main`` on a database that cannot be reached; yields (app, its Database)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    if backend == "postgresql":
        url = "postgresql+psycopg://127.0.0.1:1/nowhere"
    elif backend == "mysql":
        url = "mysql://root@127.0.0.1:1/nowhere"
    else:
        url = f"sqlite:///{tmp_path / 'gone' / 'db.sqlite'}"
    app = main({}, **{"sqlalchemy.url": url, "myapp.env": "testing"})
    if backend == "sqlite":
        shutil.rmtree(tmp_path / "gone")  # created by the engine setup; now it cannot open
    database = app.registry["db"]
    try:
        yield app, database
    finally:
        database.dispose()


def test_healthz_unavailable(unreachable_app: tuple[Any, Any], request_thread: Any) -> None:
    app, database = unreachable_app
    testapp = threaded(app, request_thread)
    for _ in range(3):  # and again: nothing is left behind by a failed connect
        response = testapp.get("/healthz", status=503)
        assert response.content_type == "application/json"
        assert response.json == {
            "status": "unavailable",
            "error": "database unreachable: OperationalError",
        }
        assert database.engine.pool.checkedout() == 0
    assert request_thread.open_transaction() is None


@pytest.mark.parametrize(("method", "path"), [("GET", "/items"), ("POST", "/items")])
def test_unreachable_database_gives_503_json(
    unreachable_app: tuple[Any, Any], request_thread: Any, method: str, path: str
) -> None:
    app, database = unreachable_app
    response = threaded(app, request_thread).request(path, method=method, status=503)
    assert response.json == {"error": "database unavailable, try again shortly"}
    assert response.headers["Retry-After"] == "5"
    assert database.engine.pool.checkedout() == 0
    assert request_thread.open_transaction() is None


def test_unknown_route_is_json_404(testapp: Any) -> None:
    response = testapp.get("/no/such/route", status=404)
    assert response.content_type == "application/json"
    assert response.json == {"error": "not found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/items/abc"), ("GET", "/items/99"), ("DELETE", "/items"), ("POST", "/items/1")],
)
def test_other_not_found_are_json(testapp: Any, method: str, path: str) -> None:
    response = testapp.request(path, method=method, status=404)
    assert response.json == {"error": "not found"}


SECRET = "s3cr3t-token"


def _failing_views(config: Any) -> None:
    def python_error(request: Any) -> dict[str, Any]:
        raise RuntimeError(f"credentials {SECRET} in an exception message")

    def sql_error(request: Any) -> dict[str, Any]:
        request.dbsession.execute(text(f"SELECT '{SECRET}' AS leak FROM no_such_table"))
        return {}

    add_view(config, "/t/python-error", python_error)
    add_view(config, "/t/sql-error", sql_error)


def _production_settings() -> dict[str, Any]:
    settings = dict(get_appsettings(str(ROOT / "production.ini"), name="main"))
    assert settings["myapp.expose_errors"] == "false"
    # production.ini expects the dashboard's cookie secret from the environment
    settings["myapp.session_secret"] = "x" * 32
    return settings


@pytest.mark.parametrize("path", ["/t/python-error", "/t/sql-error"])
def test_production_500_leaks_nothing(
    db: Any, database: Any, request_thread: Any, path: str
) -> None:
    app = threaded(build_app(database, _failing_views, **_production_settings()), request_thread)
    response = app.get(path, status=500)
    assert response.content_type == "application/json"
    assert response.json == {"error": "internal server error"}
    body = response.text
    for leak in ("Traceback", SECRET, "SELECT", "no_such_table", "Error:", 'File "'):
        assert leak not in body


def test_testing_settings_expose_the_error(db: Any, database: Any, request_thread: Any) -> None:
    """The contrast: with expose_errors on, the same failure shows its SQL (so the check bites)."""
    app = threaded(
        build_app(database, _failing_views, **{"myapp.expose_errors": "true"}), request_thread
    )
    detail = app.get("/t/sql-error", status=500).json["detail"]
    assert "no_such_table" in detail and SECRET in detail
