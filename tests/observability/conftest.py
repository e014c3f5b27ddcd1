"""Fixtures for the observability tests: the real application on a database of its own.

Unlike the toolkit's ``testapp`` (whose requests run inside the test's outer
transaction), these requests really commit and roll back, so what the
observers see is what production sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transaction.interfaces import TransientError
from webtest import TestApp

from myapp.db import Database
from myapp.testing.apps import add_view, build_app
from myapp.testing.plugin import PostgresTestDatabase, run_migrations

#: how many times the flaky view has been called, per test
CALLS: dict[str, int] = {}


def flaky(request: Any) -> dict[str, Any]:
    """Fails with a transient error on its first call, then succeeds (pyramid_retry replays it)."""
    CALLS["flaky"] = CALLS.get("flaky", 0) + 1
    if CALLS["flaky"] == 1:
        raise TransientError("a conflict, once")
    return {"calls": CALLS["flaky"]}


def always_conflicting(request: Any) -> dict[str, Any]:
    raise TransientError("a conflict, every time")


@pytest.fixture(scope="module")
def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[str]:
    if backend == "postgresql":
        pg = PostgresTestDatabase(request.config.getoption("--dburl"))
        url = pg.create()
        try:
            yield url
        finally:
            pg.drop()
    else:
        path: Path = tmp_path_factory.mktemp("obs") / "obs.sqlite"
        yield f"sqlite:///{path}"


@pytest.fixture(scope="module")
def real_database(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url)
    with database.engine.begin() as conn:
        run_migrations(conn)
    try:
        yield database
    finally:
        database.dispose()


def make_app(database: Database, **settings: Any) -> TestApp:
    def configure(config: Any) -> None:
        add_view(config, "/test/flaky", flaky)
        add_view(config, "/test/conflict", always_conflicting)

    app = build_app(database, configure, **settings)
    return TestApp(app, extra_environ={"REMOTE_ADDR": "127.0.0.1"})


@pytest.fixture(scope="module")
def real_app(real_database: Database) -> TestApp:
    return make_app(real_database)
