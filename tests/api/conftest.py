"""Fixtures for the API tests: an app that knows an admin token, companies with tokens."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import Tenant, count, make_tenant

from myapp.services.tokens import hash_token, new_token


@pytest.fixture(scope="session")
def admin_token() -> str:
    return new_token()


@pytest.fixture(scope="session")
def app(database: Any, app_settings: dict[str, Any], admin_token: str) -> Any:
    """The toolkit's ``app``, configured with an admin token (as its hash) and a session secret."""
    from myapp import main

    settings = dict(app_settings)
    settings["myapp.database"] = database
    settings["myapp.admin_token_hash"] = hash_token(admin_token)
    settings["myapp.session_secret"] = "api-tests-session-secret-0123456789abcdef"
    return main({}, **settings)


@pytest.fixture
def admin(admin_token: str) -> dict[str, str]:
    """Headers carrying the admin token."""
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
def acme(db: Any) -> Tenant:
    return make_tenant(db, "Acme Cabs")


@pytest.fixture
def globex(db: Any) -> Tenant:
    return make_tenant(db, "Globex Taxis")


@pytest.fixture
def rows(db: Any) -> Any:
    """``rows(Model, *where)``: count rows, to prove that a failed request wrote nothing."""
    return lambda model, *where: count(db, model, *where)
