"""Serving myapp with waitress: a graceful stop on SIGTERM, and no ambiguous request bodies.

The ini files' server section uses it (PasteDeploy's ``call:`` scheme, no entry
point needed)::

    [server:main]
    use = call:myapp.server:server_factory
    listen = *:6543
    graceful_timeout = 30
    # ... any other waitress setting (threads, max_request_body_size, channel_timeout)

It is waitress (``waitress.create_server``) with three changes:

* **SIGTERM drains.** The listening sockets are closed at once (connections the
  kernel had already accepted are taken first, so none is reset unanswered);
  requests already received run to the end and their responses are sent, with
  ``Connection: close``; a request arriving on an open keep-alive connection is
  still served (with ``Connection: close``), and a connection idle for
  :data:`IDLE_CLOSE_AFTER` seconds is closed (closing busy clients' idle
  connections at once would make them race the close with their next
  request: "Remote end closed connection", the request never seen); when no
  connection is left, or after ``graceful_timeout`` seconds (default 30), the
  worker threads are stopped and the process exits. A unit of work in flight
  therefore commits or aborts as it would have, and its client gets the answer.
  (waitress alone stops at once: in-flight requests are cut off, the client sees
  the connection closed without a response and cannot know whether its request
  was applied.) SIGINT (Ctrl-C) still stops at once.
* **A request with both ``Content-Length`` and ``Transfer-Encoding`` is a 400**
  and its connection is closed. waitress follows RFC 7230 (the chunked framing
  wins, the length is ignored); a proxy in front that trusts the length instead
  would see a different request boundary: the request-smuggling shape. RFC 9112
  section 6.1 allows refusing it, which is what this does.
* The body limit and timeouts are waitress's own settings, set in the ini files
  next to the application's (``max_request_body_size`` near
  ``myapp.max_body_bytes``, ``channel_timeout``): see ``docs/reliability.md``.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import BaseWSGIServer, create_server
from waitress.task import WSGITask

log = logging.getLogger(__name__)

#: seconds a SIGTERM waits for in-flight requests before the process exits anyway
DEFAULT_GRACEFUL_TIMEOUT = 30.0
#: while draining, a keep-alive connection silent for this long is closed
IDLE_CLOSE_AFTER = 1.0


class StrictRequestParser(HTTPRequestParser):
    """waitress's parser, refusing a request that declares two body framings."""

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("a request may not have both Content-Length and Transfer-Encoding")


class DrainingTask(WSGITask):
    """A WSGI task that asks the client to close the connection once the server is draining."""

    def build_response_header(self) -> bytes:
        if getattr(self.channel.server, "draining", False):
            self.set_close_on_finish()
        return super().build_response_header()


class GracefulChannel(HTTPChannel):
    parser_class = StrictRequestParser
    task_class = DrainingTask


def _accept_backlog(listener: BaseWSGIServer) -> int:
    """Accept every connection waiting in the kernel's queue; return how many."""
    accepted = 0
    while True:
        try:
            pair = listener.accept()
        except OSError:
            break
        if pair is None:
            break
        conn, addr = pair
        listener.set_socket_options(conn)
        listener.channel_class(
            listener, conn, listener.fix_addr(addr), listener.adj, map=listener._map
        )
        accepted += 1
    return accepted


# -- stopping a listening socket without resetting a connection the kernel accepted --------
#
# Closing a listening socket resets (RST) every connection in its accept queue: the kernel
# completed their handshakes, their clients have sent their requests, and no process will
# read them. Taking the queue first and then closing leaves a window (a handshake completing
# between the last accept() and close()); with several processes sharing one socket (gunicorn)
# the window lasts as long as the slowest of them. So: first tell the kernel to start no new
# handshake (a socket filter dropping every incoming SYN, Linux), then take the queue, a
# little longer than a handshake in flight needs, then close. A client whose SYN was dropped
# sends it again one second later (TCP's initial retransmission timeout) and is refused then:
# it knows its request was never received, and may send it elsewhere.

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: seconds a stopping listener keeps taking connections whose handshake began before the stop
HANDSHAKE_LINGER = 0.2


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


#: classic BPF, run by the kernel on a TCP socket's packets from the TCP header on: drop a
#: packet whose flags are SYN without ACK (a new handshake), keep every other one (the last
#: ACK of a handshake already begun, and data)
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]          the flags byte of the TCP header
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1 (the whole packet)
)


def refuse_new_handshakes(sock: socket.socket) -> bool:
    """Make the kernel drop every new connection attempt to the listening ``sock``.

    Connections already in its accept queue (or whose handshake is completing) are not
    touched. Affects every process sharing the socket. Returns False where it cannot be
    done (not Linux, not TCP): closing then resets what arrives in the window.
    """
    if not sys.platform.startswith("linux") or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return False
    program = (_SockFilter * len(_DROP_SYN))(*(_SockFilter(*i) for i in _DROP_SYN))
    fprog = _SockFprog(len(_DROP_SYN), program)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    except OSError:
        log.warning("could not attach the SYN filter to %s", sock, exc_info=True)
        return False
    return True


