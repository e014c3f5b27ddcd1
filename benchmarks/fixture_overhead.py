#!/usr/bin/env python
"""Per-test overhead of the test toolkit's database isolation, side by side.

Not a test: a script that prints figures (never assert on timing; the CI
machines are shared and noisy). Run from the project root::

    python benchmarks/fixture_overhead.py                                  # SQLite
    python benchmarks/fixture_overhead.py --dburl postgresql://127.0.0.1/test  # + PostgreSQL

Each mode is one "test" with the same minimal body (one ``SELECT 1``, and a
commit where the mode allows one):

raw floor          plain SQLAlchemy: connect, begin, SAVEPOINT, SELECT 1, RELEASE,
                   rollback, close (what any per-test savepoint isolation must do)
session floor      the same through a plain SQLAlchemy ``Session`` bound to the
                   connection with ``join_transaction_mode="create_savepoint"`` (SQLAlchemy's
                   "join a session into an external transaction" recipe): the floor of any
                   fixture that gives the test an ORM session
app-session floor  the same with the application's session factory (the bridge to the
                   transaction manager: the commit goes through ``transaction``), set up by
                   hand: the floor of any fixture that gives the test myapp's session
savepoint fixture  ``myapp.testing.plugin.isolated_db`` (the ``db`` fixture): session
                   SELECT 1, ``db.session.commit()`` (a savepoint release), teardown with
                   the leak guard
doomed fixture     the same in the ``@pytest.mark.doomed`` mode: SELECT 1, no commit
create/drop_all    ``Base.metadata.create_all`` + SELECT 1 + ``drop_all`` per test
migrations         ``alembic upgrade head`` + SELECT 1 + ``downgrade base`` per test

Figures are medians over ``--rounds`` interleaved rounds (each the mean of its
iterations), in milliseconds per test, with ratios to the raw floor and to
the savepoint fixture. PostgreSQL runs in a fresh database (two, for the schema-building
modes) created for the benchmark and dropped at the end.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from myapp.db import Database, create_engine_for
from myapp.db.scope import Scope
from myapp.models import Base
from myapp.testing.plugin import isolated_db, run_migrations

SELECT_1 = select(1)


def floor(engine: Engine) -> Callable[[], None]:
    def one_test() -> None:
        conn = engine.connect()
        outer = conn.begin()
        sp = conn.begin_nested()
        conn.execute(SELECT_1)
        sp.commit()
        outer.rollback()
        conn.close()

    return one_test


def session_floor(engine: Engine) -> Callable[[], None]:
    def one_test() -> None:
        conn = engine.connect()
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        session.execute(SELECT_1)
        session.commit()
        session.close()
        outer.rollback()
        conn.close()

    return one_test


def app_session_floor(database: Database) -> Callable[[], None]:
    engine, factory = database.engine, database.session_factory

    def one_test() -> None:
        conn = engine.connect()
        outer = conn.begin()
        factory.configure(bind=conn, join_transaction_mode="create_savepoint")
        scope = Scope(factory, database=database, autobegin=True, kind="test")
        with scope.activate():
            scope.session.execute(SELECT_1)
            scope.session.commit()
        scope.close()
        outer.rollback()
        conn.close()
        factory.configure(bind=engine, join_transaction_mode="conditional_savepoint")

    return one_test


def savepoint_fixture(database: Database) -> Callable[[], None]:
    def one_test() -> None:
        with isolated_db(database) as db:
            db.session.execute(SELECT_1)
            db.session.commit()

    return one_test


def empty_fixture(database: Database) -> Callable[[], None]:
    def one_test() -> None:
        with isolated_db(database):
            pass

    return one_test


def doomed_fixture(database: Database) -> Callable[[], None]:
    def one_test() -> None:
        with isolated_db(database, doomed=True) as db:
            db.session.execute(SELECT_1)

    return one_test


def create_drop_all(engine: Engine) -> Callable[[], None]:
    import myapp.models  # noqa: F401  (registers every table)

    def one_test() -> None:
        Base.metadata.create_all(engine)
        with engine.connect() as conn:
            conn.execute(SELECT_1)
        Base.metadata.drop_all(engine)

    return one_test


def migrations(engine: Engine) -> Callable[[], None]:
    from alembic import command
    from alembic.config import Config

    def one_test() -> None:
        with engine.begin() as conn:
            run_migrations(conn)
        with engine.connect() as conn:
            conn.execute(SELECT_1)
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", "myapp:alembic")
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))

    return one_test


def measure(modes: dict[str, tuple[Callable[[], None], int]], rounds: int) -> dict[str, float]:
    """Per mode, the median over ``rounds`` of the mean time of its iterations, in ms.

    ``modes`` maps a name to ``(one_test, iterations)``. The rounds interleave
    the modes (round 1 of every mode, then round 2, ...), so a burst of load
    on the machine hits all of them alike instead of one.
    """
    for fn, iterations in modes.values():  # warm up: pools, caches, compiled statements
        for _ in range(max(1, iterations // 10)):
            fn()
    results: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, (fn, iterations) in modes.items():
            gc.collect()
            start = time.perf_counter()
            for _ in range(iterations):
                fn()
            results[name].append((time.perf_counter() - start) * 1000 / iterations)
    return {name: statistics.median(values) for name, values in results.items()}


@contextmanager
def backend_urls(name: str, dburl: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    """Two empty databases: one for the fixtures (migrated once), one for schema rebuilds."""
    if name == "sqlite":
        yield f"sqlite:///{tmp / 'fixtures.sqlite'}", f"sqlite:///{tmp / 'rebuild.sqlite'}"
        return
    from myapp.testing.database import test_database_for

    assert dburl is not None
    first, second = test_database_for(dburl), test_database_for(dburl)  # PostgreSQL or MySQL
    try:
        yield first.create(), second.create()
    finally:
        first.drop()
        second.drop()


def run_backend(name: str, dburl: str | None, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, backend_urls(name, dburl, Path(tmp)) as urls:
        engine = create_engine_for(urls[0], pool_size=5, max_overflow=10)
        rebuild = create_engine_for(urls[1], pool_size=5, max_overflow=10)
        try:
            with engine.begin() as conn:
                run_migrations(conn)
            database = Database(engine)
            n, slow = args.iterations, args.slow_iterations
            # the schema-building modes run after the others: their DDL (and, on
            # PostgreSQL, the WAL and checkpoints it causes) would slow the fast modes
            figures = measure(
                {
                    "raw floor": (floor(engine), n),
                    "session floor": (session_floor(engine), n),
                    "app-session floor": (app_session_floor(database), n),
                    "savepoint fixture": (savepoint_fixture(database), n),
                    "doomed fixture": (doomed_fixture(database), n),
                    "fixture, empty test": (empty_fixture(database), n),
                },
                args.rounds,
            )
            figures.update(
                measure(
                    {
                        "create/drop_all": (create_drop_all(rebuild), slow),
                        "migrations": (migrations(rebuild), 1),
                    },
                    args.rounds,
                )
            )
        finally:
            engine.dispose()
            rebuild.dispose()
    return figures


def report(results: dict[str, dict[str, float]]) -> str:
    backends = list(results)
    modes = list(next(iter(results.values())))
    lines = []
    header = f"{'per test (median ms)':<22}" + "".join(
        f"{b:>12} {'xfloor':>8} {'/fixture':>9}" for b in backends
    )
    lines.append(header)
    lines.append("-" * len(header))
    for mode in modes:
        row = f"{mode:<22}"
        for b in backends:
            value = results[b][mode]
            row += (
                f"{value:>12.3f} {value / results[b]['raw floor']:>7.2f}x"
                f" {value / results[b]['savepoint fixture']:>8.1f}x"
            )
        lines.append(row)
    lines.append("")
    for b in backends:
        r = results[b]
        lines.append(
            f"{b}: savepoint fixture {r['savepoint fixture']:.3f} ms/test = "
            f"{r['savepoint fixture'] / r['raw floor']:.2f}x the raw floor, "
            f"{r['savepoint fixture'] / r['session floor']:.2f}x the session floor, "
            f"{r['savepoint fixture'] / r['app-session floor']:.2f}x the app-session floor; "
            f"{r['migrations'] / r['savepoint fixture']:.0f}x faster than migrating per test, "
            f"{r['create/drop_all'] / r['savepoint fixture']:.0f}x faster than create/drop_all; "
            f"doomed mode {r['doomed fixture'] / r['savepoint fixture']:.2f}x the savepoint mode"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dburl", help="PostgreSQL server URL: also measure PostgreSQL")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per mode (default 9)")
    parser.add_argument(
        "--iterations", type=int, default=300, help="tests per round, fast modes (default 300)"
    )
    parser.add_argument(
        "--slow-iterations",
        type=int,
        default=3,
        help="tests per round for create/drop_all (migrations: one per round)",
    )
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {"sqlite": run_backend("sqlite", None, args)}
    if args.dburl:
        results["postgresql"] = run_backend("postgresql", args.dburl, args)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
