"""The API's views. Thin: they validate nothing by hand (the spec did), never commit (the
request's unit of work does), and flush where a constraint must answer 409 now."""

from __future__ import annotations

from typing import Any

from pyramid.view import view_config


class api_view(view_config):
    """``@view_config`` for API operations: validated against the spec, JSON, permission required.

    Omitting ``permission`` is a configuration error, so no API view can be public by
    accident (the per-route access tests check what each permission does).
    """

    def __init__(self, **settings: Any) -> None:
        if "permission" not in settings:
            raise TypeError(f"api_view for {settings.get('route_name')!r} needs a permission")
        settings.setdefault("openapi", True)
        settings.setdefault("renderer", "json")
        super().__init__(**settings)
