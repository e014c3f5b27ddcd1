"""Seed 004's Items API, on pyramid_tm: the view never commits or rolls back itself."""

from __future__ import annotations

from typing import Any

from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from pyramid.view import view_config
from sqlalchemy import select

from myapp.models import Item

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


@view_config(route_name="items", request_method="GET", renderer="json")
def list_items(request: Request) -> dict[str, Any]:
    items = request.dbsession.scalars(select(Item).order_by(Item.id))
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
