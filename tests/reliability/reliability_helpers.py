"""Helpers for the reliability tests (fixtures in conftest.py).

* :class:`Live`: a real engine and :class:`~myapp.db.Database` on the run's
  database, so commits are real and visible to other connections; the rows a
  test writes carry its token and are deleted at the end.
* :func:`run_threads`: run callables on real threads at once, re-raising the
  first error.
* :class:`WriteRecorder`: every statement an engine sends to the database.
* :class:`LoopbackProxy`: a TCP proxy on a free loopback port in front of
  PostgreSQL, to make the database vanish and come back.
* the route table (:func:`route_table`, :func:`api_operations`) and a valid
  body per API operation (:data:`VALID_BODIES`), so that tests cover every
  route, new ones included.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import webtest
from pyramid.config import Configurator
from sqlalchemy import delete, event, func, select
from sqlalchemy.engine import Engine

from myapp.db import Database
from myapp.models import Booking, Company, Driver, Invoice, Item
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import new_token_and_hash
from myapp.testing import CommittedRows, apps
from myapp.testing.factories import VALID_API_BODIES
from myapp.testing.server import free_port

ROOT = Path(__file__).resolve().parents[2]
WRITE_SQL = re.compile(r"^\s*(insert|update|delete|merge|truncate)\b", re.IGNORECASE)
#: every string that must never appear in an error body under production settings
LEAKS = (
    "Traceback",
    'File "',
    "SELECT",
    "INSERT",
    "UPDATE ",
    "DELETE ",
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "/work/",
    "site-packages",
    ".py",
)


def build_app(
    database: Database, configure: Callable[[Configurator], None] | None = None, **settings: Any
) -> Any:
    """:func:`myapp.testing.apps.build_app` with this suite's default settings."""
    defaults: dict[str, Any] = {
        "myapp.expose_errors": "false",
        "myapp.session_secret": "reliability-tests-session-secret-0123456789",
    }
    return apps.build_app(database, configure, **{**defaults, **settings})


add_view = apps.add_view


def client(app: Any) -> webtest.TestApp:
    """A WebTest client calling ``app`` on the calling thread (one per thread)."""
    return webtest.TestApp(app, extra_environ={"HTTP_HOST": "example.com"})


class Live(CommittedRows):
    """A real engine and Database on the run's database; what it writes is tagged ``token``."""

    token_prefix = "r"

    def name(self, suffix: Any = "") -> str:
        return self.tag(suffix)

    def app(self, configure: Callable[[Configurator], None] | None = None, **settings: Any) -> Any:
        return build_app(self.database, configure, **settings)

    # -- items -----------------------------------------------------------------
    def insert_item(self, suffix: Any = "") -> int:
        with self.engine.begin() as conn:
            return conn.scalar(
                Item.__table__.insert().values(name=self.name(suffix)).returning(Item.id)
            )

    def item_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.scalars(select(Item.name).where(Item.name.like(self.token + "%"))))

    # -- a company of the test -------------------------------------------------
    def company(self, suffix: str = "co") -> tuple[int, str]:
        """Commit a company named with the token; return ``(id, its plaintext token)``."""
        token, token_hash = new_token_and_hash()
        with self.engine.begin() as conn:
            company_id = conn.scalar(
                Company.__table__.insert()
                .values(name=self.name(suffix), api_token_hash=token_hash)
                .returning(Company.id)
            )
        return company_id, token

    def company_ids(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(Company.id).where(Company.name.like(self.token + "%"))))

    def counts(self) -> dict[str, int]:
        """Rows of this test's companies (and items) per table, read on a fresh connection."""
        ids = self.company_ids()
        with self.engine.connect() as conn:
            result = {
                "items": conn.scalar(
                    select(func.count()).select_from(Item).where(Item.name.like(self.token + "%"))
                ),
                "companies": len(ids),
            }
            for label, model in (
                ("drivers", Driver),
                ("bookings", Booking),
                ("invoices", Invoice),
                ("dispatch_runs", DispatchRun),
            ):
                result[label] = conn.scalar(
                    select(func.count()).select_from(model).where(model.company_id.in_(ids))
                )
        return result

    def delete_rows(self, conn: Any) -> None:
        ids = list(conn.scalars(select(Company.id).where(self.tagged(Company.name))))
        for model in (Invoice, DispatchRun, Booking, Driver):
            conn.execute(delete(model).where(model.company_id.in_(ids)))
        conn.execute(delete(Company).where(Company.id.in_(ids)))
        conn.execute(delete(Item).where(self.tagged(Item.name)))


