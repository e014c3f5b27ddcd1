"""Routes whose views run *durable* units of work: pyramid_tm leaves them alone.

The dispatch engine (``myapp.services.dispatch.run``) is a durable unit of work:
it begins with a defensive rollback, commits by itself, and refuses to run inside
another transaction such as a request's. A view that calls it therefore must not
be wrapped in pyramid_tm's transaction, and must not hold a database transaction
open while the engine runs (on SQLite a reader's transaction would even block the
engine's commit).

``config.add_durable_route(name, pattern)`` adds a route and records its name;
:func:`activate_hook` (installed as pyramid_tm's ``tm.activate_hook``) answers
False for a request whose path matches one of those routes, so pyramid_tm does
not begin a transaction for it. pyramid_tm calls the hook before the router has
matched a route, so the hook matches ``request.path_info`` against the recorded
routes' own patterns (the same matcher the router uses), never a copy of them.

Inside such a view ``request.dbsession`` has no unit of work: using it directly
raises ``NoUnitOfWork``. The view runs its own units of work, each committed or
rolled back before the next begins (``db_read_only()`` to read,
``db_transaction()`` to write, the engine's own). The database guard tween still
gives the request a scope (``current_session()`` works) and closes its session.

A ``tm.activate_hook`` already present in the settings is kept and consulted for
the other routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyramid.config import Configurator
from pyramid.interfaces import IRoutesMapper
from pyramid.path import DottedNameResolver
from pyramid.request import Request

#: registry key: the names of the routes served outside pyramid_tm
DURABLE_ROUTES = "myapp.durable_routes"
#: registry key: the activate hook that was configured before ours, if any
PREVIOUS_HOOK = "myapp.durable_routes.previous_hook"


def activate_hook(request: Request) -> bool:
    """``tm.activate_hook``: False (no pyramid_tm transaction) for the durable routes."""
    registry = request.registry
    names: set[str] = registry.get(DURABLE_ROUTES) or set()
    if names:
        mapper = registry.queryUtility(IRoutesMapper)
        path = request.path_info
        for name in names:
            route = mapper.get_route(name) if mapper is not None else None
            if route is not None and route.match(path) is not None:
                return False
    previous: Callable[[Request], bool] | None = registry.get(PREVIOUS_HOOK)
    return True if previous is None else bool(previous(request))


def is_durable_request(request: Request) -> bool:
    """True if pyramid_tm is not managing this request (a durable route)."""
    return not request.environ.get("tm.active", False)


def add_durable_route(config: Configurator, name: str, pattern: str, **kw: Any) -> None:
    """``config.add_durable_route(...)``: ``add_route`` for a route served outside pyramid_tm."""
    config.add_route(name, pattern, **kw)
    config.registry.setdefault(DURABLE_ROUTES, set()).add(name)


def includeme(config: Configurator) -> None:
    if config.registry.get(DURABLE_ROUTES) is not None:  # included already
        return
    config.registry[DURABLE_ROUTES] = set()
    settings = config.get_settings()
    previous = settings.get("tm.activate_hook")
    if previous is not None and previous is not activate_hook:
        config.registry[PREVIOUS_HOOK] = DottedNameResolver().maybe_resolve(previous)
    # pyramid_tm reads this when its tween is created (make_wsgi_app), after every include
    settings["tm.activate_hook"] = activate_hook
    config.add_directive("add_durable_route", add_durable_route)
