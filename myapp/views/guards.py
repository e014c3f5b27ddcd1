"""The input guard: malformed requests are refused before any unit of work begins.

``config.include("myapp.views.guards")`` adds the outermost tween (right under
the server), which answers these itself, in JSON (an HTML error page under
``/dashboard``), without touching the database, pyramid_tm or any view:

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

* for form bodies (``application/x-www-form-urlencoded``,
  ``multipart/form-data``), on every route: **415** when a charset other than
  UTF-8 is declared (unknown charsets included); **400** when a urlencoded
  body is not UTF-8 once percent-decoded, when a multipart body has no
  boundary, or when WebOb cannot parse it (the parsed form is kept, so the
  views and the CSRF check read it without parsing again);
* **415** for a body sent with a ``Content-Encoding`` (nothing here decodes
  ``gzip`` or ``deflate``).

The body checks answer the same whatever the URL and the credentials: they
run before routing and authentication, read nothing from the database, and
reveal nothing a client did not send (see "Order of the checks" in
``docs/api.md``).

It also does two things to requests it lets through:

* **HEAD** is served by the GET view with the body dropped (WebOb sends the
  GET response's headers, ``Content-Length`` included): Pyramid routes HEAD
  to GET views, but the OpenAPI layer has no ``head`` operations and would
  answer 500;
* **trusted hosts** (``myapp.trusted_hosts``, or the ``MYAPP_TRUSTED_HOSTS``
  environment variable, which wins; names separated by spaces or commas,
  ``.example.com`` for a domain and its subdomains, ``*`` for any): a
  request whose ``Host`` header matches none of them is served as if it had
  named the first one, so absolute URLs (``Location`` of a 201, redirects,
  ``route_url``) never carry a host the client made up. Unset: every host
  is trusted (development).

The 400 body has the API's shape: ``{"error": "body: ...", "field": "body",
"errors": [...]}``. Valid requests pass untouched (the body WebOb read stays
readable for the views).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.registry import Registry
from pyramid.renderers import render_to_response
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import INGRESS

log = logging.getLogger(__name__)

#: the setting naming the largest body accepted, in bytes
MAX_BODY_SETTING = "myapp.max_body_bytes"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: deeper JSON documents are refused (the API's bodies are two levels deep)
MAX_JSON_DEPTH = 32

#: the setting (and environment variable, which wins) naming the trusted host names
TRUSTED_HOSTS_SETTING = "myapp.trusted_hosts"
TRUSTED_HOSTS_ENV = "MYAPP_TRUSTED_HOSTS"
#: paths whose errors are HTML pages, and the template that renders them
HTML_ERROR_PAGES = ((re.compile(r"^/dashboard(/|$)"), "myapp:templates/dashboard_error.jinja2"),)

_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_PAGE_TITLES = {413: "Too large", 415: "Unsupported encoding"}
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
    if not _is_utf8(charset):
        raise BadInput(
            415, f"body: JSON must be sent as UTF-8, not {str(charset)[:40]}", field="body"
        )
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


def _is_utf8(charset: str | None) -> bool:
    return not charset or charset.lower().replace("_", "-") in ("utf-8", "utf8")


def check_form(request: Request, content_type: str, charset: str | None) -> None:
    """A form body must be UTF-8 and parse; the parsed form stays on the request."""
    if not _is_utf8(charset):
        message = f"body: forms must be sent as UTF-8, not {str(charset)[:40]}"
        raise BadInput(415, message, field="body")
    if content_type == "multipart/form-data":
        if not _content_type_param(request, "boundary"):
            raise BadInput(400, "body: a multipart body needs a boundary", field="body")
    else:
        try:
            unquote_to_bytes(request.body.replace(b"+", b" ")).decode("utf-8")
        except UnicodeError:
            raise BadInput(400, "body: the form is not valid UTF-8", field="body") from None
    try:
        request.POST  # noqa: B018 - parses the body once; WebOb keeps the result
    except Exception as exc:  # any parse error of attacker-controlled bytes is the client's
        log.info("%s %s: form body refused: %s", request.method, request.path, exc)
        raise BadInput(400, "body: the form body cannot be parsed", field="body") from None


def _json_response(exc: BadInput) -> Response:
    body: dict[str, Any] = {"error": exc.message}
    if exc.field is not None:
        message = exc.message.removeprefix("body: ")
        body["field"] = exc.field
        body["errors"] = [{"field": exc.field, "message": message}]
    return Response(
        body=json.dumps(body).encode("utf-8"), status=exc.status, content_type="application/json"
    )


def _error_response(request: Request, exc: BadInput, *, url_ok: bool = True) -> Response:
    """JSON, or the HTML error page of the paths that have one (the dashboard's).

    A URL that is not UTF-8 is answered in JSON everywhere: no page can be named.
    """
    for pattern, template in HTML_ERROR_PAGES:
        if url_ok and pattern.match(request.environ.get("PATH_INFO", "")):
            try:
                response = render_to_response(
                    template,
                    {
                        "title": _PAGE_TITLES.get(exc.status, "Bad request"),
                        "message": exc.message.removeprefix("body: ").capitalize()
                        + ". Nothing was done.",
                    },
                    request=request,
                )
            except Exception as render_error:  # no template engine in this app: JSON will do
                log.warning("cannot render %s (%r); answering in JSON", template, render_error)
                break
            response.status = exc.status
            return response
    return _json_response(exc)


def max_body_bytes(settings: dict[str, Any]) -> int:
    """The configured body limit (``myapp.max_body_bytes``), in bytes."""
    return int(settings.get(MAX_BODY_SETTING) or DEFAULT_MAX_BODY_BYTES)


def trusted_hosts(settings: dict[str, Any]) -> tuple[str, ...]:
    """The trusted host names (environment first, then settings), lower case; () trusts any.

    The first one is where untrusted requests are sent: it must be a plain name.
    """
    raw = os.environ.get(TRUSTED_HOSTS_ENV) or settings.get(TRUSTED_HOSTS_SETTING) or ""
    hosts = tuple(h.strip().lower() for h in str(raw).replace(",", " ").split() if h.strip())
    if hosts and hosts != ("*",) and (hosts[0] == "*" or hosts[0].startswith(".")):
        raise ConfigurationError(
            f"{TRUSTED_HOSTS_SETTING}: the first entry must be a host name, not {hosts[0]!r}"
        )
    return () if "*" in hosts else hosts


def host_is_trusted(host: str, trusted: tuple[str, ...]) -> bool:
    """Does ``host`` (a Host header, port included or not) match a trusted entry?"""
    host = host.strip().lower().rstrip(".")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for entry in trusted:
        if entry.startswith("."):
            if name == entry[1:] or name.endswith(entry):
                return True
        elif host == entry or name == entry:
            return True
    return False


def input_guard_tween_factory(
    handler: Callable[[Request], Response], registry: Registry
) -> Callable[[Request], Response]:
    """The outermost tween: see the module documentation."""
    limit = max_body_bytes(registry.settings)
    trusted = trusted_hosts(registry.settings)

    def input_guard_tween(request: Request) -> Response:
        environ = request.environ
        if trusted and not host_is_trusted(environ.get("HTTP_HOST", ""), trusted):
            log.info(
                "untrusted Host %r: serving as %s", environ.get("HTTP_HOST", "")[:80], trusted[0]
            )
            environ["HTTP_HOST"] = trusted[0]
        try:
            check_url(environ)
        except BadInput as exc:
            log.info("%s refused: %d %s", environ.get("REQUEST_METHOD"), exc.status, exc.message)
            return _error_response(request, exc, url_ok=False)
        try:
            length = request.content_length
            if length is not None and length > limit:
                raise BadInput(413, f"the request body is too large (at most {limit} bytes)")
            if length:
                check_body(request)
        except BadInput as exc:
            log.info("%s refused: %d %s", request.method, exc.status, exc.message)
            return _error_response(request, exc)
        if environ.get("REQUEST_METHOD") == "HEAD":
            # the GET view answers; WebOb sends its headers without the body
            environ["REQUEST_METHOD"] = "GET"
            try:
                return handler(request)
            finally:
                environ["REQUEST_METHOD"] = "HEAD"
        return handler(request)

    return input_guard_tween


def check_body(request: Request) -> None:
    """Every body the app could decode is decodable (JSON, forms), or a 400/415 now."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding and encoding != "identity":
        raise BadInput(
            415, f"body: Content-Encoding {encoding[:40]} is not supported", field="body"
        )
    content_type = (request.content_type or "").lower()
    if _JSON_TYPE.match(content_type):
        check_json(request.body, _charset(request))
    elif content_type in _FORM_TYPES:
        check_form(request, content_type, _charset(request))


def _content_type_param(request: Request, wanted: str) -> str | None:
    params = request.headers.get("Content-Type", "").split(";")[1:]
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == wanted:
            return value.strip().strip('"') or None
    return None


def _charset(request: Request) -> str | None:
    return _content_type_param(request, "charset")


def includeme(config: Configurator) -> None:
    """Install the input guard as the outermost tween (idempotent)."""
    if config.registry.get("myapp.input_guard_installed"):
        return
    config.registry["myapp.input_guard_installed"] = True
    settings = config.get_settings()
    max_body_bytes(settings)  # a bad value fails at startup
    trusted_hosts(settings)
    config.add_tween("myapp.views.guards.input_guard_tween_factory", under=INGRESS)
