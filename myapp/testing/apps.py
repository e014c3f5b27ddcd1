"""Building the real application in tests, with routes of the test's own.

``build_app`` includes the whole application (``config.include("myapp")``)
on a given :class:`~myapp.db.Database`, then lets the test add routes and
views (``add_view``): the request path under test is the production one,
tweens, pyramid_tm and error views included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pyramid.config import Configurator

from myapp.db import Database


def build_app(
    database: Database, configure: Callable[[Configurator], None] | None = None, **settings: Any
) -> Any:
    """The real application on ``database`` (testing profile, 3 attempts), plus test routes.

    ``settings`` override the defaults; ``configure(config)`` runs after the
    application is included, before the WSGI app is made.
    """
    base: dict[str, Any] = {"myapp.env": "testing", "retry.attempts": "3"}
    base.update(settings)
    base["myapp.database"] = database
    with Configurator(settings=base) as config:
        config.include("myapp")
        if configure is not None:
            configure(config)
    return config.make_wsgi_app()


def add_view(config: Configurator, path: str, view: Callable[..., Any], **options: Any) -> None:
    """Register ``view(request)`` (JSON renderer unless given) at ``path``."""
    name = "t_" + re.sub(r"\W", "_", path.strip("/"))
    config.add_route(name, path)
    options.setdefault("renderer", "json")
    config.add_view(view, route_name=name, **options)
