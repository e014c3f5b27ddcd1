"""JSON error responses. Every error response aborts the request's transaction.

pyramid_tm aborts because the response status is 4xx/5xx (``tm.commit_veto``).
Retryable database errors (serialization failures, deadlocks) are tagged for
pyramid_retry first (:func:`myapp.db.pyramid.tag_retryable`), so the
catch-all view does not swallow them, whether they were raised by the view or
by the commit: the request is replayed from scratch, and only after the last
attempt does the client see a 409. Constraint violations are a 409, an
unreachable database a 503, anything else a 500 whose body carries details
only when ``myapp.expose_errors`` is on (never in production.ini).
"""

from __future__ import annotations

import logging

from pyramid.httpexceptions import HTTPException
from pyramid.request import Request
from pyramid.settings import asbool
from pyramid.view import exception_view_config, notfound_view_config
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm.exc import NoResultFound

from myapp.db import MaintenanceMode, ReadOnlyViolation, is_transient
from myapp.db.pyramid import tag_retryable

log = logging.getLogger(__name__)


def _json(request: Request, status: int, message: str, **extra: object) -> dict[str, object]:
    request.response.status = status
    request.response.content_type = "application/json"
    return {"error": message, **extra}


@notfound_view_config(renderer="json")
def not_found(request: Request) -> dict[str, object]:
    return _json(request, 404, "not found")


@exception_view_config(HTTPException, renderer="json")
def http_error(exc: HTTPException, request: Request) -> dict[str, object]:
    message = "not found" if exc.code == 404 else (exc.detail or exc.explanation or exc.title)
    request.response.headers.update(
        {
            k: v
            for k, v in exc.headers.items()
            if k.lower() in ("allow", "location", "retry-after", "www-authenticate")
        }
    )
    return _json(request, exc.code or 500, str(message).strip())


@exception_view_config(MaintenanceMode, renderer="json")
def maintenance(exc: MaintenanceMode, request: Request) -> dict[str, object]:
    request.response.headers["Retry-After"] = "60"
    return _json(request, 503, str(exc))


@exception_view_config(ReadOnlyViolation, renderer="json")
def read_only(exc: ReadOnlyViolation, request: Request) -> dict[str, object]:
    return _json(request, 503, str(exc))


@exception_view_config(NoResultFound, renderer="json")
def no_result(exc: NoResultFound, request: Request) -> dict[str, object]:
    return _json(request, 404, "not found")


@exception_view_config(Exception, renderer="json")
def server_error(exc: Exception, request: Request) -> dict[str, object]:
    if tag_retryable(request, exc):
        return _json(request, 409, "conflict, retrying")  # discarded: pyramid_retry replays
    if is_transient(exc):
        log.warning("%s %s: gave up after the last attempt: %s", request.method, request.path, exc)
        request.response.headers["Retry-After"] = "1"
        return _json(request, 409, "the request conflicted with concurrent updates; retry it")
    if isinstance(exc, IntegrityError):
        return _json(request, 409, "conflict: the change violates a database constraint")
    if isinstance(exc, DBAPIError) and (exc.connection_invalidated or _is_connection_error(exc)):
        log.warning("%s %s: database unavailable: %s", request.method, request.path, exc.orig)
        request.response.headers["Retry-After"] = "5"
        return _json(request, 503, "database unavailable, try again shortly")
    log.exception("%s %s failed", request.method, request.path, exc_info=exc)
    if asbool(request.registry.settings.get("myapp.expose_errors", False)):
        return _json(request, 500, "internal server error", detail=f"{type(exc).__name__}: {exc}")
    return _json(request, 500, "internal server error")


#: sqlite3 error names meaning the database file cannot be reached at all.
_SQLITE_UNAVAILABLE = {"SQLITE_CANTOPEN", "SQLITE_IOERR"}


def _is_connection_error(exc: DBAPIError) -> bool:
    """Is the database unreachable (not a bad statement)? Then the answer is a 503."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:  # PostgreSQL reported it: connection exceptions, shutdowns
        return str(sqlstate).startswith(("08", "57P"))
    if hasattr(orig, "sqlstate"):  # psycopg raised it client-side: the connection failed
        return isinstance(exc, OperationalError)
    errorname = getattr(orig, "sqlite_errorname", None)
    if errorname is not None:
        # extended codes extend the primary name: SQLITE_CANTOPEN_ISDIR, SQLITE_IOERR_READ
        return any(errorname == n or errorname.startswith(n + "_") for n in _SQLITE_UNAVAILABLE)
    return "server closed the connection" in str(orig)
