"""Round trips to PostgreSQL per request, and latency with an added network delay.

    python -m benchmarks.roundtrips --dburl postgresql://127.0.0.1/test
    python -m benchmarks.roundtrips --dburl postgresql://127.0.0.1/test --rtt-ms 0,1 --requests 200

In production the application and PostgreSQL are on different hosts, 0.2-1 ms
apart, and a request's latency is mostly round trips. Loopback benchmarks
hide that. Here every database connection of the application goes through a
TCP proxy (:class:`CountingProxy`, asyncio, on 127.0.0.1) that

- counts round trips exactly: a round trip is counted each time the client
  sends after the server last spoke on that connection (however many TCP
  segments a message takes), per client connection and per *request window*
  (the harness opens a window around each request);
- optionally delays every chunk by half the added round-trip time in each
  direction (``--rtt-ms 1``: 0.5 ms each way), to simulate a network.

The count is exact for clients that wait for each answer before sending again
(SQLAlchemy over psycopg, psycopg outside pipeline mode: every competitor
here). A client in psycopg's pipeline mode may send a flush request after the
server has begun answering without waiting for the rest; that send is
counted too, so pipelined traffic can be over-counted by one (never
under-counted), depending on timing.

The proxy runs in its own process (so its timers do not wait for the GIL of
the application) and shares its counters with the harness through shared
memory. The harness calls each application's WSGI callable in-process,
sequentially (one request at a time, a warm pool of connections), for

myapp-dev   the real application, ``myapp.main`` with the ``[app:main]`` settings of the
            shipped ``development.ini`` (profile ``dev``: pool pre-ping on), URL -> proxy
myapp-prod  the same with ``production.ini`` (profile ``prod``)
flask       seed 004's Flask app with its ``session_scope()`` (:mod:`benchmarks.flask_items`)
bare        a WSGI function over SQLAlchemy Core (:mod:`benchmarks.bare_items`)
minimum     the physical minimum, for reference (:func:`create_minimum_app`): raw psycopg,
            reads in autocommit (1 round trip), the POST's BEGIN + INSERT and UPDATE + COMMIT
            each sent as one multi-statement query (2)

and the requests ``GET /items/1``, ``POST /items`` and ``GET /items/99`` (a
404). Round trips are exact counts (the same for every request of a kind,
or the run says so); latency is the median wall time of the WSGI call,
rounds interleaved across the competitors. ``floor`` is a raw psycopg
``SELECT 1`` through the same proxy: what one round trip costs at each delay.
Results: ``docs/benchmarks/roundtrips.json`` and ``roundtrips.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mmap
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the requests measured (label, method, path)
REQUESTS: tuple[tuple[str, str, str], ...] = (
    ("GET /items/1", "GET", "/items/1"),
    ("POST /items", "POST", "/items"),
    ("GET /items/99 (404)", "GET", "/items/99"),
)
COMPETITORS = ("myapp-dev", "myapp-prod", "flask", "bare", "minimum")
#: the read-path goals (issue 12): round trips per request, and GET latency at 1 ms vs Flask
GOALS = {
    "round_trips": {"GET /items/1": 1, "POST /items": 3, "GET /items/99 (404)": 1},
    "get_latency_at_1ms_vs_flask": 0.4,
}
#: most client connections one proxy tracks one by one (more are still counted in the total)
MAX_TRACKED_CONNECTIONS = 256
#: calls of each request before counting: beyond psycopg's prepare threshold (5 executions)
WARMUP = 8
#: requests of each kind counted (each must take the same number of round trips)
COUNTED = 5
ITEMS = 10  # items seeded: GET /items/1 exists, /items/99 does not


# ---------------------------------------------------------------------------
# the counting proxy


class _Counters:
    """The proxy's counters in a shared memory-mapped file: the proxy writes, the harness reads.

    Layout (native 8-byte fields): round trips in total, client connections
    accepted, the delay each way (seconds, a double the harness writes), then
    the round trips of each of the first :data:`MAX_TRACKED_CONNECTIONS` connections.
    Only the proxy's single thread writes the counters (aligned 8-byte stores).
    """

    _HEAD = 3 * 8
    SIZE = _HEAD + 8 * MAX_TRACKED_CONNECTIONS

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with open(self.path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), self.SIZE)

    @classmethod
    def create(cls, path: str | Path) -> _Counters:
        with open(path, "wb") as f:
            f.write(b"\0" * cls.SIZE)
        return cls(path)

    def close(self) -> None:
        self._map.close()

    def _get(self, offset: int) -> int:
        return struct.unpack_from("q", self._map, offset)[0]

    def _set(self, offset: int, value: int) -> None:
        struct.pack_into("q", self._map, offset, value)

    @property
    def total(self) -> int:
        return self._get(0)

    @property
    def connections(self) -> int:
        return self._get(8)

    @property
    def delay_each_way(self) -> float:
        return struct.unpack_from("d", self._map, 16)[0]

    @delay_each_way.setter
    def delay_each_way(self, seconds: float) -> None:
        struct.pack_into("d", self._map, 16, seconds)

    def per_connection(self) -> list[int]:
        n = min(self.connections, MAX_TRACKED_CONNECTIONS)
        return list(struct.unpack_from(f"{n}q", self._map, self._HEAD))

    def new_connection(self) -> int:
        index = self.connections
        self._set(8, index + 1)
        return index

    def count(self, index: int) -> None:
        # per connection first: a harness reading the total then sees the breakdown too
        if index < MAX_TRACKED_CONNECTIONS:
            offset = self._HEAD + 8 * index
            self._set(offset, self._get(offset) + 1)
        self._set(0, self.total + 1)


@dataclass
class Window:
    """The round trips counted between the start and the end of a request window."""

    label: str
    round_trips: int = 0
    #: client connection number -> round trips on it in this window
    per_connection: dict[int, int] = field(default_factory=dict)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` that counts round trips exactly.

    A round trip is counted when the client sends after the server last spoke
    on that connection (or first sends on it). ``set_rtt(ms)`` adds ``ms / 2``
    of delay to every chunk in each direction. Use as a context manager.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._counters: _Counters | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> CountingProxy:
        """Start the proxy process and wait until it listens."""
        self._dir = tempfile.TemporaryDirectory(prefix="roundtrip-proxy-")
        path = Path(self._dir.name) / "counters"
        self._counters = _Counters.create(path)
        host, port = self.upstream
        code = (
            "import sys; from benchmarks.roundtrips import _proxy_main; _proxy_main(sys.argv[1:])"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, host, str(port), str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the counting proxy did not start: {line!r}")
        self.port = int(line)
        # both processes have the counters mapped: the file is no longer needed (and a
        # harness killed from now on leaves no file behind)
        self._dir.cleanup()
        self._dir = None
        return self

    def close(self) -> None:
        """Stop the proxy process (its connections drop) and remove its counters."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def _shared(self) -> _Counters:
        if self._counters is None:
            raise RuntimeError("the proxy is not started")
        return self._counters

    def set_rtt(self, ms: float) -> None:
        """Add ``ms`` milliseconds to every round trip (half in each direction)."""
        self._shared.delay_each_way = ms / 2000.0

    @property
    def total(self) -> int:
        """Round trips counted since the proxy started, on all connections."""
        return self._shared.total

    @property
    def connections(self) -> int:
        """Client connections accepted since the proxy started."""
        return self._shared.connections

    def per_connection(self) -> list[int]:
        """Round trips of each client connection so far (by accept order)."""
        return self._shared.per_connection()

    @contextmanager
    def window(self, label: str = "") -> Iterator[Window]:
        """Count the round trips of what runs inside the block (sequential clients only)."""
        before, before_each = self.total, self.per_connection()
        w = Window(label)
        try:
            yield w
        finally:
            after_each = self.per_connection()
            w.round_trips = self.total - before
            before_each += [0] * (len(after_each) - len(before_each))
            w.per_connection = {
                i: a - b
                for i, (a, b) in enumerate(zip(after_each, before_each, strict=True))
                if a != b
            }

    def url_for(self, url: str) -> str:
        """``url`` (a PostgreSQL URL of the upstream server) rewritten to go through the proxy."""
        from sqlalchemy.engine import make_url

        from myapp.db.settings import normalise_url

        return (
            make_url(normalise_url(url))
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )


