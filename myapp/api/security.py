"""Who is calling, and what they may touch: the application's security policy.

* API routes (``api.*``) authenticate with ``Authorization: Bearer <token>``
  only: a company's token or the admin token (:mod:`myapp.services.tokens`). Cookies
  are never looked at there, so a browser session cannot be used to forge API
  calls (no CSRF on the API).
* Dashboard routes (``dashboard.*``) authenticate with the signed session cookie
  set by the dashboard's login form; it holds the company id and a fingerprint of
  the company's current token hash, so rotating the token ends those sessions.

Permissions:

``admin``
    the admin token only (a company token gets 403: the operation exists, the
    caller may not use it).
``company``
    the admin token, or the token of the company named by the route's
    ``{company_id}``. Another company's token gets **404**, the very answer an
    id that does not exist gets: a company cannot even learn which ids exist.
``dashboard``
    a logged-in dashboard session.

No token, or an invalid one: 401 (API) or a redirect to the login page
(dashboard). The token lookup reads the database in the request's unit of work,
or, on durable routes that pyramid_tm leaves alone, in its own read-only unit of
work, ended before the view runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPForbidden, HTTPFound
from pyramid.request import Request
from pyramid.security import Allowed, Denied
from pyramid.view import forbidden_view_config
from sqlalchemy import select

from myapp.db import db_read_only
from myapp.db.pyramid.durable import is_durable_request
from myapp.models import Company
from myapp.services.tokens import hash_token, is_admin_token, same_hash

#: session keys of a dashboard login
SESSION_COMPANY = "dashboard.company_id"
SESSION_FINGERPRINT = "dashboard.token_fingerprint"

_UNSET = object()
_CACHE_ATTR = "_myapp_identity"


@dataclass(frozen=True)
class Identity:
    """The authenticated caller. Plain data: safe to use after its unit of work ended."""

    kind: str  # "admin" | "company"
    company_id: int | None = None
    company_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def userid(self) -> str:
        return "admin" if self.is_admin else f"company:{self.company_id}"


class Unauthenticated(Denied):
    """No credentials, or credentials that are not valid (401 / login page)."""


class AdminOnly(Denied):
    """A company token on an admin operation (403)."""


class HiddenAsNotFound(Denied):
    """Another company's resource: answered exactly like one that does not exist (404)."""


class CompanyContext:
    """Route context of ``/api/companies/{company_id}/...``: the company the URL names."""

    def __init__(self, request: Request) -> None:
        raw = (request.matchdict or {}).get("company_id")
        try:
            self.company_id: int | None = int(raw) if raw is not None else None
        except ValueError:
            self.company_id = None  # validation answers 400 (admin) or 404 (company)


def token_fingerprint(token_hash: str) -> str:
    """What a dashboard session keeps instead of the token: a hash of the stored hash."""
    return hashlib.sha256(f"dashboard-session:{token_hash}".encode()).hexdigest()


def bearer_token(request: Request) -> str | None:
    """The bearer token of the Authorization header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def company_by_token_hash(session: Any, token_hash: str) -> Company | None:
    company = session.scalars(select(Company).where(Company.api_token_hash == token_hash)).first()
    if company is None or not same_hash(company.api_token_hash, token_hash):
        return None
    return company


def _read(request: Request, fn: Any) -> Any:
    """Run ``fn(session)`` in the request's unit of work, or in a read-only one of its own."""
    if is_durable_request(request):
        with db_read_only() as session:
            return fn(session)
    return fn(request.dbsession)


def _bearer_identity(request: Request) -> Identity | None:
    token = bearer_token(request)
    if token is None:
        return None
    token_hash = hash_token(token)
    if is_admin_token(token_hash, request.registry.settings):
        return Identity("admin")

    def lookup(session: Any) -> Identity | None:
        company = company_by_token_hash(session, token_hash)
        if company is None:
            return None
        return Identity("company", company.id, company.name)

    return _read(request, lookup)


def _session_identity(request: Request) -> Identity | None:
    session_data = request.session
    company_id = session_data.get(SESSION_COMPANY)
    fingerprint = session_data.get(SESSION_FINGERPRINT)
    if not isinstance(company_id, int) or not fingerprint:
        return None

    def lookup(session: Any) -> Identity | None:
        company = session.get(Company, company_id)
        if company is None or not company.api_token_hash:
            return None
        if not same_hash(token_fingerprint(company.api_token_hash), fingerprint):
            return None  # the token was rotated: log in again
        return Identity("company", company.id, company.name)

    return _read(request, lookup)


