"""Fixtures for the dashboard tests: the WebTest app, and a real server for the browser.

``live_server`` runs ``pserve`` on a copy of development.ini (a free 127.0.0.1
port, an admin token and a session secret added) against a database of its own:
a SQLite file under tmp_path, or a fresh PostgreSQL database that is dropped
afterwards. ``alembic upgrade head`` creates the schema first, as in production.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import Company, make_company
from sqlalchemy.engine import Engine

from myapp.db import create_engine_for
from myapp.services.tokens import hash_token, new_token
from myapp.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SESSION_SECRET = "dashboard-tests-session-secret-0123456789abcdef"


# --- the in-process app (WebTest) -------------------------------------------------------------


@pytest.fixture(scope="session")
def admin_token() -> str:
    return new_token()


@pytest.fixture(scope="session")
def app(database: Any, app_settings: dict[str, Any], admin_token: str) -> Any:
    """The toolkit's ``app``, configured with an admin token and a session secret."""
    from myapp import main

    settings = dict(app_settings)
    settings["myapp.database"] = database
    settings["myapp.admin_token_hash"] = hash_token(admin_token)
    settings["myapp.session_secret"] = SESSION_SECRET
    return main({}, **settings)


@pytest.fixture
def acme(db: Any) -> Company:
    return make_company(db, "Acme Cabs")


@pytest.fixture
def globex(db: Any) -> Company:
    return make_company(db, "Globex Taxis")


# --- a real server ------------------------------------------------------------------------------


@dataclass
class LiveServer:
    """A running ``pserve``: its URL, the admin token, and an engine on its database."""

    url: str
    admin_token: str
    engine: Engine
    log: Path
    backend: str
    created: list[int] = field(default_factory=list)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A real HTTP call to the API; returns ``(status, json)``."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.admin_token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def live_server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[LiveServer]:
    admin = new_token()
    server = ServerProcess(
        tmp_path_factory.mktemp("live"),
        backend=backend,
        dburl=request.config.getoption("--dburl"),
        settings={
            "myapp.expose_errors": "false",
            "myapp.session_secret": SESSION_SECRET,
            "myapp.admin_token_hash": hash_token(admin),
        },
        sqlite_file="live.sqlite",
    )
    with server:
        engine = create_engine_for(server.database_url)
        try:
            yield LiveServer(server.url, admin, engine, server.log_path, backend)
        finally:
            engine.dispose()


# --- the browser --------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by playwright; skipped with the reason when either is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (CI installs it with .ci/install-browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
