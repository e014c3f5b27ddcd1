"""The company dashboard under ``/dashboard``: server-rendered with pyramid_jinja2.

A company logs in with its API token (typed into a form); the signed session
cookie then keeps its company id and a fingerprint of the token's hash, never
the token (see :mod:`myapp.api.security`). Every form is a POST protected by a
CSRF token bound to the session (``require_csrf=True`` on those views only).
"Dispatch now" is a durable route, like the API's trigger: the dispatch engine
commits by itself, outside any request transaction.

Settings:

``myapp.session_secret`` (or the ``MYAPP_SESSION_SECRET`` environment variable)
    signs the session cookie; at least 32 characters. Required with the ``prod``
    profile; elsewhere a random one is made at startup (sessions then end with the
    process, and several processes do not share them), with a warning.
``myapp.session_secure``
    send the cookie over HTTPS only (default: true with the ``prod`` profile).
"""

from __future__ import annotations

import logging
import os
import secrets

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.session import SignedCookieSessionFactory
from pyramid.settings import asbool

log = logging.getLogger(__name__)

SESSION_SECRET_SETTING = "myapp.session_secret"
SESSION_SECRET_ENV = "MYAPP_SESSION_SECRET"
MIN_SECRET_LENGTH = 32
_random_secret: str | None = None  # one per process when none is configured


def _is_prod(settings: dict) -> bool:
    return (os.environ.get("MYAPP_ENV") or settings.get("myapp.env") or "dev") == "prod"


def session_factory_from_settings(settings: dict) -> SignedCookieSessionFactory:
    """The signed-cookie session factory of the dashboard (see the module docstring)."""
    secret = os.environ.get(SESSION_SECRET_ENV) or settings.get(SESSION_SECRET_SETTING)
    if not secret:
        if _is_prod(settings):
            raise ConfigurationError(
                f"{SESSION_SECRET_SETTING} (or {SESSION_SECRET_ENV}) must be set in production: "
                "it signs the dashboard's session cookies"
            )
        global _random_secret
        if _random_secret is None:
            log.warning(
                "%s is not set: using a random secret; dashboard sessions end when this "
                "process does and are not shared between processes",
                SESSION_SECRET_SETTING,
            )
            _random_secret = secrets.token_urlsafe(32)
        secret = _random_secret
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(
            f"{SESSION_SECRET_SETTING} must be at least {MIN_SECRET_LENGTH} characters long"
        )
    secure = asbool(settings.get("myapp.session_secure", _is_prod(settings)))
    return SignedCookieSessionFactory(
        secret,
        cookie_name="myapp_dashboard",
        salt="myapp.dashboard.",
        httponly=True,
        samesite="Lax",
        secure=secure,
        path="/dashboard",
        max_age=None,
        timeout=8 * 3600,
        reissue_time=600,
    )


def includeme(config: Configurator) -> None:
    settings = config.get_settings()
    config.include("pyramid_jinja2")
    config.set_session_factory(session_factory_from_settings(settings))
    config.include("myapp.api.security")  # the security policy (once) and durable routes
    config.add_static_view("dashboard/static", "myapp:static", cache_max_age=3600)
    config.add_route("dashboard.home", "/dashboard")
    config.add_route("dashboard.login", "/dashboard/login")
    config.add_route("dashboard.logout", "/dashboard/logout")
    config.add_durable_route("dashboard.dispatch", "/dashboard/dispatch")
    config.scan(".views")
