"""Seed 004's httpie transcript replayed against a real ``pserve development.ini``.

A copy of development.ini points at a temporary database (SQLite: a file
under tmp_path; PostgreSQL: ``DATABASE_URL`` naming a fresh database) and
listens on a free port. ``alembic -c <ini> upgrade head`` creates the schema,
``pserve <ini>`` serves, and real HTTP requests replay the transcript:

    GET /items      -> 200 {"items": []}
    POST /items     -> 200 {"id": 1, "name": "Item #1"}
    GET /items      -> 200 {"items": [{"id": 1, "name": "Item #1"}]}
    GET /items/99   -> 404 {"error": "not found"}

The server log (logger ``myapp.db.tx``) has one COMMIT/ROLLBACK line per
request, ROLLBACK for the 404, as the seed's ``[SESSION] Rolling back...``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from myapp.testing.plugin import PostgresTestDatabase

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TX_LINE = re.compile(r"\[myapp\.db\.tx:\d+\].*?\b(COMMIT|ROLLBACK)\b\s+(\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ini(tmp_path: Path, port: int) -> Path:
    """development.ini with a temporary SQLite file, a free port and a cwd-free script location."""
    text = (ROOT / "development.ini").read_text()
    replacements = {
        "sqlalchemy.url": f"sqlite:///{tmp_path / 'data' / 'transcript.sqlite'}",
        "listen": f"127.0.0.1:{port}",
        "script_location": "myapp:alembic",
    }
    for key, value in replacements.items():
        text, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
        assert count == 1, f"development.ini has no single {key} line"
    path = tmp_path / "development.ini"
    path.write_text(text)
    return path


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pserve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return  # a bare connect: no HTTP request, so no extra log line
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"pserve did not listen on port {port} within 60 s:\n{log.read_text()}")


def _http(port: int, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], json.loads(error.read())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def test_seed_004_transcript_on_pserve(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = _free_port()
    ini = _ini(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MYAPP_ENV")}
    pg = None
    if backend == "postgresql":
        pg = PostgresTestDatabase(request.config.getoption("--dburl"))
        env["DATABASE_URL"] = pg.create()
    log = tmp_path / "pserve.log"
    process = None
    try:
        migrate = subprocess.run(
            [str(BIN / "alembic"), "-c", str(ini), "upgrade", "head"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        if backend == "sqlite":
            # the ini's own database was migrated, not some default path
            assert (tmp_path / "data" / "transcript.sqlite").exists()
            assert not (tmp_path / "var").exists()

        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BIN / "pserve"), str(ini)],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(process, port, log)

        assert _http(port, "GET", "/items") == (200, "application/json", {"items": []})
        assert _http(port, "POST", "/items", {"name": "Item #1"}) == (
            200,
            "application/json",
            {"id": 1, "name": "Item #1"},
        )
        assert _http(port, "GET", "/items") == (
            200,
            "application/json",
            {"items": [{"id": 1, "name": "Item #1"}]},
        )
        assert _http(port, "GET", "/items/99") == (404, "application/json", {"error": "not found"})
    finally:
        if process is not None:
            _stop(process)
        if pg is not None:
            pg.drop()

    output = log.read_text()
    tx_lines = [match.groups() for match in map(TX_LINE.search, output.splitlines()) if match]
    assert tx_lines == [
        ("COMMIT", "/items"),
        ("COMMIT", "/items"),
        ("COMMIT", "/items"),
        ("ROLLBACK", "/items/99"),
    ], output