def take_queue(
    sock: socket.socket,
    take: Callable[[socket.socket, Any], None],
    linger: float = HANDSHAKE_LINGER,
) -> int:
    """Accept the connections waiting on the listening ``sock`` for ``linger`` seconds.

    ``take(connection, address)`` serves each. ``sock`` should refuse new handshakes
    (:func:`refuse_new_handshakes`) so that the queue only empties. Returns how many
    were taken; the caller closes ``sock`` afterwards.
    """
    blocking = sock.getblocking()
    sock.setblocking(False)
    taken = 0
    deadline = time.monotonic() + linger
    try:
        while True:
            try:
                connection, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
                continue
            except ConnectionAbortedError:
                continue
            take(connection, address)
            taken += 1
    finally:
        sock.setblocking(blocking)
    return taken


def _idle(channel: HTTPChannel) -> bool:
    """No request being received or served, nothing left to send."""
    return not channel.requests and channel.request is None and not channel.total_outbufs_len


def serve(app: Any, *, graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT, **kw: Any) -> int:
    """Serve ``app`` until SIGTERM, then drain (see the module documentation).

    Returns 0 when every in-flight request finished within ``graceful_timeout``,
    1 when some had to be cut off.
    """
    logging.basicConfig()  # as waitress.serve: idempotent
    socket_map: dict[int, Any] = {}
    server = create_server(app, map=socket_map, **kw)
    listeners = [d for d in socket_map.values() if isinstance(d, BaseWSGIServer)]
    for listener in listeners:
        listener.channel_class = GracefulChannel
        listener.draining = False
    adj = listeners[0].adj
    server.print_listen("Serving on http://{}:{}")

    stop: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        stop.append(signum)
        listeners[0].pull_trigger()  # wake the loop now

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while not stop:
            wasyncore.loop(
                timeout=adj.asyncore_loop_timeout,
                map=socket_map,
                use_poll=adj.asyncore_use_poll,
                count=1,
            )
        return _drain(listeners, socket_map, graceful_timeout)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drain(listeners: list[BaseWSGIServer], socket_map: dict[int, Any], grace: float) -> int:
    started = time.monotonic()
    taken = 0
    for listener in listeners:
        listener.draining = True
        taken += _accept_backlog(listener)
        wasyncore.dispatcher.close(listener)  # not BaseWSGIServer.close: keep the trigger
    busy = [c for c in socket_map.values() if isinstance(c, HTTPChannel) and not _idle(c)]
    log.info(
        "SIGTERM: stopped listening; finishing %d in-flight request(s) (%d taken from the "
        "queue), at most %.0f s",
        len(busy),
        taken,
        grace,
    )
    deadline = started + grace
    adj = listeners[0].adj
    cut_off = 0
    while True:
        channels = [c for c in socket_map.values() if isinstance(c, HTTPChannel)]
        now = time.time()
        for channel in channels:
            if (
                _idle(channel)
                and not channel.will_close
                and now - channel.last_activity >= min(IDLE_CLOSE_AFTER, grace)
            ):
                channel.will_close = True  # closed by the loop's next write pass
        if not channels:
            break
        if time.monotonic() >= deadline:
            cut_off = sum(1 for c in channels if not _idle(c))
            log.warning("graceful stop: %d request(s) cut off after %.0f s", cut_off, grace)
            break
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=adj.asyncore_use_poll, count=1)
    listeners[0].task_dispatcher.shutdown(cancel_pending=True, timeout=5)
    wasyncore.close_all(socket_map)
    log.info(
        "graceful stop done in %.2f s: %d request(s) cut off",
        time.monotonic() - started,
        cut_off,
    )
    return 1 if cut_off else 0


def with_port(listen: str, port: str) -> str:
    """``listen`` (``host:port`` entries separated by spaces) with every port replaced."""
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"http_port must be a TCP port number, not {port!r}")
    entries = []
    for entry in listen.split():
        host = entry.rsplit(":", 1)[0] if ":" in entry and not entry.endswith("]") else entry
        entries.append(f"{host}:{port}")
    return " ".join(entries)


def server_factory(global_conf: dict[str, Any], **settings: Any) -> Callable[[Any], int]:
    """PasteDeploy server factory (``use = call:myapp.server:server_factory``).

    ``pserve app.ini http_port=6600`` (a variable of the command line, which
    PasteDeploy passes in ``global_conf``) replaces the port of every ``listen``
    entry (or sets ``port`` when the section uses ``host``/``port``).
    """
    grace = float(settings.pop("graceful_timeout", DEFAULT_GRACEFUL_TIMEOUT))
    if grace < 0:
        raise ValueError("graceful_timeout must be 0 or more seconds")
    port = global_conf.get("http_port")
    if port:
        if "listen" in settings:
            settings["listen"] = with_port(settings["listen"], str(port))
        else:
            settings["port"] = with_port("x", str(port)).split(":")[1]

    def run(app: Any) -> int:
        return serve(app, graceful_timeout=grace, **settings)

    return run
