"""The API's JSON errors: 400 naming the field, 409 conflicts, 500 on a response off the spec.

Every error response aborts the request's transaction (pyramid_tm's commit veto
sees a 4xx/5xx), so nothing a failed request did is written. The other errors
(404 not found, IntegrityError → 409, maintenance → 503, 500) are rendered by
``myapp/views/errors.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from openapi_core.deserializing.media_types.exceptions import MediaTypeDeserializeError
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.validation.request.exceptions import MissingRequestBodyError
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid_openapi3 import RequestValidationError, ResponseValidationError

log = logging.getLogger(__name__)

#: messages echo the offending value: long values are cut to this many characters
MAX_MESSAGE = 300

_REQUIRED = re.compile(r"^'(?P<name>[^']+)' is a required property$")
_UNEXPECTED = re.compile(r"\((?P<names>'[^)]*') (?:was|were) unexpected\)")


class ApiError(Exception):
    """An error the API answers with ``status`` and ``{"error": message, **extra}``.

    Raised by views for conflicts (409) and bad references in the body (400).
    """

    status = 400

    def __init__(self, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra


class Conflict(ApiError):
    """409: the change conflicts with the current state (double booking, transition)."""

    status = 409


class BadField(ApiError):
    """400 for a field that passed the schema but not the data (an unknown driver_id)."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"{field}: {message}", field=field, errors=[{"field": field, "message": message}]
        )


def _join(*parts: Any) -> str | None:
    names = [str(p) for p in parts if p not in (None, "")]
    return "/".join(names) or None


def _schema_error_items(errors: Iterable[Any], parent: str | None) -> Iterator[dict[str, str]]:
    """jsonschema errors as items; ``parent``: the parameter's name, None for the body."""
    for se in errors:
        message = getattr(se, "message", None) or str(se)
        path = list(getattr(se, "path", []) or [])
        validator = getattr(se, "validator", None)
        if validator == "required":
            match = _REQUIRED.match(message)
            if match:
                yield {
                    "field": _join(parent, *path, match["name"]) or "body",
                    "message": "required",
                }
                continue
        if validator == "additionalProperties":
            match = _UNEXPECTED.search(message)
            if match:
                for name in re.findall(r"'([^']+)'", match["names"]):
                    yield {
                        "field": _join(parent, *path, name) or "body",
                        "message": "unknown field",
                    }
                continue
        if validator == "minProperties" and not path:
            message = "give at least one field"
        yield {"field": _join(parent, *path) or "body", "message": message}


def validation_error_items(errors: Iterable[Exception]) -> list[dict[str, str]]:
    """openapi-core's errors as ``[{"field": ..., "message": ...}]``, most precise first."""
    items: list[dict[str, str]] = []
    for err in errors:
        cause = err.__cause__
        name = getattr(err, "name", None)  # parameters carry their name
        schema_errors = getattr(cause, "schema_errors", None)
        if schema_errors:
            items.extend(_schema_error_items(schema_errors, name))
            continue
        if isinstance(err, MissingRequestBodyError):
            items.append({"field": "body", "message": "a JSON request body is required"})
            continue
        if isinstance(cause, MediaTypeDeserializeError):
            items.append({"field": "body", "message": "the request body is not valid JSON"})
            continue
        if isinstance(cause, MediaTypeNotFound):
            items.append({"field": "body", "message": UNSUPPORTED_MEDIA_TYPE})
            continue
        message = str(cause) if cause is not None else str(err)
        item = {"message": message}
        if name:
            item["field"] = str(name)
        elif "body" in type(err).__name__.lower():
            item["field"] = "body"
        items.append(item)
    for item in items:
        item["message"] = _clip(item["message"])
    return items


def _clip(message: str) -> str:
    """Cut a message that echoes a long value (a 1 MB name) to :data:`MAX_MESSAGE` characters."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "\u2026"


#: the message of a body sent with another content type than the operation accepts
UNSUPPORTED_MEDIA_TYPE = "send the body as JSON, with Content-Type: application/json"


def _json(request: Request, status: int, body: dict[str, Any]) -> dict[str, Any]:
    request.response.status = status
    request.response.content_type = "application/json"
    return body


def request_validation_error(exc: RequestValidationError, request: Request) -> dict[str, Any]:
    """400 ``{"error": "<field>: <message>", "field": ..., "errors": [...]}``.

    415 (same body) when the only problem is the body's content type.
    """
    items = validation_error_items(exc.errors) or [{"message": _clip(str(exc))}]
    first = items[0]
    field = first.get("field")
    message = f"{field}: {first['message']}" if field else first["message"]
    body: dict[str, Any] = {"error": message, "errors": items}
    if field:
        body["field"] = field
    status = 415 if all(i["message"] == UNSUPPORTED_MEDIA_TYPE for i in items) else 400
    log.info("%s %s: %d %s", request.method, request.path, status, message)
    return _json(request, status, body)


def response_validation_error(exc: ResponseValidationError, request: Request) -> dict[str, Any]:
    """A response that does not match the spec is our bug: 500, and the transaction aborts."""
    log.error("%s %s: response does not match the spec: %s", request.method, request.path, exc)
    return _json(request, 500, {"error": "internal server error: invalid response"})


def api_error(exc: ApiError, request: Request) -> dict[str, Any]:
    return _json(request, exc.status, {"error": exc.message, **exc.extra})


def add_error_views(config: Configurator) -> None:
    """Called by ``myapp.api``'s includeme itself (not through ``config.include``): the same
    context and predicates as pyramid_openapi3's own views for these errors, configured
    closer to the root, so Pyramid lets these replace them instead of reporting a conflict."""
    config.add_exception_view(
        request_validation_error, context=RequestValidationError, renderer="json"
    )
    config.add_exception_view(
        response_validation_error, context=ResponseValidationError, renderer="json"
    )
    config.add_exception_view(api_error, context=ApiError, renderer="json")
