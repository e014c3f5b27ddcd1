"""A hostile client against a real server: what a probe of a live ``pserve`` found, closed.

One ``pserve`` per backend on a copy of production.ini (the server runner of
``myapp/server.py``, waitress with the ini's limits, the prod profile), driven
over real sockets:

* HEAD on every authorised API GET operation answers as GET does, without a body
  (it was a 500: the OpenAPI layer has no ``head`` operations);
* dashboard forms whose body WebOb cannot decode (a latin-1, UTF-16 or unknown
  charset, a multipart body without a boundary) get the dashboard's HTML 4xx page
  (they were 500s with a traceback in the log);
* a ``Host`` header the settings do not trust never reaches a ``Location``;
* a body declared larger than waitress's ``max_request_body_size`` is refused
  when the headers arrive, before a byte of it is sent; a declared body that
  never comes holds no worker thread and is dropped after ``channel_timeout``;
* ``Content-Length`` with ``Transfer-Encoding: chunked`` is a 400 and writes nothing;
* ``GET /items`` is bounded;
* ``pserve development.ini http_port=N`` listens on N.

No test here leaves an ERROR line or a traceback in the server's log.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import ROOT, api_operations, fill, new_token_and_hash

from myapp.testing.plugin import server_url
from myapp.testing.server import BIN, OVERRIDING_ENV, ServerProcess, free_port, write_ini

ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()
#: what the server waits for a silent connection in these tests (production.ini: 30 s)
CHANNEL_TIMEOUT = 2


def _operations() -> list[tuple[str, str, str, str]]:
    from myapp import main

    return api_operations(main({}, **{"sqlalchemy.url": "sqlite://", "myapp.env": "testing"}))


class Http:
    """Requests to the server on fresh connections; JSON decoded when it is JSON."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            data = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        if found.get("content-type", "").startswith("application/json") and data:
            return response.status, found, json.loads(data)
        return response.status, found, data


@pytest.fixture(scope="module")
def server(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp(f"operations-{backend}"),
        backend=backend,
        dburl=server_url(request.config, backend),
        base_ini=ROOT / "production.ini",
        settings={
            "myapp.admin_token_hash": ADMIN_HASH,
            "myapp.session_secret": "operations-test-session-secret-0123456789",
            "channel_timeout": str(CHANNEL_TIMEOUT),
            "cleanup_interval": "1",
        },
    )
    with process:
        yield process
    log = process.log_text()
    assert "Traceback" not in log, log
    assert not re.search(r"^\S+ \S+ ERROR", log, re.M), log


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> dict[str, Any]:
    """A company with a driver and a booking, created through the API."""
    client = Http(server)
    status, _, company = client.call("POST", "/api/companies", {"name": "Ops"}, token=ADMIN_TOKEN)
    assert status == 201, company
    token = company["api_token"]
    base = f"/api/companies/{company['id']}"
    status, _, driver = client.call("POST", base + "/drivers", {"name": "D"}, token=token)
    assert status == 201, driver
    booking_body = {
        "pickup_time": "2041-05-05T10:00:00Z",
        "pickup_address": "A",
        "dropoff_address": "B",
    }
    status, _, booking = client.call("POST", base + "/bookings", booking_body, token=token)
    assert status == 201, booking
    return {
        "token": token,
        "ids": {
            "company_id": company["id"],
            "driver_id": driver["id"],
            "booking_id": booking["id"],
        },
    }


def test_head_on_every_authorised_get_is_the_get_without_a_body(
    server: ServerProcess, world: dict[str, Any]
) -> None:
    client = Http(server)
    gets = [(route, pattern) for route, pattern, method, _ in _operations() if method == "GET"]
    assert len(gets) >= 7
    for token in (world["token"], ADMIN_TOKEN):
        for route, pattern in gets:
            url = fill(pattern, **world["ids"])
            if route == "api.companies" and token != ADMIN_TOKEN:
                continue  # admin only: 403 for both
            got_status, got_headers, got = client.call("GET", url, token=token)
            status, headers, body = client.call("HEAD", url, token=token)
            assert (status, got_status) == (200, 200), (url, got, body)
            assert body == b"", url
            assert headers["content-type"] == got_headers["content-type"] == "application/json"
            assert headers["content-length"] == got_headers["content-length"], url
    # and without a token, HEAD is refused as GET is
    url = fill(gets[0][1], **world["ids"])
    assert client.call("HEAD", url)[0] == client.call("GET", url)[0] == 401


