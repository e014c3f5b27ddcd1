"""One structured log record (and metrics) per unit of work: request, command or business unit.

Observed from outside the database layer:

* transactions: a ``transaction`` synchronizer registered on the thread's
  manager for the duration of the unit (``afterCompletion(txn)``: committed or
  aborted), so every commit and rollback inside it is counted;
* statements and database time: SQLAlchemy ``before/after_cursor_execute``
  events on the engine, credited to every unit active in the current context;
* requests: a tween outermost in the chain (``request id``, latency, outcome,
  status), and pyramid_retry's retries (an attempt that will be replayed is
  not logged; the final attempt says how many retries there were).

The record goes to the ``myapp.units`` logger at INFO::

    request GET /items route=items status=200 outcome=commit transaction=commit
    retries=0 duration_ms=3.1 statements=2 db_ms=0.8

with the same fields as ``extra=`` (``kind``, ``unit``, ``outcome``,
``transaction``, ``duration_ms``, ``statements``, ``db_ms``, ``retries``,
``commits``, ``rollbacks``, and for requests ``method``, ``path``, ``route``,
``status``), so :class:`~myapp.observability.logs.JsonFormatter` writes them
as JSON fields.

Outcomes: ``commit`` (the last transaction committed), ``rollback`` (it was
rolled back, or the unit failed), ``conflict`` (a 409, or a transient
database error such as a serialization failure), ``refused`` (any other 4xx
answer, or a command's own refusal), ``none`` (no transaction ran).
"""

from __future__ import annotations

import contextvars
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from sqlalchemy import event
from sqlalchemy.engine import Engine
from transaction.interfaces import TransientError

from myapp.db.compat import Status

from . import metrics
from .context import HEADER, accept_request_id, current_request_id, request_id_scope

log = logging.getLogger("myapp.units")

_active: contextvars.ContextVar[tuple[UnitStats, ...]] = contextvars.ContextVar(
    "myapp_active_units", default=()
)
_T0 = "myapp_observability_t0"
_instrumented: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass
class UnitStats:
    """What one unit of work did: statements, database time, transactions ended."""

    kind: str
    name: str
    started: float = field(default_factory=time.perf_counter)
    statements: int = 0
    db_seconds: float = 0.0
    commits: int = 0
    rollbacks: int = 0
    last_transaction: str = "none"

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class _Synchronizer:
    """A ``transaction`` synchronizer counting the transactions that end inside a unit."""

    def __init__(self, stats: UnitStats) -> None:
        self.stats = stats

    def beforeCompletion(self, txn: Any) -> None:
        pass

    def afterCompletion(self, txn: Any) -> None:
        if txn.status == Status.COMMITTED:
            self.stats.commits += 1
            self.stats.last_transaction = "commit"
            metrics.TRANSACTIONS.labels("commit").inc()
        else:
            self.stats.rollbacks += 1
            self.stats.last_transaction = "rollback"
            metrics.TRANSACTIONS.labels("rollback").inc()

    def newTransaction(self, txn: Any) -> None:
        pass


def _before_cursor_execute(conn: Any, cursor: Any, statement: Any, *args: Any) -> None:
    conn.info.setdefault(_T0, []).append(time.perf_counter())


def _after_cursor_execute(conn: Any, cursor: Any, statement: Any, *args: Any) -> None:
    starts = conn.info.get(_T0)
    if not starts:
        return
    elapsed = time.perf_counter() - starts.pop()
    for stats in _active.get():
        stats.statements += 1
        stats.db_seconds += elapsed


def _on_pool_event(dbapi_connection: Any, connection_record: Any, *args: Any) -> None:
    pool = getattr(connection_record, "_pool", None)
    if pool is not None:
        metrics.record_pool(pool)


def instrument_engine(engine: Engine) -> None:
    """Count statements, database time and pool use on ``engine`` (idempotent)."""
    if engine in _instrumented:
        return
    event.listen(engine, "before_cursor_execute", _before_cursor_execute)
    event.listen(engine, "after_cursor_execute", _after_cursor_execute)
    event.listen(engine, "handle_error", _on_error)
    for name in ("checkout", "checkin"):
        event.listen(engine.pool, name, _on_pool_event)
    _instrumented.add(engine)


def _on_error(context: Any) -> None:
    connection = context.connection
    if connection is not None:
        starts = connection.info.get(_T0)
        if starts:
            starts.pop()


@contextmanager
def _observing(kind: str, name: str) -> Iterator[UnitStats]:
    from myapp.db import get_tm

    stats = UnitStats(kind, name)
    synchronizer = _Synchronizer(stats)
    tm = get_tm()
    tm.registerSynch(synchronizer)
    token = _active.set((*_active.get(), stats))
    try:
        yield stats
    finally:
        _active.reset(token)
        tm.unregisterSynch(synchronizer)


