"""Seed 004's Items API in Flask, with its hand-written ``session_scope()``: a competitor.

This is the seed's design as written (a ``scoped_session`` registry, a
``session_scope()`` context manager that commits, rolls back on any
exception and closes, the views using the legacy ``Query`` API), ported to
SQLAlchemy 2 / Flask 3 and pointed at the benchmark's database instead of an
in-memory one. It maps the same ``items`` table as myapp (created by myapp's
migrations), with its own declarative base: Flask's views know nothing of myapp.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, abort, jsonify
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from benchmarks.common import plain_engine


class BaseModel(DeclarativeBase):
    pass


class Item(BaseModel):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(64))

    def serialize(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}


def create_app(url: str, pool_size: int = 4) -> Flask:
    """The seed's app on ``url``; ``pool_size`` connections (no overflow, no pre-ping)."""
    db_engine = plain_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=False)
    session_factory = sessionmaker(bind=db_engine)
    Session = scoped_session(session_factory)

    @contextmanager
    def session_scope() -> Iterator[Any]:
        session = Session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    app = Flask(__name__)
    app.config["db_engine"] = db_engine

    @app.errorhandler(404)
    def page_not_found(error: Any) -> Any:
        return jsonify({"error": "not found"}), 404

    @app.route("/items", methods=["POST"])
    def create_item() -> Any:
        with session_scope() as db_session:
            item = Item()
            db_session.add(item)
            db_session.flush()
            item.name = "Item #" + str(item.id)
            db_session.flush()
            return jsonify(item.serialize())

    @app.route("/items/<int:id>")
    def get_item(id: int) -> Any:
        with session_scope() as db_session:
            item = db_session.query(Item).filter(Item.id == id).first()
            if not item:
                abort(404)
            return jsonify(item.serialize())

    return app
