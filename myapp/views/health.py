from __future__ import annotations

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError


@view_config(route_name="healthz", renderer="json")
def healthz(request: Request) -> Response | dict[str, str]:
    """200 when the database answers, 503 (JSON) when it does not."""
    try:
        request.dbsession.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        request.response.status = 503
        return {"status": "unavailable", "error": f"database unreachable: {type(exc).__name__}"}
    return {"status": "ok", "database": request.dbsession.get_bind().dialect.name}
