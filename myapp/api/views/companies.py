"""Companies: admin CRUD, a company reads itself and rotates its own token."""

from __future__ import annotations

from typing import Any

from pyramid.httpexceptions import HTTPUnauthorized
from pyramid.request import Request
from sqlalchemy import select

from myapp.models import Company
from myapp.services.tokens import hash_token, new_token_and_hash, same_hash

from ..lookups import body, company_or_404, created
from ..pagination import paginate
from ..security import bearer_token
from . import api_view


def serialize_company(company: Company) -> dict[str, Any]:
    return {"id": company.id, "name": company.name}


@api_view(route_name="api.companies", request_method="GET", permission="admin")
def list_companies(request: Request) -> dict[str, Any]:
    return paginate(request, select(Company).order_by(Company.id), serialize_company)


@api_view(route_name="api.companies", request_method="POST", permission="admin")
def create_company(request: Request) -> dict[str, Any]:
    data = body(request)
    token, token_hash = new_token_and_hash()
    company = Company(name=data["name"].strip(), api_token_hash=token_hash)
    request.dbsession.add(company)
    request.dbsession.flush()
    created(request, "api.company", company_id=company.id)
    return {**serialize_company(company), "api_token": token}


@api_view(route_name="api.company", request_method="GET", permission="company")
def get_company(request: Request) -> dict[str, Any]:
    return serialize_company(company_or_404(request))


@api_view(route_name="api.company", request_method="PATCH", permission="admin")
def update_company(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    data = body(request)
    if "name" in data:
        company.name = data["name"].strip()
    request.dbsession.flush()
    return serialize_company(company)


@api_view(route_name="api.company_token", request_method="POST", permission="company")
def rotate_token(request: Request) -> dict[str, Any]:
    """Replace the company's token: a read-modify-write under the company's row lock.

    The row is locked (``SELECT ... FOR UPDATE``; on SQLite the request's
    ``BEGIN IMMEDIATE`` serializes writers), then the caller is checked again
    against the row as it is now: a company token that a concurrent rotation
    replaced while this request waited is no longer valid, so the answer is
    401 and no token is handed out. The admin token needs no re-check: each
    admin rotation replaces the token the previous one committed.
    """
    company = company_or_404(request, lock=True)
    if not request.identity.is_admin and not same_hash(
        company.api_token_hash, hash_token(bearer_token(request) or "")
    ):
        raise HTTPUnauthorized(
            "invalid token", headers={"WWW-Authenticate": 'Bearer realm="myapp"'}
        )
    token, company.api_token_hash = new_token_and_hash()
    request.dbsession.flush()
    return {**serialize_company(company), "api_token": token}
