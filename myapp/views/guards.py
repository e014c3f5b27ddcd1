"""The input guard: malformed requests are refused before any unit of work begins.

``config.include("myapp.views.guards")`` adds the outermost tween (right under
the server), which answers these itself, in JSON, without touching the
database, pyramid_tm or any view:

* **413** when the body is larger than ``myapp.max_body_bytes`` (default
  1 MiB; ``Content-Length`` is checked before anything is read; waitress
  sets it for chunked bodies too, after buffering them);
* **400** when the URL path or its query string is not valid UTF-8 once
  percent-decoded (WebOb would raise ``UnicodeDecodeError`` from deep inside
  the stack: route matching, pyramid_tm's activate hook, request validation);
* for JSON bodies (``application/json`` or ``application/*+json``):
  **415** when the request declares a charset other than UTF-8 (JSON is UTF-8,
  RFC 8259 section 8.1); **400** when the body is not UTF-8, is not JSON,
  uses ``NaN``/``Infinity``, is nested deeper than :data:`MAX_JSON_DEPTH`, or
  holds a string with a NUL character or a lone surrogate (PostgreSQL cannot
  store the first, no encoder can write the second: both would become 500s
  at the first INSERT).

The 400 body has the API's shape: ``{"error": "body: ...", "field": "body",
"errors": [...]}``. Valid requests pass untouched (the body WebOb read stays
readable for the views).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import INGRESS

log = logging.getLogger(__name__)

#: the setting naming the largest body accepted, in bytes
MAX_BODY_SETTING = "myapp.max_body_bytes"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: deeper JSON documents are refused (the API's bodies are two levels deep)
MAX_JSON_DEPTH = 32

_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class BadInput(Exception):
    """A request the guard refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def check_url(environ: dict[str, Any]) -> None:
    """The path and query string must be UTF-8 once percent-decoded."""
    path = environ.get("PATH_INFO", "")
    try:
        path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise BadInput(400, "the URL path is not valid UTF-8") from None
    query = environ.get("QUERY_STRING", "")
    if query:
        try:
            unquote_to_bytes(query.replace("+", " ")).decode("utf-8")
        except UnicodeError:
            raise BadInput(400, "the query string is not valid UTF-8") from None


def check_json(body: bytes, charset: str | None) -> None:
    """``body`` must be a UTF-8 JSON document that a database can store."""
    if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise BadInput(415, f"body: JSON must be sent as UTF-8, not {charset[:40]}", field="body")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(400, "body: the request body is not valid UTF-8", field="body") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadInput(400, "body: the JSON document is nested too deeply", field="body") from None
    except ValueError:
        raise BadInput(400, "body: the request body is not valid JSON", field="body") from None
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:  # iterative: no recursion on attacker-controlled depth
        value, depth = stack.pop()
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = [(None, v) for v in value]
        elif isinstance(value, str):
            items = []
            if _UNSTORABLE.search(value):
                raise BadInput(
                    400,
                    "body: text cannot contain NUL (\\u0000) characters or lone surrogates",
                    field="body",
                )
            continue
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadInput(400, "body: the JSON document is nested too deeply", field="body")
        for key, item in items:
            if isinstance(key, str) and _UNSTORABLE.search(key):
                raise BadInput(
                    400,
                    "body: text cannot contain NUL (\\u0000) characters or lone surrogates",
                    field="body",
                )
            stack.append((item, depth + 1))


def _json_response(exc: BadInput) -> Response:
    body: dict[str, Any] = {"error": exc.message}
    if exc.field is not None:
        message = exc.message.removeprefix("body: ")
        body["field"] = exc.field
        body["errors"] = [{"field": exc.field, "message": message}]
    return Response(
        body=json.dumps(body).encode("utf-8"), status=exc.status, content_type="application/json"
    )


def max_body_bytes(settings: dict[str, Any]) -> int:
    """The configured body limit (``myapp.max_body_bytes``), in bytes."""
    return int(settings.get(MAX_BODY_SETTING) or DEFAULT_MAX_BODY_BYTES)


def input_guard_tween_factory(
    handler: Callable[[Request], Response], registry: Registry
) -> Callable[[Request], Response]:
    """The outermost tween: see the module documentation."""
    limit = max_body_bytes(registry.settings)

    def input_guard_tween(request: Request) -> Response:
        try:
            check_url(request.environ)
            length = request.content_length
            if length is not None and length > limit:
                raise BadInput(413, f"the request body is too large (at most {limit} bytes)")
            content_type = (request.content_type or "").lower()
            if _JSON_TYPE.match(content_type) and length:
                check_json(request.body, _charset(request))
        except BadInput as exc:
            log.info("%s refused: %d %s", request.method, exc.status, exc.message)
            return _json_response(exc)
        return handler(request)

    return input_guard_tween


def _charset(request: Request) -> str | None:
    params = request.headers.get("Content-Type", "").split(";")[1:]
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


def includeme(config: Configurator) -> None:
    """Install the input guard as the outermost tween (idempotent)."""
    if config.registry.get("myapp.input_guard_installed"):
        return
    config.registry["myapp.input_guard_installed"] = True
    max_body_bytes(config.get_settings())  # a bad value fails at startup
    config.add_tween("myapp.views.guards.input_guard_tween_factory", under=INGRESS)
