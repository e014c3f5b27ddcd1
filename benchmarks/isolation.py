"""Test isolation: per-test overhead of the test toolkit, with JSON and a plot.

    python -m benchmarks.isolation                                        # SQLite
    python -m benchmarks.isolation --dburl postgresql://127.0.0.1/test    # + PostgreSQL
    python -m benchmarks.isolation --mysql-url mysql://root@127.0.0.1/test  # + MariaDB

The measuring is :mod:`benchmarks.fixture_overhead` (issue 3's script, reused
as it is: see its docstring for the modes); this wrapper runs it, checks the
figures against issue 7's goals and writes ``isolation.json`` and
``isolation.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks import fixture_overhead
from benchmarks.common import DEFAULT_OUT, machine_info, save_figure, write_json

#: issue 7's goals: savepoint fixture per test (ms) by backend, vs the raw floor, vs migrating
GOAL_MS = {"sqlite": 1.0, "postgresql": 3.0, "mysql": 3.0}
GOAL_VS_FLOOR = 1.3
GOAL_VS_MIGRATIONS = 50.0


def goals(results: dict[str, dict[str, float]]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for backend, r in results.items():
        fixture = r["savepoint fixture"]
        checks[backend] = {
            "savepoint_fixture_ms": fixture,
            "goal_ms": GOAL_MS[backend],
            "x_raw_floor": fixture / r["raw floor"],
            "x_session_floor": fixture / r["session floor"],
            "x_app_session_floor": fixture / r["app-session floor"],
            "migrations_x_slower": r["migrations"] / fixture,
            "create_drop_all_x_slower": r["create/drop_all"] / fixture,
            "doomed_x_savepoint": r["doomed fixture"] / fixture,
            "met": {
                "ms": fixture <= GOAL_MS[backend],
                "vs_raw_floor": fixture / r["raw floor"] <= GOAL_VS_FLOOR,
                "vs_migrations": r["migrations"] / fixture >= GOAL_VS_MIGRATIONS,
            },
        }
    return checks


def plot(results: dict[str, dict[str, float]], out: Path) -> Path:
    from benchmarks.common import pyplot

    plt = pyplot()
    backends = list(results)
    modes = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    height = 0.8 / len(backends)
    for i, b in enumerate(backends):
        ys = [k + i * height for k in range(len(modes))]
        bars = ax.barh(ys, [results[b][m] for m in modes], height, label=b)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
    ax.set_yticks([k + height * (len(backends) - 1) / 2 for k in range(len(modes))], modes)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per test (median of rounds, log scale)")
    ax.set_title("Per-test isolation overhead")
    ax.legend()
    return save_figure(fig, out, "isolation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dburl", help="PostgreSQL server URL: also measure PostgreSQL")
    parser.add_argument("--mysql-url", help="MySQL/MariaDB server URL: also measure it")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--slow-iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    results = {"sqlite": fixture_overhead.run_backend("sqlite", None, args)}
    if args.dburl:
        results["postgresql"] = fixture_overhead.run_backend("postgresql", args.dburl, args)
    if args.mysql_url:
        results["mysql"] = fixture_overhead.run_backend("mysql", args.mysql_url, args)
    checks = goals(results)
    data = {
        "benchmark": "isolation",
        "machine": machine_info(args.dburl),
        "parameters": {
            "rounds": args.rounds,
            "iterations": args.iterations,
            "slow_iterations": args.slow_iterations,
        },
        "goals": {
            "ms": GOAL_MS,
            "vs_raw_floor": GOAL_VS_FLOOR,
            "vs_migrations": GOAL_VS_MIGRATIONS,
        },
        "results_ms_per_test": results,
        "checks": checks,
    }
    write_json(args.out, "isolation", data)
    if not args.no_plot:
        plot(results, args.out)
    print(fixture_overhead.report(results))
    for backend, c in checks.items():
        print(
            f"{backend}: goals {'met' if all(c['met'].values()) else 'NOT all met'}: "
            + ", ".join(f"{k} {'ok' if v else 'missed'}" for k, v in c["met"].items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
