"""``myapp routes``: the application's routes, in the order they are matched."""

from __future__ import annotations

import argparse
import json as _json
from typing import Any

from .context import CommandContext
from .registry import Command, register


def view_name(view: Any, attr: str | None = None) -> str:
    """``module.function`` or ``module.Class.attr`` for a view callable (wrappers unwrapped)."""
    for _ in range(20):
        inner = getattr(view, "__original_view__", None)
        if inner is None or inner is view:
            break
        view = inner
    module = getattr(view, "__module__", None) or type(view).__module__
    qualname = getattr(view, "__qualname__", None) or type(view).__qualname__
    name = f"{module}.{qualname}"
    return f"{name}.{attr}" if attr else name


def _methods(value: Any) -> list[str]:
    if not value:
        return ["*"]
    if isinstance(value, str):
        value = value.split(",")
    return sorted(m.strip() for m in value if m.strip())


def _views_of_route(registry: Any, route_name: str) -> list[tuple[str, list[str]]]:
    """The views registered on ``route_name``, from the introspector: (name, methods)."""
    found = []
    for item in registry.introspector.get_category("views") or ():
        view = item["introspectable"]
        if view.get("route_name") == route_name:
            name = view_name(view["callable"], view.get("attr"))
            found.append((name, _methods(view.get("request_methods"))))
    return found


def route_table(registry: Any) -> list[dict[str, Any]]:
    """One row per route and view: name, pattern, request methods, view callable.

    Pyramid's ``proutes`` prints a route with several views (one per method,
    say) as ``<pyramid.config.views.MultiView object at 0x…>``; such a route is
    listed here view by view, from the configuration's introspector.
    """
    from pyramid.interfaces import IRoutesMapper
    from pyramid.scripts.proutes import get_route_data

    mapper = registry.queryUtility(IRoutesMapper)
    rows: list[dict[str, Any]] = []
    if mapper is None:
        return rows
    for route in mapper.get_routes(include_static=True):
        data = get_route_data(route, registry)
        if any(" object at 0x" in str(row[2]) for row in data):
            views = _views_of_route(registry, route.name)
            if views:
                pattern = data[0][1]
                for view, methods in views:
                    rows.append(
                        {"name": route.name, "pattern": pattern, "methods": methods, "view": view}
                    )
                continue
        for name, pattern, view, methods in data:
            rows.append(
                {
                    "name": name,
                    "pattern": pattern,
                    "methods": [m.strip() for m in str(methods).split(",") if m.strip()],
                    "view": str(view),
                }
            )
    return rows


@register
class Routes(Command):
    name = "routes"
    help = "List the application's routes: name, pattern, methods and view"
    atomic = False  # reads the configuration only; no database work

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, ctx: CommandContext, *, json: bool = False) -> None:
        rows = route_table(ctx.registry)
        if json:
            ctx.out(_json.dumps(rows, indent=2))
            return
        headers = ("Name", "Pattern", "Methods", "View")
        table = [(r["name"], r["pattern"], ",".join(r["methods"]), r["view"]) for r in rows]
        widths = [max(len(str(row[i])) for row in [headers, *table]) for i in range(4)]
        for row in [headers, tuple("-" * w for w in widths), *table]:
            cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
            ctx.out("  ".join(cells).rstrip())
