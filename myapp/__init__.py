"""myapp: a Pyramid + SQLAlchemy service whose unit-of-work lifecycle is right by construction."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.router import Router


def main(global_config: dict[str, Any] | None, **settings: Any) -> Router:
    """The WSGI application (``pserve development.ini``)."""
    with Configurator(settings=settings) as config:
        config.include(".db_wiring")
        config.include(".routes")
        config.scan(".views")
    return config.make_wsgi_app()
