"""Batch load: bookings through ``db_batch_operation`` vs Core insertmanyvalues vs COPY.

    python -m benchmarks.batch_load --dburl postgresql://127.0.0.1/test    # 10k and 100k rows
    python -m benchmarks.batch_load --dburl postgresql://127.0.0.1/test \
        --sizes 10000,100000,1000000 --rounds-large 1                      # + 1M rows, once
    python -m benchmarks.batch_load --db sqlite                            # no COPY there
    python -m benchmarks.batch_load --db mysql --dburl mysql://root@127.0.0.1/test  # nor here

Competitors, each writing the same generated bookings (rows made lazily, one
at a time, so the generator itself holds nothing) in batches of
``--batch-size`` rows, every batch committed:

batch-orm   ``db_batch_operation()`` as seed 000 uses it: ``session.add(Booking(...))``
            and ``commit_batch()`` after every row (the ORM unit of work flushes the
            batch with insertmanyvalues and expunges it after the commit)
batch-bulk  ``db_batch_operation(auto_commit_batch=False)`` with one ORM bulk
            ``session.execute(insert(Booking), rows)`` per batch, then ``commit_batch()``
batch-core  the same with a Core statement on the table through the session,
            ``session.execute(insert(Booking.__table__), rows)``: what is left is the
            cost of ``db_batch_operation`` itself (transaction manager, events, commits)
core        SQLAlchemy Core: ``conn.execute(insert(bookings), rows)`` (insertmanyvalues)
            and ``conn.commit()`` per batch, on a plain engine
copy        PostgreSQL ``COPY bookings (...) FROM STDIN`` through psycopg's
            ``cursor.copy()`` / ``write_row()``, one COPY and commit per batch

Every run is a fresh subprocess (``--worker``). Figures: rows per second
(insert loop to last commit), the peak RSS of the load (Linux: the process's
``VmHWM``, reset through ``/proc/self/clear_refs`` once everything is imported
and connected, so imports do not hide it), and its growth over the RSS just
before the first row. The parent checks the row count after each
run and empties the table (outside the timing). Sizes are run smallest first;
rounds interleave the competitors in a rotating order; medians per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_OUT,
    ROOT,
    backend_of,
    fresh_pg_database,
    machine_info,
    median,
    migrate,
    peak_rss_mib,
    plain_engine,
    rotated,
    save_figure,
    write_json,
)

COMPETITORS = ("batch-orm", "batch-bulk", "batch-core", "core", "copy")
COLUMNS = (
    "company_id",
    "pickup_time",
    "pickup_address",
    "dropoff_address",
    "status",
    "created",
    "updated",
)
#: goals of issue 7
GOAL_VS_CORE = 0.8
GOAL_MEMORY = 1.2
BASE_TIME = datetime(2030, 1, 1, tzinfo=UTC)


def rows(n: int, company_id: int = 1) -> Iterator[dict[str, Any]]:
    """``n`` pending bookings, one dict at a time."""
    now = datetime.now(UTC)
    for i in range(n):
        yield {
            "company_id": company_id,
            "pickup_time": BASE_TIME + timedelta(seconds=i),
            "pickup_address": f"{i} rue de la Gare",
            "dropoff_address": f"{i} avenue du Port",
            "status": "pending",
            "created": now,
            "updated": now,
        }


def chunks(it: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in it:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


# ---------------------------------------------------------------------------
# the competitors (each runs in its own process)


def _run_batch(url: str, n: int, batch: int, target: Any = None) -> float:
    """``db_batch_operation`` in a scope: one ``add()`` per row (``target`` None, seed 000's
    style), or one ``insert(target)`` per chunk (an ORM entity or a Core table)."""
    from sqlalchemy import insert

    from myapp.db import Database, db_batch_operation
    from myapp.models import Booking

    db = Database.from_url(url)
    try:
        with db.scope():
            _ready()
            start = time.perf_counter()
            if target is None:
                with db_batch_operation(batch_size=batch) as (session, commit_batch):
                    for row in rows(n):
                        session.add(Booking(**row))
                        commit_batch()
            else:
                statement = insert(target)
                with db_batch_operation(batch_size=batch, auto_commit_batch=False) as (
                    session,
                    commit_batch,
                ):
                    for chunk in chunks(rows(n), batch):
                        session.execute(statement, chunk)
                        commit_batch()
            return time.perf_counter() - start
    finally:
        db.dispose()


def run_batch_orm(url: str, n: int, batch: int) -> float:
    return _run_batch(url, n, batch)


def run_batch_bulk(url: str, n: int, batch: int) -> float:
    from myapp.models import Booking

    return _run_batch(url, n, batch, Booking)


def run_batch_core(url: str, n: int, batch: int) -> float:
    from myapp.models import Booking

    return _run_batch(url, n, batch, Booking.__table__)


def run_core(url: str, n: int, batch: int) -> float:
    from sqlalchemy import insert

    from myapp.models import Booking

    engine = plain_engine(url)
    table = Booking.__table__
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            _ready()
            start = time.perf_counter()
            for chunk in chunks(rows(n), batch):
                conn.execute(insert(table), chunk)
                conn.commit()
            return time.perf_counter() - start
    finally:
        engine.dispose()


def run_copy(url: str, n: int, batch: int) -> float:
    if backend_of(url) != "postgresql":
        raise SystemExit("copy needs PostgreSQL")
    engine = plain_engine(url)
    sql = f"COPY bookings ({', '.join(COLUMNS)}) FROM STDIN"
    try:
        raw = engine.raw_connection()
        try:
            pg = raw.driver_connection
            _ready()
            start = time.perf_counter()
            for chunk in chunks(rows(n), batch):
                with pg.cursor() as cur, cur.copy(sql) as copy:
                    for row in chunk:
                        copy.write_row([row[c] for c in COLUMNS])
                pg.commit()
            return time.perf_counter() - start
        finally:
            raw.close()
    finally:
        engine.dispose()


RUNNERS = {
    "batch-orm": run_batch_orm,
    "batch-bulk": run_batch_bulk,
    "batch-core": run_batch_core,
    "core": run_core,
    "copy": run_copy,
}
_BASE_RSS: list[float] = []


def _ready() -> None:
    """Everything is imported and connected: remember the RSS, reset the high-water mark.

    Linux resets a process's peak RSS (``VmHWM``) when "5" is written to
    ``/proc/self/clear_refs``: the peak read at the end is then the peak of the
    load itself, not of the imports before it.
    """
    _BASE_RSS.append(current_rss_mib())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak then includes the start-up
        pass


def vm_hwm_mib() -> float | None:
    """The process's peak RSS since the last reset (``VmHWM``), in MiB; None if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def worker(name: str, url: str, n: int, batch: int) -> dict[str, Any]:
    seconds = RUNNERS[name](url, n, batch)
    hwm = vm_hwm_mib()
    return {
        "competitor": name,
        "rows": n,
        "seconds": seconds,
        "rows_per_s": n / seconds,
        # the peak RSS of the load (VmHWM reset just before the first row); ru_maxrss
        # (the whole process, imports included) where /proc is not available
        "peak_rss_mib": hwm if hwm is not None else peak_rss_mib(),
        "process_peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": _BASE_RSS[0] if _BASE_RSS else None,
    }


