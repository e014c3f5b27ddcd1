"""Declarative base and ``BaseModel``: the base class of every model.

``Base`` names every constraint and index (so alembic migrations are stable
across databases). ``BaseModel`` adds UTC ``created``/``updated`` timestamps,
``self.session``, ``self.is_in_transaction`` and ``save()``/``delete()``.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any, Self
from zoneinfo import ZoneInfo

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .scope import Database, active_scope, current_session
from .units import db_transaction, is_in_transaction

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DEFAULT_TIMEZONE = ZoneInfo("Europe/Paris")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC on every backend (SQLite has no time zones).

    PostgreSQL: ``timestamptz``. SQLite and MySQL/MariaDB: the naive UTC value
    (MySQL/MariaDB: ``DATETIME(6)``, microseconds kept; its ``TIMESTAMP`` would
    end in 2038 and convert through the session time zone).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name != "postgresql" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}


class _SessionAccessor:
    """``Model.session`` / ``obj.session``: the current scope's session."""

    def __get__(self, obj: Any, owner: type) -> Any:
        return current_session()


class BaseModel(Base):
    """Abstract base for models: timestamps, ``session``, ``save()``, ``delete()``.

    ``save()`` and ``delete()`` flush inside a transaction (the enclosing
    unit of work commits or rolls back) and commit at once when called
    outside one.
    """

    __abstract__ = True

    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )

    session = _SessionAccessor()

    @property
    def is_in_transaction(self) -> bool:
        return is_in_transaction()

    def save(self) -> Self:
        """Add and flush inside a transaction; outside one, add and commit."""
        if is_in_transaction():
            session = current_session()
            session.add(self)
            session.flush()
        else:
            with db_transaction() as session:
                session.add(self)
        return self

    def delete(self) -> None:
        """Delete and flush inside a transaction; outside one, delete and commit."""
        if is_in_transaction():
            session = current_session()
            session.delete(self)
            session.flush()
        else:
            with db_transaction() as session:
                session.delete(self)

    @staticmethod
    def display_timezone() -> tzinfo:
        """The display time zone (``myapp.timezone``; default Europe/Paris)."""
        scope = active_scope()
        if scope is not None and scope.database is not None:
            return scope.database.timezone
        return DEFAULT_TIMEZONE

    def local_time(self, value: datetime) -> datetime:
        """``value`` in the display time zone."""
        return value.astimezone(self.display_timezone())


def init_db(
    bind: Database | Engine | Connection,
    metadata: MetaData | None = None,
    *,
    drop: bool = False,
    alembic_script_location: str | None = None,
) -> None:
    """Create the database schema (``init_db``), in one transaction of its own.

    Without ``alembic_script_location``: create the tables registered on
    ``metadata`` (default ``Base.metadata``: import the models first) that do
    not exist yet; ``drop=True`` drops them first. Handy for scripts,
    examples and throwaway databases.

    With ``alembic_script_location`` (``"myapp:alembic"``): run the alembic
    migrations up to head instead, which is what ``myapp initdb`` does and
    what production databases get (the env.py must accept a connection in
    ``config.attributes["connection"]``).

    Schema setup, not business code: it runs outside any unit of work.
    """
    metadata = metadata if metadata is not None else Base.metadata
    target = bind.engine if isinstance(bind, Database) else bind

    def run(connection: Connection) -> None:
        if drop:
            metadata.drop_all(connection)
        if alembic_script_location is None:
            metadata.create_all(connection)
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", alembic_script_location)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    if isinstance(target, Connection):
        run(target)
    else:
        with target.begin() as connection:
            run(connection)
