"""myapp: a Pyramid + SQLAlchemy service whose unit-of-work lifecycle is right by construction."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

# Pyramid 2.x imports pkg_resources (pyramid.asset, pyramid.path), and setuptools (>= 80.9 as
# a UserWarning, earlier as a DeprecationWarning) warns on that import: on Python 3.12+ venvs,
# where pip installs a recent setuptools, the warning reached the stderr of every `myapp`
# command. Nothing a user of myapp can act on: hidden here, before Pyramid is first imported
# by any myapp entry point (console script, app factory, alembic env, pytest plugin).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API")

if TYPE_CHECKING:  # Pyramid is imported by main(), not by importing the package
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
    from pyramid.config import Configurator

    with Configurator(settings=settings) as config:
        config.include(includeme)
    return config.make_wsgi_app()
