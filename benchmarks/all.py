"""Run every benchmark of issue 7 and write their JSON and PNG files under ``docs/benchmarks/``.

    python -m benchmarks.all --dburl postgresql://127.0.0.1/test          # ~10 minutes
    python -m benchmarks.all --dburl postgresql://127.0.0.1/test --large  # + 1M rows, 100k bookings

Without ``--dburl`` only the SQLite halves run (request overhead, batch load
without COPY, isolation); dispatch scaling needs PostgreSQL and is skipped.
``--quick`` runs everything at tiny sizes (what the smoke test does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import batch_load, dispatch_scaling, isolation, request_overhead
from benchmarks.common import DEFAULT_OUT


def plan(args: argparse.Namespace) -> list[tuple[str, object, list[str]]]:
    out = ["--out", str(args.out)]
    pg = ["--dburl", args.dburl] if args.dburl else []
    steps: list[tuple[str, object, list[str]]] = []
    if args.quick:
        steps.append(
            ("request overhead", request_overhead.main,
             ["--db", "both" if args.dburl else "sqlite", *pg, "--rounds", "1",
              "--requests", "40", "--items", "20", "--concurrency", "2", "--threads", "2", *out])
        )  # fmt: skip
        steps.append(
            ("batch load", batch_load.main,
             ["--db", "postgresql" if args.dburl else "sqlite", *pg, "--sizes", "200,1000",
              "--batch-size", "100", "--rounds", "1", *out])
        )  # fmt: skip
        steps.append(
            ("isolation", isolation.main,
             [*pg, "--rounds", "1", "--iterations", "5", "--slow-iterations", "1", *out])
        )  # fmt: skip
        if args.dburl:
            steps.append(
                ("dispatch", dispatch_scaling.main,
                 [*pg, "--sizes", "40,120", "--dispatchers", "1,2", "--companies", "4",
                  "--drivers", "3", "--rounds", "1", *out])
            )  # fmt: skip
        return steps
    steps.append(
        ("request overhead", request_overhead.main,
         ["--db", "both" if args.dburl else "sqlite", *pg, *out])
    )  # fmt: skip
    sizes = "10000,100000,1000000" if args.large else "10000,100000"
    if args.dburl:
        steps.append(("batch load", batch_load.main, [*pg, "--sizes", sizes, *out]))
    steps.append(
        ("batch load", batch_load.main, ["--db", "sqlite", "--sizes", "10000,100000", *out])
    )
    steps.append(("isolation", isolation.main, [*pg, *out]))
    if args.dburl:
        sizes = "1000,10000,100000" if args.large else "1000,10000"
        steps.append(("dispatch", dispatch_scaling.main, [*pg, "--sizes", sizes, *out]))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dburl", help="PostgreSQL server URL (fresh databases are created)")
    parser.add_argument("--large", action="store_true", help="add 1M-row and 100k-booking runs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name, fn, fn_args in plan(args):
        start = time.perf_counter()
        print(f"=== {name}: {' '.join(fn_args)}", flush=True)
        code = fn(fn_args)  # type: ignore[operator]
        print(f"=== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
