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

import re
from pathlib import Path

import pytest

from myapp.testing.plugin import server_url
from myapp.testing.server import ServerProcess

TX_LINE = re.compile(r"\[myapp\.db\.tx:\d+\].*?\b(COMMIT|ROLLBACK)\b\s+(\S+)")
JSON = "application/json"


def test_seed_004_transcript_on_pserve(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = ServerProcess(
        tmp_path,
        backend=backend,
        dburl=server_url(request.config, backend),
        sqlite_file="data/transcript.sqlite",
    )
    with server:
        if backend == "sqlite":
            # the ini's own database was migrated, not some default path
            assert (tmp_path / "data" / "transcript.sqlite").exists()
            assert not (tmp_path / "var").exists()

        assert server.request("GET", "/items") == (200, JSON, {"items": []})
        assert server.request("POST", "/items", {"name": "Item #1"}) == (
            200,
            JSON,
            {"id": 1, "name": "Item #1"},
        )
        assert server.request("GET", "/items") == (
            200,
            JSON,
            {"items": [{"id": 1, "name": "Item #1"}]},
        )
        assert server.request("GET", "/items/99") == (404, JSON, {"error": "not found"})

    output = server.log_text()
    tx_lines = [match.groups() for match in map(TX_LINE.search, output.splitlines()) if match]
    assert tx_lines == [
        ("COMMIT", "/items"),
        ("COMMIT", "/items"),
        ("COMMIT", "/items"),
        ("ROLLBACK", "/items/99"),
    ], output
