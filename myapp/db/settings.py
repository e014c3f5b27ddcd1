"""Database settings: environment profiles, ``DATABASE_URL`` and engine options.

The profile (``myapp.env`` in the ini file, or the ``MYAPP_ENV`` environment
variable) picks defaults; anything set explicitly in the ini file wins; the
``DATABASE_URL`` environment variable wins over the ini file's
``sqlalchemy.url``.

=========  ==========================  ===============================================
profile    default URL                 pool / behaviour
=========  ==========================  ===============================================
testing    ``sqlite:///%(here)s/var/   small pool, no pre-ping
           testing.sqlite``
local      ``sqlite:///%(here)s/var/   small pool, no pre-ping
           myapp.sqlite``
dev        ``sqlite:///%(here)s/var/   small pool, pre-ping, SQL echo off
           myapp.sqlite``
prod       (must be given)             pool 10 + 20 overflow, pre-ping, recycle 1800 s
=========  ==========================  ===============================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def asbool(value: Any) -> bool:
    """``true``/``yes``/``on``/``1`` (any case) are true, as in Pyramid's ini files."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "y", "t", "1")
    return bool(value)


PROFILES: dict[str, dict[str, Any]] = {
    "testing": {"pool_size": 2, "max_overflow": 4, "pool_recycle": -1, "pool_pre_ping": False},
    "local": {"pool_size": 5, "max_overflow": 10, "pool_recycle": -1, "pool_pre_ping": False},
    "dev": {"pool_size": 5, "max_overflow": 10, "pool_recycle": 3600, "pool_pre_ping": True},
    "prod": {"pool_size": 10, "max_overflow": 20, "pool_recycle": 1800, "pool_pre_ping": True},
}
DEFAULT_SQLITE_FILE = {"testing": "testing.sqlite", "local": "myapp.sqlite", "dev": "myapp.sqlite"}


class DatabaseConfigError(ValueError):
    """The database settings are missing or invalid."""


def profile_name(settings: Mapping[str, Any]) -> str:
    """Return the environment profile: ``MYAPP_ENV`` beats ``myapp.env`` (default ``dev``)."""
    name = os.environ.get("MYAPP_ENV") or settings.get("myapp.env") or "dev"
    if name not in PROFILES:
        raise DatabaseConfigError(
            f"unknown environment profile {name!r}; expected one of {', '.join(PROFILES)}"
        )
    return name


def database_url(settings: Mapping[str, Any], prefix: str = "sqlalchemy.") -> str:
    """The URL to connect to: ``DATABASE_URL``, else ``<prefix>url``, else the profile's default."""
    url = os.environ.get("DATABASE_URL") if prefix == "sqlalchemy." else None
    url = url or settings.get(prefix + "url")
    if url:
        return normalise_url(url)
    profile = profile_name(settings)
    if profile == "prod":
        raise DatabaseConfigError(
            "no database URL: set DATABASE_URL or sqlalchemy.url (the prod profile has no default)"
        )
    here = settings.get("here") or os.getcwd()
    return f"sqlite:///{os.path.join(here, 'var', DEFAULT_SQLITE_FILE[profile])}"


def normalise_url(url: str) -> str:
    """Accept the URLs people paste: ``postgres://`` and ``postgresql://`` mean psycopg 3."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def engine_options(settings: Mapping[str, Any], prefix: str = "sqlalchemy.") -> dict[str, Any]:
    """Pool options for :func:`sqlalchemy.create_engine`: profile defaults, then the ini file."""
    options = dict(PROFILES[profile_name(settings)])
    for key, cast in (
        ("pool_size", int),
        ("max_overflow", int),
        ("pool_recycle", int),
        ("pool_timeout", float),
        ("pool_pre_ping", asbool),
        ("echo", asbool),
    ):
        if prefix + key in settings:
            options[key] = cast(settings[prefix + key])
    return options
