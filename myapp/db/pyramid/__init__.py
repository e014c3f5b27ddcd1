"""Pyramid wiring: ``config.include("myapp.db.pyramid")``.

* one :class:`~myapp.db.Database` per application, built from the settings
  (or passed in as ``settings["myapp.database"]``, as the test toolkit does);
* pyramid_tm with the **thread-local** ``transaction.manager`` in explicit
  mode (``tm.manager_hook``), so that module-level ``transaction.savepoint()``
  and ``transaction.get()`` act on the request's transaction, and zope's
  bridge is registered once on the session factory instead of per request;
* ``tm.commit_veto = pyramid_tm.default_commit_veto``: a view *returning* a
  4xx/5xx aborts, as does one raising;
* pyramid_retry (``retry.attempts``);
* ``request.dbsession`` (created on first use) and a request scope, so that
  business code finds the session with ``current_session()``;
* a guard tween around pyramid_tm that, whatever happened, aborts a
  transaction left open and closes the session, so no connection stays
  checked out and the next request on this thread starts clean. pyramid_tm
  2.6 leaves the transaction open when a before-commit hook raises and when
  the commit fails (it renders the error with the exception view from its
  commit handler and never aborts). On SQLite it also begins the
  transactions of POST/PUT/PATCH/DELETE requests with ``BEGIN IMMEDIATE``
  (:func:`~myapp.db.engine.sqlite_write_intent`), so concurrent writers queue
  on the busy timeout instead of failing with "database is locked";
* request properties (``request.dbsession``, ``request.tm``, and those other
  packages add) built into one request class at startup
  (:func:`bake_request_properties`) instead of a new class per request;
* :func:`tag_retryable` for catch-all error views. With a commit veto,
  pyramid_tm aborts an error response *before* it would tag the exception
  the exception view rendered, and it never tags errors raised by the
  commit: an error view that renders a retryable database error (a
  serialization failure, a deadlock) must tag it itself, or pyramid_retry
  will not replay the request (``tests/db/stack/test_retry.py`` proves both).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import transaction
from pyramid.config import Configurator
from pyramid.events import ApplicationCreated
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid_retry import is_last_attempt, mark_error_retryable

from ..compat import Status
from ..engine import sqlite_write_intent
from ..manager import current_transaction, get_tm
from ..retry import is_disconnect, is_transient
from ..scope import Database, Scope

log = logging.getLogger("myapp.db")

SCOPE_ATTR = "_myapp_db_scope"
#: requests that should not write: their SQLite transactions begin deferred
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def manager_hook(request: Request) -> transaction.ThreadTransactionManager:
    """``tm.manager_hook``: the thread-local manager, explicit mode."""
    return get_tm()


def _dbsession(request: Request) -> Any:
    scope: Scope | None = getattr(request, SCOPE_ATTR, None)
    if scope is None:  # a request outside the tween chain (pyramid.paster.bootstrap)
        scope = Scope(request.registry["db"].session_factory, database=request.registry["db"])
        setattr(request, SCOPE_ATTR, scope)
        request.add_finished_callback(lambda r: scope.close())
    return scope.session


#: the cookie that sends a client that wrote recently to the primary (read-your-writes)
WROTE_COOKIE = "myapp_wrote"
REPLICA_ATTR = "_myapp_db_replica"


def _wrote_recently(request: Request, db: Database) -> bool:
    """Did this client write less than ``read_your_writes`` seconds ago (the cookie says until)?"""
    if not db.replicas:
        return False
    value = request.cookies.get(WROTE_COOKIE)
    if not value:
        return False
    try:
        return float(value) > time.time()
    except ValueError:
        return False


def _remember_write(request: Request, response: Response, window: float) -> None:
    """After a successful unsafe request, the client reads from the primary for ``window`` s."""
    if response.status_code >= 400:
        return
    until = time.time() + window
    response.set_cookie(
        WROTE_COOKIE,
        f"{until:.3f}",
        max_age=int(window) + 1,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.scheme == "https",
    )


def guard_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Any:
    """The guard tween (over pyramid_tm): a request scope, and nothing left open after it.

    Before the request, a transaction left open on this thread by someone
    else is aborted (pyramid_tm would otherwise fail with AlreadyInTransaction).
    After it, whatever happened, a transaction still open is aborted and the
    session closed: its connection goes back to the pool. Requests other than
    GET/HEAD/OPTIONS run with :func:`~myapp.db.engine.sqlite_write_intent`.
    """
    db: Database = registry["db"]

    def db_guard_tween(request: Request) -> Response:
        manager = get_tm().manager
        stale = manager.current
        if stale is not None:  # never start a request inside someone else's transaction
            log.error(
                "a transaction was left open on this thread before %s; aborting it", request.path
            )
            manager.abort_all()
        safe = request.method in SAFE_METHODS
        if safe:
            primary = _wrote_recently(request, db)
            factory, replica = db.read_factory(primary=primary)
            scope = Scope(factory, database=db, autobegin=False, kind="request", read_only=True)
            scope.primary_reads = primary
            if replica is not None:
                setattr(request, REPLICA_ATTR, replica)
        else:
            scope = Scope(db.session_factory, database=db, autobegin=False, kind="request")
            scope.primary_reads = True
        setattr(request, SCOPE_ATTR, scope)
        intent = sqlite_write_intent() if not safe else nullcontext()
        try:
            with scope.activate(), intent:
                response = handler(request)
            if not safe and db.replicas and db.replicas.read_your_writes > 0:
                _remember_write(request, response, db.replicas.read_your_writes)
            return response
        finally:
            try:
                leftover = manager.current
                if leftover is not None:
                    # pyramid_tm does not abort after a failed commit or a
                    # before-commit hook that raised (the error was rendered).
                    log.warning(
                        "request %s left its transaction open (%s); aborting it",
                        request.path,
                        leftover.status,
                    )
                    manager.abort_all()
            finally:
                scope.close()

    return db_guard_tween


_MISSING = object()


def bake_request_properties(event: ApplicationCreated) -> None:
    """Give the router one request class with every request property on it, built once.

    Pyramid applies the properties registered with ``add_request_method(...,
    property=True/reify=True)`` (``dbsession`` and ``db`` here, ``tm`` from
    pyramid_tm, ``openapi_validated`` from pyramid_openapi3) by creating a new
    subclass of the request class for every request (``InstancePropertyHelper``):
    about 5% of a small request (``docs/benchmarks.md``). Their definitions are
    fixed once the application is created, so this subscriber puts them on one
    subclass of the request factory, made here, and leaves the router only the
    request *methods* to apply. The registry's extensions are left as they are:
    requests made outside the router (``pyramid.scripting.prepare``,
    ``apply_request_extensions`` in tests) get the properties the usual way.
    Nothing happens when the request factory is not a class or there is nothing
    to bake.
    """
    router = event.app
    extensions = getattr(router, "request_extensions", None)
    factory = getattr(router, "request_factory", None)
    descriptors = getattr(extensions, "descriptors", None)
    if not descriptors or not isinstance(factory, type):
        return
    attrs: dict[str, Any] = dict(descriptors)
    attrs.setdefault("__module__", factory.__module__)
    baked = type(factory.__name__, (factory,), attrs)
    # as Pyramid does for its per-request classes: behave exactly like the parent
    # class in interface lookups (and do not grow zope.interface's caches)
    for name in ("__implemented__", "__provides__"):
        value = getattr(factory, name, _MISSING)
        if value is not _MISSING:
            setattr(baked, name, value)
    slim = type(extensions)()
    slim.methods = dict(extensions.methods)
    router.request_factory = baked
    router.request_extensions = slim


def tag_retryable(request: Request, exc: BaseException) -> bool:
    """Mark ``exc`` retryable for pyramid_retry if a new attempt may succeed.

    Catch-all error views call this first: once a view renders the error,
    pyramid_tm does not tag it (the commit veto aborts first; errors raised
    by the commit are never tagged). Transient errors (:func:`is_transient`)
    and those a joined data manager deems retryable are marked, and so is a
    lost connection (:func:`is_disconnect`) while the request's transaction
    is still active: the server rolled it back and the new attempt gets a new
    connection. A connection lost once the commit began is not: the COMMIT
    may have been applied, and replaying could write twice (the client gets a
    503). A safe-method request (GET, HEAD, OPTIONS) writes nothing, so a lost
    connection is always retryable there, whatever the transaction's state, as
    is any error of the replica it read from once that replica is marked down
    (the new attempt reads from another replica or the primary). Returns True
    if pyramid_retry will replay the request (so the response is discarded),
    False on the last attempt or for other errors.
    """
    if not isinstance(exc, Exception):
        return False
    txn = current_transaction()
    safe = request.method in SAFE_METHODS
    retryable = is_transient(exc) or (
        is_disconnect(exc) and (safe or (txn is not None and txn.status == Status.ACTIVE))
    )
    if not retryable and safe:  # the replica this read used failed: read elsewhere
        replica = getattr(request, REPLICA_ATTR, None)
        retryable = replica is not None and replica.state.state == "down"
    if not retryable and txn is not None:
        try:
            retryable = bool(txn.isRetryableError(exc))
        except Exception:  # a failed transaction may not answer
            retryable = False
    if retryable:
        mark_error_retryable(exc)
    return retryable and not is_last_attempt(request)


def includeme(config: Configurator) -> None:
    """Wire the database, pyramid_tm, pyramid_retry and the guard into ``config``.

    Settings set explicitly win over these defaults: ``tm.manager_hook``,
    ``tm.commit_veto``, ``retry.attempts`` (3).
    """
    settings = config.get_settings()
    settings.setdefault("tm.manager_hook", manager_hook)
    settings.setdefault("tm.commit_veto", "pyramid_tm.default_commit_veto")
    settings.setdefault("tm.annotate_user", "false")
    settings.setdefault("retry.attempts", 3)
    config.include("pyramid_tm")
    config.include("pyramid_retry")
    config.include("myapp.db.pyramid.durable")  # add_durable_route(): outside pyramid_tm

    db = settings.get("myapp.database")
    if not isinstance(db, Database):
        db = Database.from_settings(settings)
    config.registry["db"] = db
    config.registry["dbsession_factory"] = db.session_factory
    config.add_request_method(_dbsession, "dbsession", reify=True)
    config.add_request_method(lambda request: request.registry["db"], "db", reify=True)
    config.add_tween("myapp.db.pyramid.guard_tween_factory", over="pyramid_tm.tm_tween_factory")
    config.add_subscriber(bake_request_properties, ApplicationCreated)
