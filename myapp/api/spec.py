"""The OpenAPI document, validating it once per process, and its offline explorer.

The explorer (Swagger UI at ``/api/docs/``) is served entirely by the app:
its assets come from the ``swagger-ui-bundle`` package (Swagger UI's own
distribution files and licence) at ``/api/docs/static/``, the page's start-up
script from ``myapp/static`` at ``/api/docs/app/``, and every response under
``/api/docs/`` carries a Content-Security-Policy that allows this origin only
(:data:`EXPLORER_CSP`), so the page works with no network and a strict policy
and could not load anything from elsewhere.

pyramid_openapi3 validates the whole document against the OpenAPI 3 meta-schema
every time an application is configured (about 0.25 s for this spec): that is
most of the cost of building the app, which the test suite does many times.
Validation is a pure function of the document, so :func:`install_validation_cache`
wraps the validator pyramid_openapi3 calls with a cache keyed on the document's
content: an invalid document still fails every time, a changed one is validated
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.yaml")
#: the explorer page: pyramid_openapi3 fills in its configuration
EXPLORER_TEMPLATE = "myapp:templates/api_explorer.html"
EXPLORER_PREFIX = "/api/docs/"
#: only this origin; inline styles are Swagger UI's own (style attributes), no inline script
EXPLORER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

_validated: set[str] = set()
_lock = threading.Lock()


def _cached(validate: Callable[..., Any]) -> Callable[..., Any]:
    def validate_once(spec: Any, *args: Any, **kwargs: Any) -> Any:
        key = hashlib.sha256(
            json.dumps([spec, args, sorted(kwargs.items())], sort_keys=True, default=str).encode()
        ).hexdigest()
        if key in _validated:
            return None
        result = validate(spec, *args, **kwargs)  # raises on an invalid document
        with _lock:
            _validated.add(key)
        return result

    validate_once.__wrapped__ = validate  # type: ignore[attr-defined]
    validate_once._myapp_cached = True  # type: ignore[attr-defined]
    return validate_once


def install_validation_cache() -> None:
    """Make pyramid_openapi3 validate each distinct document once per process (idempotent)."""
    import pyramid_openapi3

    current = pyramid_openapi3.validate
    if not getattr(current, "_myapp_cached", False):
        pyramid_openapi3.validate = _cached(current)


def _explorer_csp(event: Any) -> None:
    # the raw PATH_INFO: request.path would fail on invalid UTF-8 (answered 400 elsewhere)
    if event.request.environ.get("PATH_INFO", "").startswith(EXPLORER_PREFIX):
        event.response.headers["Content-Security-Policy"] = EXPLORER_CSP
        event.response.headers["X-Content-Type-Options"] = "nosniff"


def add_offline_explorer(config: Any) -> None:
    """Serve the explorer's assets from the app (``swagger-ui-bundle``) under a strict CSP."""
    from pyramid.events import NewResponse
    from swagger_ui_bundle import swagger_ui_path

    config.add_static_view("api/docs/static", str(swagger_ui_path), cache_max_age=86400)
    config.add_static_view("api/docs/app", "myapp:static", cache_max_age=3600)
    config.add_subscriber(_explorer_csp, NewResponse)
