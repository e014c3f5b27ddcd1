"""Closing a listening socket without resetting a connection (myapp.server, used by gunicorn).

Real sockets on the loopback interface: what the kernel does with a connection queued on a
listening socket when it closes (a reset), and with a new connection once
:func:`~myapp.server.refuse_new_handshakes` is in place (its SYN is dropped: no connection
is made, and once the socket is closed the retried SYN is refused).
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from myapp.server import refuse_new_handshakes, take_queue

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket filter")


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_closing_a_listener_resets_the_connections_in_its_queue() -> None:
    """Why the draining matters: a request sent on a queued connection is lost on close."""
    sock = listener()
    client = socket.create_connection(sock.getsockname(), timeout=5)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.05)
    sock.close()
    with pytest.raises(ConnectionResetError):
        client.recv(100)
    client.close()


def test_new_handshakes_are_dropped_and_the_queue_is_served_then_refused() -> None:
    sock = listener()
    address = sock.getsockname()
    queued = socket.create_connection(address, timeout=5)
    queued.sendall(b"ping")
    assert refuse_new_handshakes(sock) is True

    # a new connection attempt gets no answer at all while the socket is open
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection(address, timeout=0.5)
    assert time.monotonic() - started >= 0.45

    # ... and is refused when it retries its SYN after the socket closed
    late: list[str] = []

    def connect_late() -> None:
        try:
            socket.create_connection(address, timeout=10).close()
            late.append("connected")
        except ConnectionRefusedError:
            late.append("refused")
        except OSError as exc:
            late.append(repr(exc))

    thread = threading.Thread(target=connect_late)
    thread.start()
    time.sleep(0.1)

    taken: list[socket.socket] = []
    assert take_queue(sock, lambda conn, addr: taken.append(conn), linger=0.1) == 1
    sock.close()
    thread.join(timeout=15)
    assert late == ["refused"]

    # the connection that was queued is served, not reset
    (conn,) = taken
    assert conn.recv(10) == b"ping"
    conn.sendall(b"pong")
    assert queued.recv(10) == b"pong"
    conn.close()
    queued.close()


def test_a_unix_socket_is_left_alone() -> None:
    a, b = socket.socketpair()
    try:
        assert refuse_new_handshakes(a) is False
    finally:
        a.close()
        b.close()
