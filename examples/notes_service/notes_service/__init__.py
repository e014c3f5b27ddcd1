"""notes_service: a small Pyramid + SQLAlchemy service built on myapp's integration.

Notebooks hold notes; publishing a notebook is a committing service. It uses
myapp only through its public API: ``config.include("myapp.db.pyramid")``
and ``myapp.db`` (units of work), and ``myapp.testing`` in its tests.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.router import Router


def main(global_config: dict[str, Any] | None, **settings: Any) -> Router:
    """The WSGI application (``pserve testing.ini``)."""
    with Configurator(settings=settings) as config:
        config.include("myapp.db.pyramid")  # Database, pyramid_tm, pyramid_retry, request.dbsession
        config.include(".views")
    return config.make_wsgi_app()
