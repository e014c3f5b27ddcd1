"""The round-trip benchmark: its counting proxy, and today's round trips per request, pinned.

Round trips are exact counts (not timings), so they can be pinned. When a change lowers them on
purpose (the read-path work: GET 1, POST <= 3, see ``benchmarks.roundtrips.GOALS``), update
:data:`EXPECTED_ROUND_TRIPS` below, and only there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from benchmarks import roundtrips
from benchmarks.roundtrips import CountingProxy

#: Round trips to PostgreSQL per request, counted by the proxy with a warm pool (one request at
#: a time). myapp-dev: the shipped development.ini's settings (profile dev); myapp-prod:
#: production.ini's (profile prod). The read path (docs/architecture.md): a GET reads on an
#: autocommit connection the server keeps read-only (the statement only: no pre-ping, BEGIN or
#: COMMIT); a POST sends its BEGIN with its first statement (BEGIN+INSERT, UPDATE, COMMIT).
#: Before the read path: 4 / 5 / 4 (pre-ping ``SELECT 1``, ``BEGIN``, statements, ``COMMIT``).
EXPECTED_ROUND_TRIPS: dict[str, dict[str, int]] = {
    "myapp-dev": {"GET /items/1": 1, "POST /items": 3, "GET /items/99 (404)": 1},
    "myapp-prod": {"GET /items/1": 1, "POST /items": 3, "GET /items/99 (404)": 1},
    "flask": {"GET /items/1": 3, "POST /items": 4, "GET /items/99 (404)": 3},
    "bare": {"GET /items/1": 3, "POST /items": 4, "GET /items/99 (404)": 3},
    # the reference: raw psycopg, autocommit reads, pipelined write (not a target to lower)
    "minimum": {"GET /items/1": 1, "POST /items": 2, "GET /items/99 (404)": 1},
}

pytestmark = pytest.mark.postgresql_only


def _server(dburl: str) -> tuple[str, int, str]:
    from sqlalchemy.engine import make_url

    from myapp.db.settings import normalise_url

    u = make_url(normalise_url(dburl))
    return u.host or "127.0.0.1", u.port or 5432, u.database or "postgres"


def test_the_proxy_counts_round_trips_not_messages(
    backend: str, request: pytest.FixtureRequest
) -> None:
    host, port, dbname = _server(request.config.getoption("--dburl"))
    with CountingProxy(host, port) as proxy:
        with proxy.window("connect") as connect:
            conn = psycopg.connect(host="127.0.0.1", port=proxy.port, dbname=dbname)
        try:
            assert connect.round_trips >= 1 and list(connect.per_connection) == [0]
            with proxy.window("autocommit read") as w:
                conn.autocommit = True
                conn.execute("SELECT 1").fetchone()
            assert w.round_trips == 1
            conn.autocommit = False
            with proxy.window("transaction") as w:
                conn.execute("SELECT %s::int", (1,)).fetchone()  # BEGIN, then the SELECT
                conn.commit()
            assert w.round_trips == 3 and w.per_connection == {0: 3}
            # three statements in one simple query message: one round trip
            conn.autocommit = True
            with proxy.window("multi-statement") as w:
                conn.execute("SELECT 1; SELECT 2; SELECT 3")
            assert w.round_trips == 1
            # three statements in one pipeline: fewer round trips than statements (psycopg may
            # send a flush request after the first answers arrived: counted, see the module)
            with proxy.window("pipeline") as w, conn.pipeline():
                for i in range(3):
                    conn.execute("SELECT %s::int", (i,))
            assert 1 <= w.round_trips <= 2
            # a second connection is counted on its own
            with psycopg.connect(
                host="127.0.0.1", port=proxy.port, dbname=dbname, autocommit=True
            ) as other:
                with proxy.window("two connections") as w:
                    conn.execute("SELECT 1")
                    other.execute("SELECT 1")
                    other.execute("SELECT 2")
                assert w.round_trips == 3 and w.per_connection == {0: 1, 1: 2}
            assert proxy.connections == 2
            # the added delay: every round trip takes at least about the added time
            proxy.set_rtt(20)
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            assert time.perf_counter() - started >= 0.015
        finally:
            conn.close()


def test_round_trips_per_request_are_pinned(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    code = roundtrips.main(
        ["--dburl", request.config.getoption("--dburl"), "--rtt-ms", "0,1",
         "--requests", "3", "--rounds", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "roundtrips.json").read_text())
    measured = {
        competitor: {label: r["round_trips_samples"] for label, r in by_request.items()}
        for competitor, by_request in data["results"]["competitors"].items()
    }
    # every request of a kind took the same number of round trips, on one connection
    expected = {
        c: {label: [n] * roundtrips.COUNTED for label, n in by_request.items()}
        for c, by_request in EXPECTED_ROUND_TRIPS.items()
    }
    assert measured == expected
    for by_request in data["results"]["competitors"].values():
        for r in by_request.values():
            assert r["connections_per_request"] == [1]
            assert set(r["latency_median_ms"]) == {"0", "1"}
            assert all(v > 0 for v in r["latency_median_ms"].values())
    assert (tmp_path / "roundtrips.png").stat().st_size > 0