def _proxy_main(argv: list[str]) -> None:
    """The proxy process: ``host port counters-file``; prints its port, serves until killed."""
    host, port, path = argv[0], int(argv[1]), argv[2]
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # select(), not epoll: epoll's timeouts are whole milliseconds, a 0.5 ms delay would be 1 ms
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_serve((host, port), _Counters(path)))


async def _serve(upstream: tuple[str, int], shared: _Counters) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        index = shared.new_connection()
        try:
            server_r, server_w = await asyncio.open_connection(*upstream)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {"last": "server"}  # the client's first send is a round trip

        def from_client(data: bytes) -> None:
            if state["last"] != "client":
                state["last"] = "client"
                shared.count(index)

        def to_client(data: bytes) -> None:
            state["last"] = "server"

        await asyncio.gather(
            _pump(client_r, server_w, shared, on_read=from_client),
            _pump(server_r, client_w, shared, on_write=to_client),
            return_exceptions=True,
        )
        for w in (client_w, server_w):
            w.close()

    parent = os.getppid()

    async def exit_with_parent() -> None:  # a harness killed with SIGKILL leaves no proxy behind
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        os._exit(0)

    watchdog = asyncio.create_task(exit_with_parent())
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), watchdog)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    shared: _Counters,
    on_read: Callable[[bytes], None] | None = None,
    on_write: Callable[[bytes], None] | None = None,
) -> None:
    """Copy one direction; each chunk leaves ``delay_each_way`` s after it arrived (in order)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    early = 0.0  # how much earlier than due to wake up: the mean oversleep seen so far

    async def send_later() -> None:
        nonlocal early
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                # a timer fires late by the scheduler's wake-up latency (tens to hundreds of
                # microseconds on a loaded machine): aim that much earlier, so that the
                # delay is right on average (floor_select1_ms in the results shows it)
                if wait - early > 0:
                    await asyncio.sleep(wait - early)
                late = loop.time() - due
                early = min(max(early + 0.2 * late, 0.0), 0.5 * shared.delay_each_way)
            if on_write:
                on_write(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()

    sender = asyncio.create_task(send_later())
    try:
        while True:
            data = await reader.read(65536)
            if on_read and data:
                on_read(data)
            delay = shared.delay_each_way
            if not data:
                break
            if delay <= 0 and queue.empty():
                if on_write:
                    on_write(data)
                writer.write(data)
                await writer.drain()
            else:
                queue.put_nowait((loop.time() + delay, data))
    finally:
        # end of stream, or the connection broke: the sender forwards what is queued, then EOF
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await sender


# ---------------------------------------------------------------------------
# the competitors


def _ini_settings(ini: Path) -> dict[str, Any]:
    from pyramid.paster import get_appsettings

    return dict(get_appsettings(str(ini), "main"))


@contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def create_minimum_app(url: str, pool_size: int = 2) -> Any:
    """The Items API in the fewest round trips psycopg 3 allows: a reference, not a competitor.

    No ORM, no SQLAlchemy: connections in autocommit (a read is its one
    statement), and the write as two multi-statement simple queries, so that
    the ``BEGIN`` travels with the ``INSERT ... RETURNING`` and the ``UPDATE``
    with the ``COMMIT`` (values inlined as SQL literals: a simple query takes
    no parameters). An error rolls the transaction back.
    """
    import json
    import queue

    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conninfo = {"host": u.host, "port": u.port, "dbname": u.database, "user": u.username}
    if u.password:
        conninfo["password"] = u.password
    pool: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
    conns = [psycopg.connect(**conninfo, autocommit=True) for _ in range(pool_size)]
    for conn in conns:
        pool.put(conn)

    def respond(start_response: Any, status: str, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [data]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        conn = pool.get()
        try:
            if path == "/items" and method == "POST":
                try:
                    # without parameters psycopg sends a simple Query message, which may hold
                    # several statements: one message, one answer (ending in ReadyForQuery)
                    cur = conn.execute("BEGIN; INSERT INTO items (name) VALUES (NULL) RETURNING id")
                    cur.nextset()  # the INSERT's result (the first is the BEGIN's)
                    item_id = int(cur.fetchone()[0])  # type: ignore[index]
                    name = f"Item #{item_id}"
                    conn.execute(
                        sql.SQL("UPDATE items SET name = {} WHERE id = {}; COMMIT").format(
                            sql.Literal(name), sql.Literal(item_id)
                        )
                    )
                except BaseException:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.execute("ROLLBACK")
                    raise
                return respond(start_response, "200 OK", {"id": item_id, "name": name})
            if path.startswith("/items/") and method == "GET":
                row = conn.execute(
                    "SELECT id, name FROM items WHERE id = %s", (int(path[len("/items/") :]),)
                ).fetchone()
                if row is not None:
                    return respond(start_response, "200 OK", {"id": row[0], "name": row[1]})
            return respond(start_response, "404 Not Found", {"error": "not found"})
        finally:
            pool.put(conn)

    def dispose() -> None:
        for conn in conns:
            conn.close()

    app.dispose = dispose  # type: ignore[attr-defined]
    return app


def build_app(kind: str, url: str) -> tuple[Any, Callable[[], None]]:
    """The WSGI callable of competitor ``kind`` on ``url``, and how to dispose of its engine."""
    from benchmarks.common import ROOT

    if kind in ("myapp-dev", "myapp-prod"):
        from myapp import main

        ini = ROOT / ("development.ini" if kind == "myapp-dev" else "production.ini")
        settings = _ini_settings(ini)
        settings["sqlalchemy.url"] = url
        settings.setdefault("myapp.session_secret", "roundtrips-benchmark-" + "0" * 32)
        with _without_env("DATABASE_URL", "MYAPP_ENV"):  # they would override the ini's
            app = main({"__file__": str(ini), "here": str(ROOT)}, **settings)
        database = app.registry.get("db")  # myapp.db.pyramid's Database of the app
        return app, (database.dispose if database is not None else (lambda: None))
    if kind == "flask":
        from benchmarks.flask_items import create_app

        app = create_app(url, pool_size=2)
        return app, app.config["db_engine"].dispose
    if kind == "bare":
        from benchmarks.bare_items import create_app as create_bare

        app = create_bare(url, pool_size=2)
        return app, app.engine.dispose
    if kind == "minimum":
        app = create_minimum_app(url, pool_size=2)
        return app, app.dispose
    raise ValueError(f"unknown competitor {kind!r}")


def call(app: Any, method: str, path: str) -> int:
    """One request through the WSGI callable, body read and closed; the HTTP status."""
    import io
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(b""),
        "HTTP_ACCEPT": "application/json",
    }
    setup_testing_defaults(environ)
    status: list[str] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    result = app(environ, start_response)
    try:
        for _ in result:
            pass
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(status[0].split()[0])


EXPECTED_STATUS = {"GET /items/1": 200, "POST /items": 200, "GET /items/99 (404)": 404}


def count_round_trips(
    proxy: CountingProxy, app: Any, requests: int = COUNTED, warmup: int = WARMUP
) -> dict[str, list[Window]]:
    """The request windows of each request kind, ``requests`` of each, after ``warmup`` calls.

    The warm-up matters: psycopg prepares a statement server-side on its 6th execution on a
    connection (``prepare_threshold = 5``), which costs one extra round trip that once.
    """
    windows: dict[str, list[Window]] = {}
    for label, method, path in REQUESTS:
        for _ in range(warmup):
            call(app, method, path)
        windows[label] = []
        for _ in range(requests):
            with proxy.window(label) as w:
                status = call(app, method, path)
            if status != EXPECTED_STATUS[label]:
                raise RuntimeError(f"{label} answered {status}")
            windows[label].append(w)
    return windows


def _timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """Median and minimum wall time of ``n`` calls of ``fn``, in ms."""
    from benchmarks.common import median

    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return median(times), min(times)


def _latencies(
    proxy: CountingProxy,
    proxy_url: str,
    apps: dict[str, tuple[Any, Callable[[], None]]],
    rtts: list[float],
    requests: int,
    rounds: int,
) -> tuple[dict[float, Any], dict[float, Any], dict[float, list[float]]]:
    """Per added RTT, competitor and request: the medians and minima of each round (ms).

    Every round runs every (added RTT, competitor) once, in a rotating order, so a
    burst of load on this shared machine hits them all alike. The floor, a raw
    ``SELECT 1`` on one autocommit connection through the proxy, is measured in
    every round too.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    from benchmarks.common import rotated

    def table() -> dict[float, dict[str, dict[str, list[float]]]]:
        return {r: {c: {x[0]: [] for x in REQUESTS} for c in COMPETITORS} for r in rtts}

    latency, fastest = table(), table()
    floor: dict[float, list[float]] = {r: [] for r in rtts}
    u = make_url(proxy_url)
    with psycopg.connect(
        host=u.host, port=u.port, dbname=u.database, user=u.username, autocommit=True
    ) as floor_conn:
        for r in range(rounds):
            for rtt in rotated(rtts, r):
                proxy.set_rtt(rtt)
                for _ in range(3):  # warm at this delay (the proxy's timer calibration)
                    floor_conn.execute("SELECT 1")
                med, _ = _timed(lambda: floor_conn.execute("SELECT 1").fetchone(), requests)
                floor[rtt].append(med)
                for c in rotated(list(COMPETITORS), r):
                    app = apps[c][0]
                    for label, method, path in REQUESTS:
                        call(app, method, path)
                        med, low = _timed(lambda a=app, m=method, p=path: call(a, m, p), requests)
                        latency[rtt][c][label].append(med)
                        fastest[rtt][c][label].append(low)
            print(
                f"  round {r + 1}/{rounds}: "
                + "; ".join(
                    f"+{rtt:g} ms: floor {floor[rtt][-1]:.2f}, GET "
                    + " ".join(
                        f"{c}={latency[rtt][c]['GET /items/1'][-1]:.2f}" for c in COMPETITORS
                    )
                    for rtt in rtts
                ),
                flush=True,
            )
    return latency, fastest, floor


