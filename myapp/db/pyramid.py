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
  commit handler and never aborts);
* :func:`tag_retryable` for catch-all error views. With a commit veto,
  pyramid_tm aborts an error response *before* it would tag the exception
  the exception view rendered, and it never tags errors raised by the
  commit: an error view that renders a retryable database error (a
  serialization failure, a deadlock) must tag it itself, or pyramid_retry
  will not replay the request (``tests/stack/test_retry.py`` proves both).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import transaction
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid_retry import is_last_attempt, mark_error_retryable

from .bridge import current_transaction, get_tm
from .scope import Database, Scope
from .units import is_transient

log = logging.getLogger("myapp.db")

SCOPE_ATTR = "_myapp_db_scope"


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


def guard_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Any:
    """The guard tween (over pyramid_tm): a request scope, and nothing left open after it.

    Before the request, a transaction left open on this thread by someone
    else is aborted (pyramid_tm would otherwise fail with AlreadyInTransaction).
    After it, whatever happened, a transaction still open is aborted and the
    session closed: its connection goes back to the pool.
    """
    db: Database = registry["db"]

    def db_guard_tween(request: Request) -> Response:
        tm = get_tm()
        stale = current_transaction(tm)
        if stale is not None:  # never start a request inside someone else's transaction
            log.error(
                "a transaction was left open on this thread before %s; aborting it", request.path
            )
            tm.abort()
        scope = Scope(db.session_factory, database=db, autobegin=False, kind="request")
        setattr(request, SCOPE_ATTR, scope)
        try:
            with scope.activate():
                return handler(request)
        finally:
            try:
                leftover = current_transaction(tm)
                if leftover is not None:
                    # pyramid_tm does not abort after a failed commit or a
                    # before-commit hook that raised (the error was rendered).
                    log.warning(
                        "request %s left its transaction open (%s); aborting it",
                        request.path,
                        leftover.status,
                    )
                    tm.abort()
            finally:
                scope.close()

    return db_guard_tween


def tag_retryable(request: Request, exc: BaseException) -> bool:
    """Mark ``exc`` retryable for pyramid_retry if a new attempt may succeed.

    Catch-all error views call this first: once a view renders the error,
    pyramid_tm does not tag it (the commit veto aborts first; errors raised
    by the commit are never tagged). Transient errors (:func:`is_transient`)
    and those a joined data manager deems retryable are marked. Returns True
    if pyramid_retry will replay the request (so the response is discarded),
    False on the last attempt or for other errors.
    """
    if not isinstance(exc, Exception):
        return False
    txn = current_transaction()
    retryable = is_transient(exc)
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

    db = settings.get("myapp.database")
    if not isinstance(db, Database):
        db = Database.from_settings(settings)
    config.registry["db"] = db
    config.registry["dbsession_factory"] = db.session_factory
    config.add_request_method(_dbsession, "dbsession", reify=True)
    config.add_request_method(lambda request: request.registry["db"], "db", reify=True)
    config.add_tween("myapp.db.pyramid.guard_tween_factory", over="pyramid_tm.tm_tween_factory")
