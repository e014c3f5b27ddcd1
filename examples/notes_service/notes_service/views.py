"""The HTTP views: each request is one unit of work (pyramid_tm through myapp.db.pyramid)."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPNotFound
from pyramid.request import Request
from pyramid.view import view_config
from sqlalchemy import select

from . import services
from .models import Notebook


def includeme(config: Configurator) -> None:
    config.add_route("notebooks", "/notebooks")
    config.add_route("notes", "/notebooks/{id:\\d+}/notes")
    config.add_route("publish", "/notebooks/{id:\\d+}/publish")
    config.scan(".views")


def _json(request: Request) -> dict[str, Any]:
    try:
        body = request.json_body
    except ValueError:
        raise HTTPBadRequest(json_body={"error": "the body is not JSON"}) from None
    if not isinstance(body, dict):
        raise HTTPBadRequest(json_body={"error": "the body is not a JSON object"})
    return body


def _error(exc: Exception) -> HTTPBadRequest:
    return HTTPBadRequest(json_body={"error": str(exc)})


@view_config(route_name="notebooks", request_method="GET", renderer="json")
def list_notebooks(request: Request) -> dict[str, Any]:
    notebooks = request.dbsession.scalars(select(Notebook).order_by(Notebook.id))
    return {
        "notebooks": [
            {"id": n.id, "name": n.name, "notes": [note.title for note in n.notes]}
            for n in notebooks
        ]
    }


@view_config(route_name="notebooks", request_method="POST", renderer="json")
def create_notebook(request: Request) -> dict[str, Any]:
    """Create a notebook, with its first notes if given: all of it, or nothing (400)."""
    body = _json(request)
    notebook = Notebook(name=str(body.get("name", "")).strip())
    if not notebook.name:
        raise HTTPBadRequest(json_body={"error": "a notebook needs a name"})
    request.dbsession.add(notebook)
    request.dbsession.flush()
    max_title = int(request.registry.settings.get("notes.max_title_length", 80))
    for title in body.get("notes", []):
        try:
            services.add_note(notebook.id, str(title), max_title=max_title)
        except services.NotebookError as exc:
            # the notebook was already flushed: pyramid_tm rolls the whole request back
            raise _error(exc) from exc
    request.response.status = 201
    return {"id": notebook.id}


@view_config(route_name="notes", request_method="POST", renderer="json")
def add_note(request: Request) -> dict[str, Any]:
    body = _json(request)
    max_title = int(request.registry.settings.get("notes.max_title_length", 80))
    try:
        note = services.add_note(
            int(request.matchdict["id"]), str(body.get("title", "")), max_title=max_title
        )
    except services.NotebookError as exc:
        raise _error(exc) from exc
    request.response.status = 201
    return {"id": note.id}


@view_config(route_name="publish", request_method="POST", renderer="json")
def publish(request: Request) -> dict[str, Any]:
    """Publish (a savepoint inside the request's unit of work); 404/400 change nothing."""
    notebook_id = int(request.matchdict["id"])
    if request.dbsession.get(Notebook, notebook_id) is None:
        raise HTTPNotFound(json_body={"error": "no such notebook"})
    try:
        count = services.publish(notebook_id)
    except services.NotebookError as exc:
        raise _error(exc) from exc
    return {"notes": count, "published": True}
