"""The Items API as a bare WSGI function over SQLAlchemy Core: the floor competitor.

No framework, no ORM, no transaction manager: a path match, one
``engine.begin()`` block per request (one transaction, committed), the same
SQL as the ORM versions (``POST``: an INSERT, then an UPDATE setting
``name = "Item #<id>"``; ``GET``: one SELECT by primary key) and ``json.dumps``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update

from benchmarks.common import plain_engine

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String))

_JSON = [("Content-Type", "application/json")]
_SELECT = select(items.c.id, items.c.name)
_INSERT = insert(items).values(name=None).returning(items.c.id)


def create_app(url: str, pool_size: int = 4) -> Callable[..., Iterable[bytes]]:
    """The WSGI callable on ``url``; ``pool_size`` connections (no overflow, no pre-ping)."""
    engine = plain_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=False)

    def respond(start_response: Any, status: str, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [*_JSON, ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path == "/items" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length:
                environ["wsgi.input"].read(length)
            with engine.begin() as conn:
                item_id = conn.execute(_INSERT).scalar_one()
                name = f"Item #{item_id}"
                conn.execute(update(items).where(items.c.id == item_id).values(name=name))
            return respond(start_response, "200 OK", {"id": item_id, "name": name})
        if path.startswith("/items/") and method == "GET":
            try:
                item_id = int(path[len("/items/") :])
            except ValueError:
                return respond(start_response, "404 Not Found", {"error": "not found"})
            with engine.begin() as conn:
                row = conn.execute(_SELECT.where(items.c.id == item_id)).first()
            if row is None:
                return respond(start_response, "404 Not Found", {"error": "not found"})
            return respond(start_response, "200 OK", {"id": row.id, "name": row.name})
        return respond(start_response, "404 Not Found", {"error": "not found"})

    app.engine = engine  # type: ignore[attr-defined]
    return app
