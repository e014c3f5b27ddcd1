"""Helpers shared by the API tests (importable: pytest puts tests/api on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from myapp.services.tokens import new_token_and_hash
from myapp.testing.factories import CompanyFactory


@dataclass
class Tenant:
    """A committed company of the test, with its plaintext token."""

    id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def url(self, suffix: str = "") -> str:
        return f"/api/companies/{self.id}{suffix}"


def make_tenant(db: Any, name: str) -> Tenant:
    """Commit a company whose token is known to the test (only its hash is stored)."""
    token, token_hash = new_token_and_hash()
    company = CompanyFactory(name=name, api_token_hash=token_hash)
    db.session.commit()
    return Tenant(company.id, name, token)


def count(db: Any, model: Any, *where: Any) -> int:
    """Rows of ``model`` in the database now (a fresh query, nothing cached)."""
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def threaded_testapp(app: Any, request_thread: Any) -> Any:
    """A WebTest app whose requests run on the toolkit's request thread (as ``testapp`` does)."""
    import webtest

    from myapp.testing.plugin import threaded_wsgi

    return webtest.TestApp(
        threaded_wsgi(app, request_thread), extra_environ={"HTTP_HOST": "example.com"}
    )