# ---------------------------------------------------------------------------
# the parent


def prepare(url: str) -> None:
    """One company (id 1) to book for; the bookings table empty."""
    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            now = datetime.now(UTC)
            if backend_of(url) == "sqlite":
                now = now.replace(tzinfo=None)
            conn.exec_driver_sql(
                "INSERT INTO companies (id, name, created, updated) VALUES (1, 'Bench', ?, ?)"
                if backend_of(url) == "sqlite"
                else "INSERT INTO companies (id, name, created, updated) "
                "VALUES (1, 'Bench', %(c)s, %(c)s)",
                (now, now) if backend_of(url) == "sqlite" else {"c": now},
            )
    finally:
        engine.dispose()


def empty_bookings(url: str) -> int:
    """Count the bookings, then delete them all (outside any timing); return the count."""
    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            count = conn.exec_driver_sql("SELECT count(*) FROM bookings").scalar_one()
            if backend_of(url) == "postgresql":
                conn.exec_driver_sql("TRUNCATE bookings RESTART IDENTITY CASCADE")
            else:
                conn.exec_driver_sql("DELETE FROM bookings")
        if backend_of(url) == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE bookings")
        return count
    finally:
        engine.dispose()


def spawn(name: str, url: str, n: int, batch: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.batch_load", "--worker", name, "--url", url]
    cmd += ["--rows", str(n), "--batch-size", str(batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=env, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} {n}: worker failed: {out.stderr.decode()[-3000:]}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def measure(url: str, args: argparse.Namespace, competitors: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for n in args.sizes:
        rounds = args.rounds if n < 1_000_000 else args.rounds_large
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in competitors}
        for r in range(rounds):
            for name in rotated(competitors, r):
                result = spawn(name, url, n, args.batch_size, args.timeout)
                written = empty_bookings(url)
                if written != n:
                    raise RuntimeError(f"{name} {n}: {written} bookings written instead of {n}")
                runs[name].append(result)
                print(
                    f"  {n:>8} rows round {r + 1}/{rounds} {name:<10} "
                    f"{result['rows_per_s']:>9.0f} rows/s  "
                    f"peak RSS {result['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
        per = {}
        for name, rs in runs.items():
            per[name] = {
                "rows_per_s": median([x["rows_per_s"] for x in rs]),
                "seconds": median([x["seconds"] for x in rs]),
                "peak_rss_mib": median([x["peak_rss_mib"] for x in rs]),
                "rss_growth_mib": median([x["peak_rss_mib"] - x["rss_before_mib"] for x in rs]),
                "rounds": len(rs),
            }
        results[str(n)] = per
    return results


def summarise(results: dict[str, Any], competitors: list[str]) -> dict[str, Any]:
    sizes = list(results)
    summary: dict[str, Any] = {"vs_core": {}, "memory_ratio_largest_vs_smallest": {}}
    for n in sizes:
        core = results[n]["core"]["rows_per_s"]
        summary["vs_core"][n] = {c: results[n][c]["rows_per_s"] / core for c in competitors}
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        for c in competitors:
            summary["memory_ratio_largest_vs_smallest"][c] = (
                results[last][c]["peak_rss_mib"] / results[first][c]["peak_rss_mib"]
            )
    return summary


def report(backend: str, results: dict[str, Any], summary: dict[str, Any]) -> str:
    competitors = list(next(iter(results.values())))
    lines = [f"== batch load, {backend}: rows/s (x core) and peak RSS MiB (growth), medians"]
    header = f"{'rows':>9}" + "".join(f"{c:>27}" for c in competitors)
    lines += [header, "-" * len(header)]
    for n, per in results.items():
        row = f"{int(n):>9}"
        for c in competitors:
            cell = (
                f"{per[c]['rows_per_s']:.0f} ({summary['vs_core'][n][c]:.2f}x) "
                f"{per[c]['peak_rss_mib']:.0f}({per[c]['rss_growth_mib']:+.0f})"
            )
            row += f"{cell:>27}"
        lines.append(row)
    if summary["memory_ratio_largest_vs_smallest"]:
        lines.append(
            "peak RSS, largest / smallest size: "
            + ", ".join(
                f"{c} {v:.2f}x" for c, v in summary["memory_ratio_largest_vs_smallest"].items()
            )
        )
    lines.append(f"goals: >= {GOAL_VS_CORE}x core; peak memory <= {GOAL_MEMORY}x from 10k to 1M")
    return "\n".join(lines)


def plot(backend: str, results: dict[str, Any], out: Path) -> Path:
    from benchmarks.common import pyplot

    plt = pyplot()
    sizes = [int(n) for n in results]
    competitors = list(next(iter(results.values())))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for c in competitors:
        ax1.plot(sizes, [results[str(n)][c]["rows_per_s"] for n in sizes], marker="o", label=c)
        ax2.plot(sizes, [results[str(n)][c]["peak_rss_mib"] for n in sizes], marker="o", label=c)
    for ax, label in ((ax1, "rows/s (median)"), (ax2, "peak RSS, MiB (median)")):
        ax.set_xscale("log")
        ax.set_xlabel("bookings inserted")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax2.set_ylim(bottom=0)
    ax1.set_yscale("log")
    fig.suptitle(f"Batch load, {backend}")
    return save_figure(fig, out, f"batch_load_{backend}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mysql"], default="postgresql")
    parser.add_argument(
        "--dburl", help="PostgreSQL or MySQL/MariaDB server URL (a fresh database is created)"
    )
    parser.add_argument(
        "--sizes", default="10000,100000", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds below 1M rows")
    parser.add_argument("--rounds-large", type=int, default=1, help="rounds at 1M rows or more")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--competitors", default=",".join(COMPETITORS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", choices=COMPETITORS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.url, args.rows, args.batch_size)))
        return 0
    competitors = [c for c in args.competitors.split(",") if c]
    if args.db != "postgresql":
        competitors = [c for c in competitors if c != "copy"]  # PostgreSQL's COPY
    if "core" not in competitors:
        parser.error("core is the reference: keep it in --competitors")
    args.sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'batch.sqlite'}"
            migrate(url)
            prepare(url)
            results = measure(url, args, competitors)
        else:
            if not args.dburl:
                parser.error(f"--db {args.db} needs --dburl")
            with fresh_pg_database(args.dburl) as url:
                migrate(url)
                prepare(url)
                results = measure(url, args, competitors)
    summary = summarise(results, competitors)
    data = {
        "benchmark": "batch_load",
        "backend": args.db,
        "machine": machine_info(args.dburl if args.db == "postgresql" else None),
        "parameters": {
            "sizes": args.sizes,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "rounds_large": args.rounds_large,
        },
        "goals": {"vs_core": GOAL_VS_CORE, "memory_ratio": GOAL_MEMORY},
        "results": results,
        "summary": summary,
    }
    write_json(args.out, f"batch_load_{args.db}", data)
    if not args.no_plot:
        plot(args.db, results, args.out)
    print(report(args.db, results, summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