def run_threads(*targets: Callable[[], Any], timeout: float = 60) -> list[Any]:
    """Run ``targets`` on real threads at once; return their results, re-raise the first error."""
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []

    def runner(index: int, target: Callable[[], Any]) -> None:
        try:
            results[index] = target()
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=runner, args=(i, t), name=f"reliability-{i}")
        for i, t in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]
    return results


class WriteRecorder:
    """Records every statement ``engine`` sends to the database (``before_cursor_execute``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        self._lock = threading.Lock()

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with self._lock:
            self.statements.append(statement)

    @contextmanager
    def recording(self) -> Iterator[WriteRecorder]:
        event.listen(self.engine, "before_cursor_execute", self._record)
        try:
            yield self
        finally:
            event.remove(self.engine, "before_cursor_execute", self._record)

    def writes(self) -> list[str]:
        return [s for s in self.statements if WRITE_SQL.match(s)]

    def clear(self) -> None:
        with self._lock:
            self.statements.clear()


class LoopbackProxy:
    """A TCP proxy on ``127.0.0.1:port`` to ``target``; ``stop()`` drops every connection.

    ``start()`` again listens on the same port: the database "comes back".
    One thread pumps every connection (selectors); everything stays on loopback.
    """

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        assert target[0].startswith("127."), "loopback only"
        self.target = target
        self.port = port or free_port()
        self.accepted = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listener: socket.socket | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        assert self._thread is None
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loopback-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the proxy thread is stuck"
        self._thread = None

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._listener is not None
        selector.register(self._listener, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    if sock is self._listener:
                        try:
                            downstream, _addr = self._listener.accept()
                        except BlockingIOError:
                            continue
                        self.accepted += 1
                        try:
                            upstream = socket.create_connection(self.target, timeout=5)
                        except OSError:
                            downstream.close()
                            continue
                        for s in (downstream, upstream):
                            s.setblocking(False)
                        peers[downstream], peers[upstream] = upstream, downstream
                        selector.register(downstream, selectors.EVENT_READ, None)
                        selector.register(upstream, selectors.EVENT_READ, None)
                        continue
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    other = peers.get(sock)
                    if data and other is not None:
                        try:
                            other.setblocking(True)
                            other.sendall(data)
                            other.setblocking(False)
                            continue
                        except OSError:
                            pass
                    for s in (sock, other):
                        if s is not None and s in peers:
                            selector.unregister(s)
                            peers.pop(s, None)
                            s.close()
        finally:
            for s in list(peers):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            selector.close()
            self._listener.close()
            self._listener = None


# ---------------------------------------------------------------------------
# the application's route table

#: the documentation routes: the only public ones under /api
DOC_ROUTES = {"apidocs.spec", "apidocs.explorer", "apidocs.oauth2_redirect"}

VALID_BODIES = VALID_API_BODIES


def route_table(app: Any) -> list[tuple[str, str, str, str]]:
    """``(route name, pattern, method, permission)`` of every view of every route of ``app``."""
    patterns = {r.name: r.pattern for r in app.routes_mapper.get_routes()}
    table = set()
    for item in app.registry.introspector.get_category("views"):
        view = item["introspectable"]
        name = view["route_name"]
        if name is None:
            continue
        permissions = [r["value"] for r in item["related"] if r.category_name == "permissions"]
        methods = view["request_methods"] or ("*",)
        if isinstance(methods, str):
            methods = (methods,)
        for method in methods:
            table.add((name, patterns[name], method, str(permissions[0] if permissions else "")))
    return sorted(table)


def api_operations(app: Any) -> list[tuple[str, str, str, str]]:
    """The protected API operations of ``app``'s route table."""
    return [
        row for row in route_table(app) if row[1].startswith("/api/") and row[0] not in DOC_ROUTES
    ]


def fill(pattern: str, **ids: Any) -> str:
    """``pattern`` with its ``{name}`` placeholders replaced by ``ids``."""
    return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), pattern)


def seed_company(live: Live, drivers: int = 1, bookings: int = 3) -> dict[str, Any]:
    """Commit a company of the test with drivers and pending bookings; return ids and token."""
    from datetime import UTC, datetime, timedelta

    company_id, token = live.company()
    with live.database.scope() as session:
        driver_rows = [Driver(company_id=company_id, name=f"d{i}") for i in range(drivers)]
        booking_rows = [
            Booking(
                company_id=company_id,
                pickup_time=datetime(2041, 1, 1, tzinfo=UTC) + timedelta(hours=i),
                pickup_address="A",
                dropoff_address="B",
                status="pending",
            )
            for i in range(bookings)
        ]
        session.add_all(driver_rows + booking_rows)
        session.commit()
        return {
            "company_id": company_id,
            "token": token,
            "headers": {"Authorization": f"Bearer {token}"},
            "driver_ids": [d.id for d in driver_rows],
            "booking_ids": [b.id for b in booking_rows],
        }
