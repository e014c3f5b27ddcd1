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
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import sessionmaker

from .datamanager import SESSION
from .errors import NoScope
from .events import listen_once
from .guard import install_failure_guard
from .manager import current_transaction, get_tm, unit_manager
from .nesting import is_implicit
from .readpath import after_transaction_end, install_error_mapping, lift_read_only
from .replicas import Replica, ReplicaSet
from .session import AUTOBEGIN, DATABASE, Session, register
from .settings import MAIN, DatabaseConfigError
from .writes import MAINTENANCE, READ_ONLY, MaintenanceSwitch

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
    from sqlalchemy import event

    event.listen(factory, "after_transaction_end", after_transaction_end)
    if isinstance(bind, Engine | Connection):
        install_failure_guard(bind)
        install_error_mapping(bind.engine if isinstance(bind, Connection) else bind)
    return factory


class Scope:
    """One session (created on first use) and the thread's transaction manager.

    ``autobegin``: the session may begin an implicit unit of work when used
    outside ``db_transaction()`` (scripts and tests); request scopes never do,
    since pyramid_tm always provides the transaction. ``read_only``: the
    session is read-only (safe-method requests): writes are refused at flush
    and by the database. ``primary_reads``: outermost ``db_read_only()`` units
    read from the primary, not a replica (read-your-writes: set after this
    scope committed a write, or for a client that wrote recently).
    """

    def __init__(
        self,
        factory: Callable[[], Session] | None = None,
        *,
        session: Session | None = None,
        database: Database | None = None,
        autobegin: bool = True,
        kind: str = "script",
        read_only: bool = False,
    ) -> None:
        self._factory = factory
        self.read_only = read_only
        self.primary_reads = False
        self._session = session
        self._owns_session = session is None
        self.database = database
        self.autobegin = autobegin
        self.kind = kind
        self._named: dict[str, Session] = {}

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
            if self.read_only:
                session.info[READ_ONLY] = True
            self._session = session
        return self._session

    def session_for(self, name: str | None = None) -> Session:
        """The session of database ``name`` in this scope (None or ``"main"``: :attr:`session`).

        Created on first use, with this scope's flags (autobegin, read-only:
        a read-only scope reads the named database through its read path) and
        joined to the same transaction as every other session of the scope.
        :class:`NoScope` for a name that is not configured.
        """
        if name is None or self.database is None or name == self.database.name:
            if name not in (None, "main") and self.database is None:
                raise NoScope(f"no database named {name!r}: this scope has no Database")
            return self.session
        session = self._named.get(name)
        if session is None:
            if self.kind == "transaction":
                raise NoScope(
                    f"the session of database {name!r} needs a scope: open one with "
                    "'with db.scope():' (requests, commands and test fixtures have one)"
                )
            database = self.database.database(name)
            read_only = self.read_only or self.kind == "read-only"
            factory = database.read_factory()[0] if read_only else database.session_factory
            session = factory()
            if self.autobegin:
                session.info[AUTOBEGIN] = True
            if read_only:
                session.info[READ_ONLY] = True
            self._named[name] = session
        return session

    @property
    def factory(self) -> Callable[[], Session] | None:
        """The factory this scope makes its session with (None for a borrowed session)."""
        return self._factory

    @property
    def has_session(self) -> bool:
        return self._session is not None

    def close(self) -> None:
        """Close the sessions this scope created (returns their connections to the pool)."""
        self._close_named()
        if self._session is not None and self._owns_session:
            lift_read_only(self._session)
            self._session.close()
            self._session = None

    def _close_named(self) -> None:
        named, self._named = self._named, {}
        for session in named.values():
            lift_read_only(session)
            session.close()

    @contextmanager
    def activate(self) -> Iterator[Scope]:
        """Make this the current scope inside the ``with`` block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)
            if not self._owns_session:  # nobody calls close() on a borrowed session's scope
                self._close_named()


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


def current_session(name: str | None = None) -> Session:
    """The session of the current scope (see :func:`current_scope`).

    ``name``: the session of that named database (``current_session("ledger")``);
    every session of a scope joins the same unit of work, and a unit of work
    that wrote to two databases commits in two phases (:mod:`myapp.db.twophase`).
    """
    scope = current_scope()
    return scope.session if name is None else scope.session_for(name)


def active_scope() -> Scope | None:
    """The scope set in this context, or None (no fallback, never raises)."""
    return _current.get()


class Database:
    """An engine, its session factory, and scopes (the ``Database`` of the units of work).

    ``db.scope()`` opens a scope for scripts; ``db.session`` is the current
    scope's session; ``db.maintenance`` is the global read-only switch.

    The read path (``docs/architecture.md``, "The read path"): safe-method
    requests and outermost ``db_read_only()`` units read through
    :meth:`read_factory`: a healthy replica of :attr:`replicas`, else the
    primary's *read engine* (:attr:`read_engine`: the primary's URL, autocommit,
    read-only by the server, created on first use; ``read_engine=False`` or an
    in-memory SQLite database: none, reads then use the primary's factory in a
    read-only transaction). ``replica_engine`` (an engine used as it is) and
    ``replicas`` (a :class:`~myapp.db.replicas.ReplicaSet`) add replicas.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        replica_engine: Engine | None = None,
        replicas: ReplicaSet | None = None,
        read_engine: Engine | bool = True,
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
            self._factory_for(replica_engine) if replica_engine is not None else None
        )
        self.replicas = replicas if replicas is not None else ReplicaSet()
        if replica_engine is not None:
            url = replica_engine.url.render_as_string(hide_password=False)
            self.replicas.replicas.insert(0, Replica(url, replica_engine, self.replica_factory))
            from sqlalchemy import event

            event.listen(self.session_factory, "after_commit", _read_your_writes)
        if self.replicas.primary is None:
            self.replicas.primary = engine
        self._read_engine: Engine | None = read_engine if isinstance(read_engine, Engine) else None
        self._read_engine_wanted = read_engine is not False
        self._read_factory: Callable[[], Session] | None = None
        self._lock = threading.Lock()
        #: ``"main"``, or the name this database was added under (:meth:`add_database`)
        self.name = MAIN
        #: the main database, for a named one (None for the main database itself)
        self.parent: Database | None = None
        #: the named databases added to this (main) database, by name
        self.databases: dict[str, Database] = {}

    def add_database(self, name: str, database: Database) -> Database:
        """Add ``database`` under ``name``: its sessions join this database's units of work.

        ``current_session(name)`` is then its session in every scope. A unit of
        work that writes to this database and ``name`` commits in two phases
        (:mod:`myapp.db.twophase`), so both must be PostgreSQL:
        :class:`~myapp.db.settings.DatabaseConfigError` otherwise (SQLite has no
        prepared transactions). Returns ``database``.
        """
        from .twophase import check_backends

        if name == MAIN or name in self.databases or self.parent is not None:
            raise DatabaseConfigError(
                f"cannot add the database {name!r}: "
                + ("the name is taken" if self.parent is None else "add it to the main database")
            )
        check_backends(self.engine, name, database.engine)
        # one maintenance switch for every database: db.maintenance.on() covers them all
        database.maintenance = self.maintenance
        database.session_factory.kw["info"][MAINTENANCE] = self.maintenance
        database.name = name
        database.parent = self
        self.databases[name] = database
        return database

    def has_database(self, name: str) -> bool:
        """Is a database called ``name`` configured (``"main"`` always is)?"""
        root = self.parent or self
        return name == MAIN or name in root.databases

    def database(self, name: str | None = None) -> Database:
        """The database called ``name`` (None or ``"main"``: the main one); ``NoScope`` if none."""
        root = self.parent or self
        if name is None or name == MAIN:
            return root
        try:
            return root.databases[name]
        except KeyError:
            known = ", ".join([MAIN, *root.databases]) or MAIN
            raise NoScope(
                f"no database named {name!r} is configured (configured: {known}); "
                "see myapp.databases in docs/multiple-databases.md"
            ) from None

    def _factory_for(self, bind: Engine) -> sessionmaker[Session]:
        return make_session_factory(
            bind,
            expire_on_commit=self.expire_on_commit,
            maintenance=self.maintenance,
            database=self,
        )

    def add_replica(self, url: str, **options: Any) -> Replica:
        """Add a replica read through a read engine on ``url`` (``create_engine`` options)."""
        from .readpath import create_read_engine
        from .settings import normalise_url

        url = normalise_url(url)
        if make_url_backend(url) == "postgresql":
            options.setdefault("connect_args", {}).setdefault("connect_timeout", 3)
        engine = create_read_engine(url, **options)
        replica = Replica(url, engine, self._factory_for(engine))
        self.replicas.replicas.append(replica)
        listen_once(self.session_factory, "after_commit", _read_your_writes)
        if self.replica_engine is None:  # the first replica, as before several were possible
            self.replica_engine = engine
            self.replica_factory = replica.factory
        return replica

    @property
    def read_engine(self) -> Engine | None:
        """The primary's read engine (created on first use), or None if it has none."""
        if self._read_engine is None and self._read_engine_wanted:
            with self._lock:
                if self._read_engine is None and self._read_engine_wanted:
                    self._read_engine = self._make_read_engine()
                    self._read_engine_wanted = self._read_engine is not None
        return self._read_engine

    def engines(self) -> list[Engine]:
        """Every engine of this database: the primary, its read engine, the replicas'."""
        engines = [self.engine]
        read = self.read_engine
        if read is not None and read is not self.engine:
            engines.append(read)
        engines.extend(r.engine for r in self.replicas.replicas if r.engine not in engines)
        return engines

    def _make_read_engine(self) -> Engine | None:
        from .readpath import create_read_engine

        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return None
        if url.get_backend_name() not in ("sqlite", "postgresql", "mysql", "mariadb"):
            return None
        pool = self.engine.pool
        options: dict[str, Any] = {}
        size = getattr(pool, "size", None)
        if callable(size) and url.get_backend_name() != "sqlite":
            options["pool_size"] = size()
            options["max_overflow"] = getattr(pool, "_max_overflow", 10)
        recycle = getattr(pool, "_recycle", -1)
        if recycle and recycle > 0:
            options["pool_recycle"] = recycle
        return create_read_engine(url.render_as_string(hide_password=False), **options)

    def read_factory(
        self, *, primary: bool = False
    ) -> tuple[Callable[[], Session], Replica | None]:
        """The session factory a read uses, and the replica it reads from (None: the primary).

        ``primary=True`` (read-your-writes): never a replica. When the session
        factory is bound elsewhere than the primary engine (a test's
        connection), reads use that factory: they must see the test's data.
        """
        factory = self.session_factory
        if factory.kw.get("bind") is not self.engine:
            return factory, None
        if not primary and self.replicas:
            replica = self.replicas.choose()
            if replica is not None:
                return replica.factory, replica
        if self._read_factory is None:
            engine = self.read_engine
            if engine is None:
                return factory, None
            with self._lock:
                if self._read_factory is None:
                    self._read_factory = self._factory_for(engine)
        return self._read_factory, None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Database:
        """Build from a URL (``sqlite:///var/app.sqlite``, ``postgresql://...``).

        ``options`` are :class:`Database`'s keyword arguments (``replica_url``
        gives a replica's URL, ``replica_urls`` several; ``databases`` maps
        names to the URLs of named databases, see :meth:`add_database`).
        """
        from .engine import create_engine_for
        from .settings import normalise_url

        urls = list(options.pop("replica_urls", None) or ())
        replica_url = options.pop("replica_url", None)
        named = dict(options.pop("databases", None) or {})
        if replica_url:
            urls.insert(0, replica_url)
        database = cls(create_engine_for(normalise_url(url)), **options)
        for replica in urls:
            database.add_replica(replica)
        for name, named_url in named.items():
            other = cls(create_engine_for(normalise_url(named_url)), **options)
            database.add_database(name, other)
        return database

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Database:
        """Build from Pyramid settings (``sqlalchemy.*``, ``myapp.*``; see settings.py)."""
        from .engine import create_engine_for, engine_from_settings
        from .settings import (
            asbool,
            database_names,
            engine_options,
            named_database_url,
            replica_options,
            replica_urls,
        )

        database = cls(
            engine_from_settings(settings),
            replicas=ReplicaSet(**replica_options(settings)),
            expire_on_commit=asbool(settings.get("sqlalchemy.expire_on_commit", True)),
            timezone=settings.get("myapp.timezone", "Europe/Paris"),
            read_only=asbool(settings.get("myapp.read_only", False)),
        )
        options = engine_options(settings)
        options.pop("echo", None)
        for url in replica_urls(settings):
            kept = {k: v for k, v in options.items() if make_url_backend(url) != "sqlite"}
            database.add_replica(url, **kept)
        for name in database_names(settings):  # myapp.databases: docs/multiple-databases.md
            named_options = engine_options(settings, prefix=f"database.{name}.")
            other = cls(
                create_engine_for(named_database_url(settings, name), **named_options),
                expire_on_commit=database.expire_on_commit,
                timezone=settings.get("myapp.timezone", "Europe/Paris"),
                read_only=asbool(settings.get("myapp.read_only", False)),
            )
            database.add_database(name, other)
        return database

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

    def dispose(self, close: bool = True) -> None:
        """Drop every pool: the primary's, the read engine's, the replicas', the named databases'.

        At shutdown (``close=True``: the pooled connections are closed), or in a
        worker right after a fork (``close=False``: the parent's connections are
        left to the parent, and the worker opens its own).
        """
        self.engine.dispose(close=close)
        if self._read_engine is not None:
            self._read_engine.dispose(close=close)
        self.replicas.dispose(close=close)
        for named in self.databases.values():
            named.dispose(close=close)


def _read_your_writes(session: Session) -> None:
    """After a commit on the primary, the scope's outermost read-only units read from it too."""
    scope = _current.get()
    if scope is not None and not scope.primary_reads:
        scope.primary_reads = True


def make_url_backend(url: str) -> str:
    """``postgresql``, ``sqlite``, ...: the backend of ``url``."""
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()