def dashboard_login(request: Request, token: str) -> Identity | None:
    """Check a company token typed into the login form; on success remember it in the session.

    Runs in the request's unit of work. Returns the identity, or None.
    """
    token_hash = hash_token(token.strip())
    company = company_by_token_hash(request.dbsession, token_hash)
    if company is None or company.api_token_hash is None:
        return None
    request.session.invalidate()  # a fresh session (and CSRF token) on login
    request.session[SESSION_COMPANY] = company.id
    request.session[SESSION_FINGERPRINT] = token_fingerprint(company.api_token_hash)
    request.__dict__.pop(_CACHE_ATTR, None)
    return Identity("company", company.id, company.name)


def dashboard_logout(request: Request) -> None:
    request.session.invalidate()
    request.__dict__.pop(_CACHE_ATTR, None)


class SecurityPolicy:
    """The security policy: bearer tokens on ``api.*`` routes, the session on ``dashboard.*``."""

    def identity(self, request: Request) -> Identity | None:
        cached = request.__dict__.get(_CACHE_ATTR, _UNSET)
        if cached is not _UNSET:
            return cached
        route = getattr(request, "matched_route", None)
        identity: Identity | None = None
        if route is not None and route.name.startswith("api."):
            identity = _bearer_identity(request)
        elif route is not None and route.name.startswith("dashboard."):
            identity = _session_identity(request)
        request.__dict__[_CACHE_ATTR] = identity
        return identity

    def authenticated_userid(self, request: Request) -> str | None:
        identity = self.identity(request)
        return identity.userid if identity is not None else None

    def permits(self, request: Request, context: Any, permission: str) -> Allowed | Denied:
        identity = self.identity(request)
        if identity is None:
            return Unauthenticated("authentication required")
        if permission == "admin":
            if identity.is_admin:
                return Allowed("admin")
            return AdminOnly("this operation needs the admin token")
        if permission == "company":
            if identity.is_admin:
                return Allowed("admin")
            wanted = getattr(context, "company_id", None)
            if wanted is not None and wanted == identity.company_id:
                return Allowed("own company")
            return HiddenAsNotFound("another company's resource")
        if permission == "dashboard":
            if identity.kind == "company":
                return Allowed("dashboard session")
            return Unauthenticated("log in with a company token")
        return Denied(f"unknown permission {permission!r}")

    def remember(self, request: Request, userid: Any, **kw: Any) -> list[tuple[str, str]]:
        return []  # the session cookie is the dashboard's memory; the API is stateless

    def forget(self, request: Request, **kw: Any) -> list[tuple[str, str]]:
        return []


def _json_error(request: Request, status: int, message: str) -> dict[str, Any]:
    request.response.status = status
    request.response.content_type = "application/json"
    return {"error": message}


@forbidden_view_config(path_info=r"^/api/", renderer="json")
def api_forbidden(exc: HTTPForbidden, request: Request) -> dict[str, Any]:
    """401 without valid credentials, 404 for other companies' data, 403 for admin operations."""
    result = getattr(exc, "result", None)
    if isinstance(result, HiddenAsNotFound):
        return _json_error(request, 404, "not found")
    if isinstance(result, AdminOnly):
        return _json_error(request, 403, "this operation needs the admin token")
    if isinstance(result, Unauthenticated) or request.identity is None:
        request.response.headers["WWW-Authenticate"] = 'Bearer realm="myapp"'
        message = "invalid token" if bearer_token(request) else "missing bearer token"
        return _json_error(request, 401, message)
    return _json_error(request, 403, "forbidden")


@forbidden_view_config(path_info=r"^/dashboard(/|$)")
def dashboard_forbidden(exc: HTTPForbidden, request: Request) -> HTTPFound:
    """A dashboard page without a (valid) session: go and log in."""
    return HTTPFound(location=request.route_path("dashboard.login"))


def includeme(config: Configurator) -> None:
    """Install the policy once (both ``myapp.api`` and ``myapp.dashboard`` include this)."""
    if config.registry.get("myapp.security_installed"):
        return
    config.registry["myapp.security_installed"] = True
    config.include("myapp.db.pyramid.durable")
    config.set_security_policy(SecurityPolicy())
    config.scan(__name__)
