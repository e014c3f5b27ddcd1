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
dev        ``sqlite:///%(here)s/var/   small pool, no pre-ping, SQL echo off
           myapp.sqlite``
prod       (must be given)             pool 10 + 20 overflow, no pre-ping, recycle 1800 s
=========  ==========================  ===============================================

No profile pre-pings pooled connections (a ``SELECT 1`` round trip per checkout):
a request that meets a dead pooled connection is replayed on a fresh one instead
(``docs/architecture.md``, "The read path"). ``sqlalchemy.pool_pre_ping = true``
still turns it on. ``sqlalchemy.pipeline_begin`` (default true): PostgreSQL write
transactions send their ``BEGIN`` with their first statement (:mod:`myapp.db.engine`).

Read replicas (:mod:`myapp.db.replicas`): ``sqlalchemy.replica_urls`` (one URL per
line, or separated by commas or spaces), overridden by the ``DATABASE_REPLICA_URLS``
environment variable (same format; empty means none); the older single
``sqlalchemy.replica.url`` still counts. ``sqlalchemy.replica_max_lag`` (seconds,
default 5), ``sqlalchemy.replica_check_interval`` (seconds, default 2) and
``sqlalchemy.read_your_writes`` (seconds a client that wrote reads from the primary,
default 10).

More than one database (docs/multiple-databases.md): ``myapp.databases`` names them
(``MYAPP_DATABASES`` wins; empty: none); database ``NAME``'s URL is
``<NAME>_DATABASE_URL``, else ``database.<name>.url``, and its pool options are
``database.<name>.pool_size`` etc. (the profile's defaults otherwise).
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
    "dev": {"pool_size": 5, "max_overflow": 10, "pool_recycle": 3600, "pool_pre_ping": False},
    "prod": {"pool_size": 10, "max_overflow": 20, "pool_recycle": 1800, "pool_pre_ping": False},
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
    """Accept the URLs people paste: ``postgres://`` and ``postgresql://`` mean psycopg 3.

    ``mysql://`` and ``mariadb://`` get myapp's MySQL driver (:mod:`myapp.db.mysql`).
    """
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    from .mysql import driver_url

    return driver_url(url)


def engine_options(settings: Mapping[str, Any], prefix: str = "sqlalchemy.") -> dict[str, Any]:
    """Pool options for :func:`sqlalchemy.create_engine`: profile defaults, then the ini file."""
    options = dict(PROFILES[profile_name(settings)])
    for key, cast in (
        ("pool_size", int),
        ("max_overflow", int),
        ("pool_recycle", int),
        ("pool_timeout", float),
        ("pool_pre_ping", asbool),
        ("pipeline_begin", asbool),
        ("echo", asbool),
    ):
        if prefix + key in settings:
            options[key] = cast(settings[prefix + key])
    return options


def replica_urls(settings: Mapping[str, Any]) -> list[str]:
    """The read replicas' URLs: ``DATABASE_REPLICA_URLS``, else ``sqlalchemy.replica_urls``.

    Both are lists separated by newlines, commas or spaces; the older single
    ``sqlalchemy.replica.url`` is added to the ini list. An empty
    ``DATABASE_REPLICA_URLS`` means no replicas.
    """
    raw = os.environ.get("DATABASE_REPLICA_URLS")
    if raw is None:
        raw = " ".join(
            str(settings.get(key) or "")
            for key in ("sqlalchemy.replica_urls", "sqlalchemy.replica.url")
        )
    urls: list[str] = []
    for url in raw.replace(",", " ").split():
        url = normalise_url(url)
        if url not in urls:
            urls.append(url)
    return urls


def replica_options(settings: Mapping[str, Any]) -> dict[str, float]:
    """``max_lag``, ``check_interval`` and ``read_your_writes`` in seconds (see the docstring)."""
    values = {"max_lag": 5.0, "check_interval": 2.0, "read_your_writes": 10.0}
    for name, key in (
        ("max_lag", "sqlalchemy.replica_max_lag"),
        ("check_interval", "sqlalchemy.replica_check_interval"),
        ("read_your_writes", "sqlalchemy.read_your_writes"),
    ):
        if settings.get(key) not in (None, ""):
            try:
                values[name] = float(settings[key])
            except ValueError:
                raise DatabaseConfigError(f"{key} must be a number of seconds") from None
            if values[name] < 0:
                raise DatabaseConfigError(f"{key} must not be negative")
    return values


# -- more than one database (docs/multiple-databases.md) ------------------------

#: the name of the database configured by ``sqlalchemy.url`` / ``DATABASE_URL``
MAIN = "main"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def database_names(settings: Mapping[str, Any]) -> list[str]:
    """The names of the databases configured besides the main one (``ledger``, ...).

    ``MYAPP_DATABASES`` (names separated by commas or spaces; empty: none)
    wins over the ini file's ``myapp.databases``. A name is lower-case
    letters, digits and ``_``, starts with a letter, and is not ``main``.
    """
    raw = os.environ.get("MYAPP_DATABASES")
    if raw is None:
        raw = str(settings.get("myapp.databases") or "")
    names: list[str] = []
    for name in raw.replace(",", " ").split():
        if not (name[0].isalpha() and set(name) <= _NAME_CHARS) or name == MAIN:
            raise DatabaseConfigError(
                f"invalid database name {name!r} in myapp.databases: use lower-case letters, "
                f"digits and '_', starting with a letter (and not {MAIN!r})"
            )
        if name not in names:
            names.append(name)
    return names


def named_database_url(settings: Mapping[str, Any], name: str) -> str:
    """The URL of database ``name``: ``<NAME>_DATABASE_URL``, else ``database.<name>.url``."""
    url = os.environ.get(f"{name.upper()}_DATABASE_URL") or settings.get(f"database.{name}.url")
    if not url:
        raise DatabaseConfigError(
            f"the database {name!r} is listed in myapp.databases but has no URL: set "
            f"{name.upper()}_DATABASE_URL or database.{name}.url"
        )
    return normalise_url(str(url))
