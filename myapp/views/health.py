from __future__ import annotations

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from myapp.db.pyramid import tag_retryable


@view_config(route_name="healthz", renderer="json")
def healthz(request: Request) -> Response | dict[str, str]:
    """200 when the database answers, 503 (JSON) when it does not.

    A pooled connection the server dropped (the database restarted) is
    retried on a new one (pyramid_retry), so the first check after the
    database came back answers 200; a database that cannot be reached is a 503.
    """
    try:
        request.dbsession.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        if tag_retryable(request, exc):
            raise  # a stale connection: the next attempt takes a new one
        request.response.status = 503
        return {"status": "unavailable", "error": f"database unreachable: {type(exc).__name__}"}
    return {"status": "ok", "database": request.dbsession.get_bind().dialect.name}
