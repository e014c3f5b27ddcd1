"""Helpers shared by the dashboard tests (importable: pytest puts tests/dashboard on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from myapp.services.tokens import new_token_and_hash
from myapp.testing.factories import CompanyFactory


@dataclass
class Company:
    """A committed company of the test, with its plaintext token."""

    id: int
    name: str
    token: str


def make_company(db: Any, name: str) -> Company:
    """Commit a company whose token the test knows (only its hash is stored)."""
    token, token_hash = new_token_and_hash()
    company = CompanyFactory(name=name, api_token_hash=token_hash)
    db.session.commit()
    return Company(company.id, name, token)
