"""``myapp routes``: the application's routes, in the order they are matched."""

from __future__ import annotations

import argparse
import json as _json
from typing import Any

from .base import Command, CommandContext, register


def route_table(registry: Any) -> list[dict[str, Any]]:
    """One row per route and view: name, pattern, request methods, view callable."""
    from pyramid.interfaces import IRoutesMapper
    from pyramid.scripts.proutes import get_route_data

    mapper = registry.queryUtility(IRoutesMapper)
    rows: list[dict[str, Any]] = []
    if mapper is None:
        return rows
    for route in mapper.get_routes(include_static=True):
        for name, pattern, view, methods in get_route_data(route, registry):
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
