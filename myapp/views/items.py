"""The Items API of the quick start, on pyramid_tm: the view never commits or rolls back.

``GET /items`` is paginated and bounded like the API's lists (``?page=`` from 1,
``?per_page=`` 1 to 100, default 20, ordered by id), but keeps the original body,
``{"items": [...]}``, so its transcript reads the same: the page's place is in
the headers, ``X-Total-Count`` (every item) and ``Link`` (``rel="next"`` /
``rel="prev"``, relative URLs, RFC 8288). A bad ``page``/``per_page`` is a 400
naming the parameter, in the API's error shape.
"""

from __future__ import annotations

from typing import Any

from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from pyramid.view import exception_view_config, view_config
from sqlalchemy import func, select

from myapp.models import Item

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100

#: the largest id an INTEGER primary key can hold (PostgreSQL: 32 bits)
MAX_ID = 2**31 - 1


@view_config(route_name="items", request_method="POST", renderer="json")
def create_item(request: Request) -> dict[str, Any]:
    item = Item()
    request.dbsession.add(item)
    request.dbsession.flush()  # assigns the id; the request's transaction commits it
    item.name = f"Item #{item.id}"
    request.dbsession.flush()
    return item.serialize()


class BadParameter(Exception):
    """A query parameter out of its bounds: 400 ``{"error", "field", "errors"}``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _query_int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 10 else 0
    if not 1 <= value <= high:
        raise BadParameter(name, f"a whole number from 1 to {high}")
    return value


@exception_view_config(BadParameter, renderer="json")
def bad_parameter(exc: BadParameter, request: Request) -> dict[str, Any]:
    request.response.status = 400
    return {
        "error": str(exc),
        "field": exc.field,
        "errors": [{"field": exc.field, "message": exc.message}],
    }


@view_config(route_name="items", request_method="GET", renderer="json")
def list_items(request: Request) -> dict[str, Any]:
    """One page of items by id (see the module documentation)."""
    page = _query_int(request, "page", 1, MAX_ID)
    per_page = _query_int(request, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
    session = request.dbsession
    total = session.scalar(select(func.count()).select_from(Item)) or 0
    items = session.scalars(
        select(Item).order_by(Item.id).limit(per_page).offset((page - 1) * per_page)
    )
    links = []
    if page * per_page < total:
        links.append(f'</items?page={page + 1}&per_page={per_page}>; rel="next"')
    if page > 1:
        links.append(f'</items?page={page - 1}&per_page={per_page}>; rel="prev"')
    request.response.headers["X-Total-Count"] = str(total)
    if links:
        request.response.headers["Link"] = ", ".join(links)
    return {"items": [item.serialize() for item in items]}


@view_config(route_name="item", request_method="GET", renderer="json")
def get_item(request: Request) -> dict[str, Any]:
    try:
        item_id = int(request.matchdict["id"])
    except ValueError:
        raise HTTPNotFound() from None
    if not 1 <= item_id <= MAX_ID:  # the database would refuse the value: no such item
        raise HTTPNotFound()
    item = request.dbsession.get(Item, item_id)
    if item is None:
        raise HTTPNotFound()  # the request's transaction is rolled back
    return item.serialize()
