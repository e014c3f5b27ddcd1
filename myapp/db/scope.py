"""Scopes: where business code finds its session and transaction manager.

A *scope* owns one session for a stretch of work and closes it at the end.
Requests open one (:mod:`myapp.db.pyramid`), scripts open one with
``Database.scope()``, and the test fixtures open one per test. Business code
asks for :func:`current_session` and never passes sessions or globals around.

Inside a script's ``with transaction.manager:`` with no scope, the session
joined to that transaction is the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import sessionmaker

from .datamanager import SESSION
from .errors import NoScope
from .guard import install_failure_guard
from .manager import current_transaction, get_tm, unit_manager
from .nesting import is_implicit
from .session import AUTOBEGIN, DATABASE, Session, register
from .writes import MAINTENANCE, MaintenanceSwitch

if TYPE_CHECKING:
    import transaction

log = logging.getLogger("myapp.db")

_current: ContextVar[Scope | None] = ContextVar("myapp.db.scope", default=None)


def make_session_factory(
    bind: Any,
    *,
    expire_on_commit: bool = True,
    maintenance: MaintenanceSwitch | None = None,
    database: Database | None = None,
    **options: Any,
) -> sessionmaker[Session]:
    """A session factory whose sessions join the ``transaction`` manager.

    The bridge is registered once on the factory, not on every session
    (registering per session costs about a sixth of a small request).
    """
    info: dict[str, Any] = {
        MAINTENANCE: maintenance if maintenance is not None else MaintenanceSwitch()
    }
    if database is not None:
        info[DATABASE] = database
    factory = sessionmaker(
        bind=bind, class_=Session, expire_on_commit=expire_on_commit, info=info, **options
    )
    register(factory)
    if isinstance(bind, Engine | Connection):
        install_failure_guard(bind)
    return factory


class Scope:
    """One session (created on first use) and the thread's transaction manager.

    ``autobegin``: the session may begin an implicit unit of work when used
    outside ``db_transaction()`` (scripts and tests); request scopes never do,
    since pyramid_tm always provides the transaction.
    """

    def __init__(
        self,
        factory: Callable[[], Session] | None = None,
        *,
        session: Session | None = None,
        database: Database | None = None,
        autobegin: bool = True,
        kind: str = "script",
    ) -> None:
        self._factory = factory
        self._session = session
        self._owns_session = session is None
        self.database = database
        self.autobegin = autobegin
        self.kind = kind

    @property
    def tm(self) -> transaction.ThreadTransactionManager:
        return get_tm()

    @property
    def session(self) -> Session:
        """This scope's session, created on first use."""
        if self._session is None:
            if self._factory is None:
                raise NoScope("this scope has no session factory")
            session = self._factory()
            if self.autobegin:
                session.info[AUTOBEGIN] = True
            self._session = session
        return self._session

    @property
    def factory(self) -> Callable[[], Session] | None:
        """The factory this scope makes its session with (None for a borrowed session)."""
        return self._factory

    @property
    def has_session(self) -> bool:
        return self._session is not None

    def close(self) -> None:
        """Close the session if this scope created it (returns its connection to the pool)."""
        if self._session is not None and self._owns_session:
            self._session.close()
            self._session = None

    @contextmanager
    def activate(self) -> Iterator[Scope]:
        """Make this the current scope inside the ``with`` block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


def current_scope() -> Scope:
    """The active scope, or a scope around the session joined to the current transaction."""
    scope = _current.get()
    if scope is not None:
        return scope
    txn = current_transaction()
    if txn is not None and txn.extension.get(SESSION) is not None:
        session = txn.extension[SESSION]
        return Scope(
            session=session,
            database=session.info.get(DATABASE),
            autobegin=False,
            kind="transaction",
        )
    raise NoScope(
        "no database scope is active: business code runs inside a request, "
        "'with db.scope():' in scripts, a management command, or the test fixtures"
    )


def current_session() -> Session:
    """The session of the current scope (see :func:`current_scope`)."""
    return current_scope().session


def active_scope() -> Scope | None:
    """The scope set in this context, or None (no fallback, never raises)."""
    return _current.get()


class Database:
    """An engine, its session factory, and scopes (seed 003's ``Database``).

    ``db.scope()`` opens a scope for scripts; ``db.session`` is the current
    scope's session; ``db.maintenance`` is the global read-only switch.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        replica_engine: Engine | None = None,
        expire_on_commit: bool = True,
        timezone: str = "Europe/Paris",
        read_only: bool = False,
    ) -> None:
        self.engine = engine
        self.replica_engine = replica_engine
        self.maintenance = MaintenanceSwitch(read_only)
        self.timezone = ZoneInfo(timezone)
        self.expire_on_commit = expire_on_commit
        self.session_factory = make_session_factory(
            engine, expire_on_commit=expire_on_commit, maintenance=self.maintenance, database=self
        )
        self.replica_factory = (
            make_session_factory(
                replica_engine,
                expire_on_commit=expire_on_commit,
                maintenance=self.maintenance,
                database=self,
            )
            if replica_engine is not None
            else None
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Database:
        """Build from a URL (``sqlite:///var/app.sqlite``, ``postgresql://...``).

        ``options`` are :class:`Database`'s keyword arguments (``replica_url``
        gives the replica's URL).
        """
        from .engine import create_engine_for
        from .settings import normalise_url

        replica_url = options.pop("replica_url", None)
        if replica_url:
            options["replica_engine"] = create_engine_for(normalise_url(replica_url))
        return cls(create_engine_for(normalise_url(url)), **options)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Database:
        """Build from Pyramid settings (``sqlalchemy.*``, ``myapp.*``; see settings.py)."""
        from .engine import engine_from_settings
        from .settings import asbool

        replica = None
        if settings.get("sqlalchemy.replica.url"):
            replica = engine_from_settings(settings, prefix="sqlalchemy.replica.")
        return cls(
            engine_from_settings(settings),
            replica_engine=replica,
            expire_on_commit=asbool(settings.get("sqlalchemy.expire_on_commit", True)),
            timezone=settings.get("myapp.timezone", "Europe/Paris"),
            read_only=asbool(settings.get("myapp.read_only", False)),
        )

    @classmethod
    def from_config(cls, config_uri: str, name: str | None = None) -> Database:
        """Build from an ini file's app section: ``Database.from_config("development.ini")``.

        ``name`` picks ``[app:NAME]`` (default: the URI's ``#fragment``, else
        ``main``), as ``pyramid.paster.get_appsettings`` does.
        """
        import plaster

        loader = plaster.get_loader(config_uri, protocols=["wsgi"])
        return cls.from_settings(loader.get_wsgi_app_settings(name=name))

    @contextmanager
    def scope(self, session: Session | None = None, *, autobegin: bool = True) -> Iterator[Session]:
        """Open a scope: yields its session; at exit, discards what was not committed and closes.

        The session may be used outside any unit of work: its first use begins
        an *implicit* unit of work, committed by ``session.commit()`` or
        ``save()``, adopted (and committed at its end) by ``db_transaction()``
        or ``with transaction.manager:`` inside the block, and rolled back when
        the scope ends. A scope opened inside another scope of the same
        database reuses its session.
        """
        outer = _current.get()
        if session is None and outer is not None and outer.database is self:
            yield outer.session
            return
        manager = unit_manager()
        before = manager.current
        scope = Scope(self.session_factory, session=session, database=self, autobegin=autobegin)
        try:
            with scope.activate():
                yield scope.session
        finally:
            try:
                txn = manager.current
                if txn is not None and txn is not before:
                    if not is_implicit(txn):
                        log.warning(
                            "a unit of work was left open at the end of a scope; aborting it"
                        )
                    manager.abort_all()
            finally:
                scope.close()

    @property
    def session(self) -> Session:
        """The current scope's session: inside ``with db.scope():``, a request, a test.

        Raises :class:`NoScope` outside any scope, or when the current scope
        belongs to another ``Database``.
        """
        try:
            scope = current_scope()
        except NoScope:
            raise NoScope(
                "Database.session is only available inside a scope: 'with db.scope():' in "
                "scripts, a request, or the test fixtures"
            ) from None
        if scope.database is not None and scope.database is not self:
            raise NoScope("the current database scope belongs to another Database")
        return scope.session

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, or after forking)."""
        self.engine.dispose()
        if self.replica_engine is not None:
            self.replica_engine.dispose()
