"""What two-phase commit costs: one-database units vs two-database units, side by side.

    python -m benchmarks.twophase
    python -m benchmarks.twophase --rtt-ms 0,1 --units 300 --rounds 5

Starts a private PostgreSQL 15 cluster (``myapp.testing.pgcluster``, with
``max_prepared_transactions = 20``: the machine's server has 0) with two
databases, ``main`` and ``ledger``, and puts the counting TCP proxy of
:mod:`benchmarks.roundtrips` in front of it (exact round trips; ``--rtt-ms``
adds a simulated network delay). Three kinds of unit of work, each inserting
one row per database it writes to, run sequentially on one thread:

one-db          ``db_transaction()`` writing to ``main`` only: one phase (as before)
two-db-1pc      two units in a row, one per database: each commits in one phase, and
                nothing makes the pair atomic (the baseline a second database costs anyway)
two-db-2pc      one ``db_transaction()`` writing to both: PREPARE in both, the decision
                record, COMMIT PREPARED in both

For each: round trips per unit (exact, the same for every unit or the run says
so) and units per second (the median of the rounds, rounds interleaved).
Results: ``docs/benchmarks/twophase.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from benchmarks.roundtrips import CountingProxy

KINDS = ("one-db", "two-db-1pc", "two-db-2pc")
WARMUP = 8  # beyond psycopg's prepare threshold (5 executions per connection)
COUNTED = 5

_ids = itertools.count(1)


def _insert(name: str | None) -> None:
    from myapp.db import current_session

    current_session(name).execute(text("INSERT INTO entries VALUES (:i)"), {"i": next(_ids)})


def units(db: Any) -> dict[str, Callable[[], None]]:
    from myapp.db import db_transaction

    def one_db() -> None:
        with db_transaction():
            _insert(None)

    def two_db_1pc() -> None:
        with db_transaction():
            _insert(None)
        with db_transaction():
            _insert("ledger")

    def two_db_2pc() -> None:
        with db_transaction():
            _insert(None)
            _insert("ledger")

    return {"one-db": one_db, "two-db-1pc": two_db_1pc, "two-db-2pc": two_db_2pc}


def measure(rtts: list[float], n_units: int, rounds: int) -> dict[str, Any]:
    from benchmarks.common import median
    from myapp.db import Database
    from myapp.testing.pgcluster import PgCluster

    with PgCluster(max_prepared_transactions=20) as cluster:
        assert cluster.primary is not None
        for name in ("bench_main", "bench_ledger"):
            cluster.create_database(name)
            with cluster.primary.connect(name) as conn:
                conn.execute("CREATE TABLE entries (id bigint PRIMARY KEY)")
        with CountingProxy("127.0.0.1", cluster.primary.port) as proxy:
            main_url = proxy.url_for(cluster.primary.url("bench_main"))
            ledger_url = proxy.url_for(cluster.primary.url("bench_ledger"))
            db = Database.from_url(main_url, databases={"ledger": ledger_url})
            try:
                with db.scope():
                    kinds = units(db)
                    proxy.set_rtt(0)
                    round_trips: dict[str, int] = {}
                    for kind, unit in kinds.items():
                        for _ in range(WARMUP):
                            unit()
                        counts = []
                        for _ in range(COUNTED):
                            with proxy.window(kind) as w:
                                unit()
                            counts.append(w.round_trips)
                        if len(set(counts)) != 1:
                            raise RuntimeError(f"{kind}: round trips vary: {counts}")
                        round_trips[kind] = counts[0]
                    per_second: dict[str, dict[str, float]] = {}
                    for rtt in rtts:
                        proxy.set_rtt(rtt)
                        samples: dict[str, list[float]] = {k: [] for k in kinds}
                        for r in range(rounds):
                            order = list(kinds)[r % 3 :] + list(kinds)[: r % 3]
                            for kind in order:
                                unit = kinds[kind]
                                start = time.perf_counter()
                                for _ in range(n_units):
                                    unit()
                                samples[kind].append(n_units / (time.perf_counter() - start))
                        per_second[str(rtt)] = {k: round(median(v), 1) for k, v in samples.items()}
            finally:
                db.dispose()
    return {"round_trips": round_trips, "units_per_second": per_second}


def report(data: dict[str, Any], rtts: list[float]) -> str:
    lines = [
        "| unit of work | round trips | "
        + " | ".join(f"units/s, +{rtt:g} ms RTT" for rtt in rtts)
        + " |",
        "|---|---|" + "---|" * len(rtts),
    ]
    for kind in KINDS:
        rates = " | ".join(f"{data['units_per_second'][str(rtt)][kind]:.0f}" for rtt in rtts)
        lines.append(f"| {kind} | {data['round_trips'][kind]} | {rates} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import DEFAULT_OUT, machine_info, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", default="0,1", help="added round-trip times, comma-separated")
    parser.add_argument("--units", type=int, default=300, help="units per kind and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rtts = [float(x) for x in args.rtt_ms.split(",")]
    data = measure(rtts, args.units, args.rounds)
    write_json(
        args.out,
        "twophase",
        {
            "benchmark": "twophase",
            "machine": machine_info(),
            "parameters": {"rtt_ms": rtts, "units": args.units, "rounds": args.rounds},
            "results": data,
        },
    )
    print(report(data, rtts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
