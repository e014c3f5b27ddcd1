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
  transaction left open (a failed commit, a before-commit hook that raised)
  and closes the session, so no connection stays checked out and the next
  request on this thread starts clean.
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
                if current_transaction(tm) is not None:
                    log.warning("request %s left its transaction open; aborting it", request.path)
                    tm.abort()
            finally:
                scope.close()

    return db_guard_tween


def tag_retryable(request: Request, exc: BaseException) -> bool:
    """Mark ``exc`` retryable for pyramid_retry if a new attempt may succeed.

    An exception view that renders an error response hides the exception
    from pyramid_tm's own tagging when the error happens at commit time;
    error views call this first. Returns True if pyramid_retry will retry.
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