# ---------------------------------------------------------------------------
# the run


def measure(dburl: str, rtts: list[float], requests: int, rounds: int) -> dict[str, Any]:
    """Round trips (exact) and latency of every competitor and request; see the module doc."""
    from sqlalchemy.engine import make_url

    from benchmarks.common import fresh_pg_database, median, migrate
    from benchmarks.request_overhead import seed_items
    from myapp.db.settings import normalise_url

    results: dict[str, Any] = {}
    with fresh_pg_database(dburl) as url:
        migrate(url)
        seed_items(url, ITEMS)
        upstream = make_url(normalise_url(url))
        with CountingProxy(upstream.host or "127.0.0.1", upstream.port or 5432) as proxy:
            proxy_url = proxy.url_for(url)
            apps = {c: build_app(c, proxy_url) for c in COMPETITORS}
            try:
                proxy.set_rtt(0)
                windows = {c: count_round_trips(proxy, apps[c][0]) for c in COMPETITORS}
                counts = {
                    c: {label: [w.round_trips for w in ws] for label, ws in by_request.items()}
                    for c, by_request in windows.items()
                }
                for c, by_request in counts.items():
                    for label, values in by_request.items():
                        if len(set(values)) != 1:
                            print(f"  note: {c} {label}: round trips vary: {values}", flush=True)
                latency, fastest, floor = _latencies(proxy, proxy_url, apps, rtts, requests, rounds)
            finally:
                for _, dispose in apps.values():
                    dispose()
    for c in COMPETITORS:
        results[c] = {
            label: {
                "round_trips": median(counts[c][label]),
                "round_trips_samples": counts[c][label],
                "connections_per_request": sorted(
                    {len(w.per_connection) for w in windows[c][label]}
                ),
                "latency_median_ms": {f"{rtt:g}": median(latency[rtt][c][label]) for rtt in rtts},
                "latency_rounds_ms": {f"{rtt:g}": latency[rtt][c][label] for rtt in rtts},
                # the fastest request of all rounds: less sensitive to the machine's load
                "latency_min_ms": {f"{rtt:g}": min(fastest[rtt][c][label]) for rtt in rtts},
            }
            for label, _, _ in REQUESTS
        }
    return {
        "competitors": results,
        "floor_select1_ms": {f"{r:g}": median(floor[r]) for r in rtts},
        "floor_select1_rounds_ms": {f"{r:g}": floor[r] for r in rtts},
    }