@pytest.mark.parametrize(
    ("path", "content_type", "raw", "status"),
    [
        (
            "/dashboard/login",
            "application/x-www-form-urlencoded; charset=latin-1",
            b"token=\xe9",
            415,
        ),
        (
            "/dashboard/login",
            "application/x-www-form-urlencoded; charset=utf-16",
            "token=x".encode("utf-16"),
            415,
        ),
        ("/dashboard/login", "application/x-www-form-urlencoded; charset=x-no-such", b"t=1", 415),
        ("/dashboard/login", "application/x-www-form-urlencoded", b"token=%FF%FE", 400),
        ("/dashboard/logout", "multipart/form-data", b"--x\r\n\r\n--x--\r\n", 400),
        ("/dashboard/dispatch", "multipart/form-data; boundary=", b"--\r\n", 400),
    ],
)
def test_undecodable_dashboard_forms_get_the_html_error_page(
    server: ServerProcess, path: str, content_type: str, raw: bytes, status: int
) -> None:
    got, headers, body = Http(server).call(
        "POST", path, raw=raw, headers={"Content-Type": content_type}
    )
    assert got == status, body
    assert headers["content-type"].startswith("text/html")
    assert b"Nothing was done" in body


def test_static_files_on_every_method(server: ServerProcess) -> None:
    """The dashboard's static route (not testable in-process, see test_route_matrix.py)."""
    client = Http(server)
    path = "/dashboard/static/dashboard.css"
    status, headers, body = client.call("GET", path)
    assert status == 200 and headers["content-type"].startswith("text/css") and body
    status, headers, body = client.call("HEAD", path)
    assert status == 200 and body == b""
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        status, headers, body = client.call(
            method, path, raw=b"{", headers={"Content-Type": "application/json"}
        )
        assert status == 400, (method, status, body)
        status, headers, body = client.call(method, path)  # Pyramid serves the file
        assert status < 500, (method, status, body)
    status, _, _ = client.call("GET", "/dashboard/static/../../../etc/passwd")
    assert status == 404


def test_an_untrusted_host_never_reaches_a_location(
    server: ServerProcess, world: dict[str, Any]
) -> None:
    client = Http(server)
    base = f"/api/companies/{world['ids']['company_id']}"
    for host, expected in (
        ("evil.example", "http://localhost/"),
        ("localhost.evil.example:80", "http://localhost/"),
        (f"127.0.0.1:{server.port}", f"http://127.0.0.1:{server.port}/"),  # trusted: kept
    ):
        status, headers, _ = client.call(
            "POST", base + "/drivers", {"name": "H"}, headers={"Host": host}, token=world["token"]
        )
        assert status == 201
        assert headers["location"].startswith(expected), (host, headers["location"])
        # the dashboard's redirect to its login page too
        status, headers, _ = client.call("GET", "/dashboard", headers={"Host": host})
        assert status == 302
        assert headers["location"].startswith(expected + "dashboard/login"), headers["location"]


def _raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_body_declared_too_large_is_refused_before_it_is_sent(server: ServerProcess) -> None:
    """20 MB declared, not a byte of it sent: the 413 comes when the headers arrive."""
    started = time.monotonic()
    answer = _raw_exchange(
        server.port,
        b"POST /items HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 20000000\r\n\r\n",
    )
    elapsed = time.monotonic() - started
    print(f"20 MB declared, 0 bytes sent: {answer[:12]!r} after {elapsed * 1000:.0f} ms")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert elapsed < CHANNEL_TIMEOUT, elapsed  # not the idle timeout: refused at once


def test_stalled_bodies_hold_no_worker_and_are_dropped(server: ServerProcess) -> None:
    """More stalled uploads than worker threads: requests still served; stalled ones closed."""
    stalled = []
    try:
        for _ in range(12):  # waitress has 8 threads
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.sendall(
                b"POST /items HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 1000000\r\n\r\npartial"
            )
            stalled.append(sock)
        started = time.monotonic()
        status, _, body = Http(server).call("GET", "/healthz")
        assert status == 200, body
        assert time.monotonic() - started < CHANNEL_TIMEOUT
        closed = 0
        deadline = time.monotonic() + CHANNEL_TIMEOUT + 10
        for sock in stalled:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except (ConnectionResetError, TimeoutError):
                pass
        print(
            f"{len(stalled)} stalled uploads: /healthz answered meanwhile; {closed} closed by "
            f"the server {time.monotonic() - started:.1f} s after"
        )
        assert closed == len(stalled), f"{closed} of {len(stalled)} closed by the server"
    finally:
        for sock in stalled:
            sock.close()


