"""Engines from Pyramid settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

from . import sqlite
from .settings import database_url, engine_options


def engine_from_settings(settings: Mapping[str, Any], prefix: str = "sqlalchemy.") -> Engine:
    """Create the engine described by ``settings`` (see :mod:`myapp.db.settings`).

    SQLite engines get the transactional workaround of :mod:`myapp.db.sqlite`
    and their directory is created; PostgreSQL URLs use psycopg 3.
    """
    return create_engine_for(database_url(settings, prefix), **engine_options(settings, prefix))


def create_engine_for(url: str, **options: Any) -> Engine:
    """``create_engine`` with myapp's per-dialect rules applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            options.pop("pool_pre_ping", None)
        else:
            for key in ("pool_size", "max_overflow", "pool_timeout"):
                options.pop(key, None)
        options.setdefault("connect_args", {})["check_same_thread"] = False
        return sqlite.install(create_engine(parsed, **options))
    return create_engine(parsed, **options)