def _emit(stats: UnitStats, outcome: str, message: str, **fields: Any) -> None:
    seconds = stats.seconds
    metrics.record_unit(stats.kind, outcome, seconds, stats.statements, stats.db_seconds)
    data = {
        "kind": stats.kind,
        "unit": stats.name,
        "outcome": outcome,
        "transaction": stats.last_transaction,
        "commits": stats.commits,
        "rollbacks": stats.rollbacks,
        "duration_ms": round(seconds * 1000, 2),
        "statements": stats.statements,
        "db_ms": round(stats.db_seconds * 1000, 2),
        **fields,
    }
    if log.isEnabledFor(logging.INFO):
        shown = " ".join(
            f"{key}={data[key]}"
            for key in (
                *(key for key in fields if key not in ("method", "path")),
                "outcome",
                "transaction",
                "duration_ms",
                "statements",
                "db_ms",
            )
        )
        log.info("%s %s", message, shown, extra=data)


def _is_conflict(exc: BaseException) -> bool:
    from myapp.db import is_transient

    return isinstance(exc, TransientError) or is_transient(exc)


def _outcome_of_error(exc: BaseException) -> str:
    # an error class may name its outcome (myapp.commands.errors.CommandError: "refused")
    named = getattr(exc, "unit_outcome", None)
    if isinstance(named, str):
        return named
    if _is_conflict(exc):
        return "conflict"
    return "rollback"


@contextmanager
def observe_unit(name: str, kind: str = "business") -> Iterator[UnitStats]:
    """Observe a business unit of work (``with observe_unit("dispatch"):``).

    Logs one record when the block ends: ``commit``/``rollback`` from the
    transactions that ended inside it, ``conflict`` for a transient error,
    ``rollback`` for another error (which propagates).
    """
    with _observing(kind, name) as stats:
        try:
            yield stats
        except BaseException as exc:
            _emit(stats, _outcome_of_error(exc), f"{kind} {name}", error=type(exc).__name__)
            raise
        _emit(stats, stats.last_transaction, f"{kind} {name}")


@contextmanager
def observe_command(name: str, engine: Engine | None = None) -> Iterator[UnitStats]:
    """Observe a management command: one record (``command seed outcome=commit ...``) at its end.

    A request id is made for the command, so its log lines can be told apart too.
    """
    if engine is not None:
        instrument_engine(engine)
    with request_id_scope(accept_request_id(None)), observe_unit(name, kind="command") as stats:
        yield stats


def _will_retry(request: Request, exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from pyramid_retry import is_error_retryable

    return bool(is_error_retryable(request, exc))


RETRIES_KEY = "myapp.observability.retries"
REQUEST_ID_KEY = "myapp.request_id"


def request_path(request: Request) -> str:
    """The request's path for logs; an undecodable one (invalid UTF-8) shown with U+FFFD.

    The input guard answers such requests with a 400; this tween, outermost, must
    not fail on them first.
    """
    try:
        return request.path
    except UnicodeDecodeError:
        raw = request.environ.get("SCRIPT_NAME", "") + request.environ.get("PATH_INFO", "")
        return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def request_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Any:
    """The outermost tween: request id, one record per request, request metrics."""
    db = registry.get("db")
    if db is not None:  # reads (GET, db_read_only) run on the read engine or a replica
        for engine in db.engines():
            instrument_engine(engine)

    def observability_tween(request: Request) -> Response:
        environ = request.environ
        request_id = environ.get(REQUEST_ID_KEY)
        if request_id is None:
            request_id = accept_request_id(request.headers.get(HEADER))
            environ[REQUEST_ID_KEY] = request_id
        path = request_path(request)
        with request_id_scope(request_id), _observing("request", path) as stats:
            try:
                response = handler(request)
            except BaseException as exc:
                if _will_retry(request, exc):
                    _count_retry(environ)
                else:
                    _finish(request, stats, 500, error=exc)
                raise
            if _will_retry(request, getattr(request, "exception", None)):
                _count_retry(environ)
            else:
                _finish(request, stats, response.status_int)
            response.headers[HEADER] = request_id
            return response

    return observability_tween


def _count_retry(environ: dict[str, Any]) -> None:
    environ[RETRIES_KEY] = environ.get(RETRIES_KEY, 0) + 1
    metrics.RETRIES.inc()


def _finish(
    request: Request, stats: UnitStats, status: int, error: BaseException | None = None
) -> None:
    if status == 409 or (error is not None and _is_conflict(error)):
        outcome = "conflict"
    elif 400 <= status < 500 and stats.last_transaction != "commit":
        outcome = "refused"
    elif error is not None or status >= 500:
        outcome = "rollback"
    else:
        outcome = stats.last_transaction
    route = request.matched_route.name if getattr(request, "matched_route", None) else None
    metrics.record_request(request.method, route, status, stats.seconds)
    fields: dict[str, Any] = {
        "method": request.method,
        "path": stats.name,
        "route": route or metrics.UNMATCHED,
        "status": status,
        "retries": request.environ.get(RETRIES_KEY, 0),
    }
    if error is not None:
        fields["error"] = type(error).__name__
    _emit(stats, outcome, f"request {request.method} {stats.name}", **fields)


__all__ = [
    "UnitStats",
    "current_request_id",
    "instrument_engine",
    "observe_command",
    "observe_unit",
    "request_tween_factory",
]