def report(data: dict[str, Any], rtts: list[float]) -> str:
    res = data["competitors"]
    lines = ["== round trips per request (exact) and median latency (ms) per added RTT"]
    header = f"{'request':<22}" + "".join(f"{c:>12}" for c in COMPETITORS)
    lines += [header, "-" * len(header)]
    for label, _, _ in REQUESTS:
        lines.append(
            f"{label + ' RT':<22}"
            + "".join(f"{res[c][label]['round_trips']:>12g}" for c in COMPETITORS)
        )
        for rtt in rtts:
            key = format(rtt, "g")
            lines.append(
                f"{'  ms @ +' + key + ' ms RTT':<22}"
                + "".join(f"{res[c][label]['latency_median_ms'][key]:>12.3f}" for c in COMPETITORS)
            )
            lines.append(
                f"{'    fastest':<22}"
                + "".join(f"{res[c][label]['latency_min_ms'][key]:>12.3f}" for c in COMPETITORS)
            )
    lines.append("ms: median over the rounds of each round's median; fastest: of all requests")
    lines.append(
        "floor (raw SELECT 1 through the proxy): "
        + ", ".join(f"{v:.3f} ms @ {k} ms" for k, v in data["floor_select1_ms"].items())
    )
    return "\n".join(lines)


def plot(data: dict[str, Any], rtts: list[float], out: Path) -> Path:
    """Round trips, then median latency per added RTT (black ticks: the fastest request)."""
    from benchmarks.common import pyplot, save_figure

    plt = pyplot()
    res = data["competitors"]
    labels = [label for label, _, _ in REQUESTS]
    fig, axes = plt.subplots(1, 1 + len(rtts), figsize=(5 + 4.5 * len(rtts), 4.6))
    width = 0.8 / len(COMPETITORS)

    def xs(i: int) -> list[float]:
        return [x + (i - (len(COMPETITORS) - 1) / 2) * width for x in range(len(labels))]

    def bars(ax: Any, values_of: Callable[[str], list[float]], fmt: str) -> None:
        for i, c in enumerate(COMPETITORS):
            b = ax.bar(xs(i), values_of(c), width, label=c)
            ax.bar_label(b, fmt=fmt, fontsize=7)
        ax.set_xticks(range(len(labels)), [label.replace(" (", "\n(") for label in labels])

    bars(axes[0], lambda c: [res[c][label]["round_trips"] for label in labels], "%g")
    axes[0].set_title("round trips per request (exact)")
    for ax, rtt in zip(axes[1:], rtts, strict=True):
        key = format(rtt, "g")
        bars(
            ax, lambda c, k=key: [res[c][label]["latency_median_ms"][k] for label in labels], "%.2f"
        )
        for i, c in enumerate(COMPETITORS):
            fastest = [res[c][label]["latency_min_ms"][key] for label in labels]
            ax.scatter(xs(i), fastest, marker="_", color="black", s=60, zorder=3)
        ax.set_title(f"latency (ms), +{key} ms RTT: median (bars), fastest (ticks)", fontsize=10)
    most = max(res[c][label]["round_trips"] for c in COMPETITORS for label in labels)
    axes[0].set_ylim(0, most * 1.45)  # room for the legend above the bars
    axes[0].legend(loc="upper left", ncol=2, fontsize=8)
    fig.suptitle("PostgreSQL round trips per request, through a counting proxy (one at a time)")
    return save_figure(fig, out, "roundtrips")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import DEFAULT_OUT, machine_info, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dburl", required=True, help="PostgreSQL server URL (a fresh db is made)")
    parser.add_argument("--rtt-ms", default="0,1", help="added round-trip times, comma-separated")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    rtts = [float(x) for x in args.rtt_ms.split(",")]
    print(
        f"round trips: {args.rounds} rounds x {args.requests} requests per RTT {rtts}", flush=True
    )
    data = measure(args.dburl, rtts, args.requests, args.rounds)
    out = {
        "benchmark": "roundtrips",
        "machine": machine_info(args.dburl),
        "parameters": {"rtt_ms": rtts, "requests": args.requests, "rounds": args.rounds},
        "goals": GOALS,
        "results": data,
    }
    write_json(args.out, "roundtrips", out)
    if not args.no_plot:
        plot(data, rtts, args.out)
    print(report(data, rtts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
