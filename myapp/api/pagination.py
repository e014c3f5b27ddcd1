"""Page-number pagination for list endpoints: ``?page=1&per_page=20``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyramid.request import Request
from sqlalchemy import Select, func, select

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


def page_params(request: Request) -> tuple[int, int]:
    """``(page, per_page)`` from the validated query (the spec bounds them)."""
    query = request.openapi_validated.parameters.query
    page = int(query.get("page") or 1)
    per_page = min(int(query.get("per_page") or DEFAULT_PER_PAGE), MAX_PER_PAGE)
    return page, per_page


def paginate(
    request: Request, stmt: Select[Any], serialize: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``stmt`` (already ordered) for the requested page, in the request's unit of work.

    Answers ``{"items", "page", "per_page", "total", "pages"}``; a page past the
    end is empty, not an error.
    """
    page, per_page = page_params(request)
    session = request.dbsession
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)).all()
    return {
        "items": [serialize(row) for row in rows],
        "page": page,
        "per_page": per_page,
        "total": total or 0,
        "pages": -(-(total or 0) // per_page),
    }
