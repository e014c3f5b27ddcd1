"""myapp: a Pyramid + SQLAlchemy service whose unit-of-work lifecycle is right by construction."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.router import Router


def includeme(config: Configurator) -> None:
    """The whole application: database wiring, routes, views (``config.include("myapp")``).

    :func:`main` is just this on a fresh Configurator; tests include it and
    add their own routes on top, so they exercise the very same stack.
    """
    config.include(".observability")  # request ids, a log record per unit of work, /metrics
    config.include(".views.guards")  # the input guard (413/415/400) around every route
    config.include(".db_wiring")
    config.include(".routes")
    config.include("myapp.api")
    config.include("myapp.dashboard")
    config.scan(".views")


def main(global_config: dict[str, Any] | None, **settings: Any) -> Router:
    """The WSGI application (``pserve development.ini``)."""
    with Configurator(settings=settings) as config:
        config.include(includeme)
    return config.make_wsgi_app()