def test_content_length_with_chunked_is_refused_and_writes_nothing(
    server: ServerProcess,
) -> None:
    client = Http(server)
    before = int(client.call("GET", "/items")[1]["x-total-count"])
    answer = _raw_exchange(
        server.port,
        b"POST /items HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"POST /items HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled second request was not served
    assert b"Connection: close" in answer
    assert int(client.call("GET", "/items")[1]["x-total-count"]) == before
    # either framing alone is fine
    for framing in (b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"):
        tail = b"0\r\n\r\n" if b"chunked" in framing else b""
        answer = _raw_exchange(
            server.port,
            b"POST /items HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + framing
            + b"\r\n"
            + tail,
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_get_items_is_bounded(server: ServerProcess) -> None:
    client = Http(server)
    for _ in range(25):
        assert client.call("POST", "/items")[0] == 200
    status, headers, body = client.call("GET", "/items")
    total = int(headers["x-total-count"])
    assert status == 200 and total >= 25
    assert len(body["items"]) == 20
    assert 'rel="next"' in headers["link"]
    status, _, body = client.call("GET", "/items?per_page=100000")
    assert status == 400 and body["field"] == "per_page"


def test_pserve_honours_http_port(tmp_path: Path) -> None:
    """``pserve development.ini http_port=N``: the ini's own ``listen`` port is replaced."""
    port = free_port()
    ini = write_ini(
        ROOT / "development.ini",
        tmp_path / "development.ini",
        {"sqlalchemy.url": f"sqlite:///{tmp_path / 'port.sqlite'}"},
    )
    assert "listen = localhost:6543" in ini.read_text()
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDING_ENV}
    log = tmp_path / "pserve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "pserve"), str(ini), f"http_port={port}"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()
    assert f"Serving on http://127.0.0.1:{port}" in log.read_text()


# -- the settings behind these, without a server ------------------------------------------


@pytest.mark.parametrize(
    ("setting", "host", "trusted"),
    [
        ("localhost 127.0.0.1", "localhost", True),
        ("localhost 127.0.0.1", "127.0.0.1:6543", True),
        ("localhost 127.0.0.1", "LOCALHOST.", True),
        ("localhost 127.0.0.1", "evil.example", False),
        ("localhost 127.0.0.1", "localhost.evil.example", False),
        ("localhost 127.0.0.1", "", False),
        ("api.example.com, .example.com", "www.example.com", True),
        ("api.example.com, .example.com", "example.com:443", True),
        ("api.example.com, .example.com", "badexample.com", False),
    ],
)
def test_trusted_host_matching(setting: str, host: str, trusted: bool) -> None:
    from myapp.views.guards import host_is_trusted, trusted_hosts

    hosts = trusted_hosts({"myapp.trusted_hosts": setting})
    assert host_is_trusted(host, hosts) is trusted


def test_trusted_hosts_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid.exceptions import ConfigurationError

    from myapp.views.guards import TRUSTED_HOSTS_ENV, trusted_hosts

    monkeypatch.delenv(TRUSTED_HOSTS_ENV, raising=False)
    assert trusted_hosts({}) == ()  # unset: every host is trusted
    assert trusted_hosts({"myapp.trusted_hosts": "*"}) == ()
    with pytest.raises(ConfigurationError, match="first entry"):
        trusted_hosts({"myapp.trusted_hosts": ".example.com api.example.com"})
    monkeypatch.setenv(TRUSTED_HOSTS_ENV, "api.example.com")
    assert trusted_hosts({"myapp.trusted_hosts": "localhost"}) == ("api.example.com",)


def test_http_port_replaces_every_listen_port() -> None:
    from myapp.server import server_factory, with_port

    assert with_port("localhost:6543 [::1]:6543", "6600") == "localhost:6600 [::1]:6600"
    with pytest.raises(ValueError, match="port"):
        with_port("localhost:6543", "66000")
    with pytest.raises(ValueError, match="graceful_timeout"):
        server_factory({}, graceful_timeout="-1")
