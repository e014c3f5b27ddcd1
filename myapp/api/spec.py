"""The OpenAPI document, and validating it once per process instead of once per app.

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
