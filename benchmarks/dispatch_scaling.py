"""Dispatch: throughput and scaling of ``myapp.services.dispatch.run`` on PostgreSQL.

    python -m benchmarks.dispatch_scaling --dburl postgresql://127.0.0.1/test
    python -m benchmarks.dispatch_scaling --dburl postgresql://127.0.0.1/test \
        --sizes 1000,10000,100000

Setup (fresh database, created and dropped): ``--companies`` companies with
``--drivers`` active drivers each and N pending bookings spread evenly over
them, every booking at its own pickup time in the future, so that every
booking can be assigned and the figure is the dispatch work itself.

Dispatchers are separate processes (their own GIL and their own pooled
connection), started and connected before the clock starts; each calls
``run(company_id)`` (one durable unit of work per company, in a scope of its
own, as a management command would) for its companies, and the clock stops
when the last dispatcher has answered. Two layouts:

sharded    dispatcher k of P takes the companies whose index is k modulo P: the
           way to run dispatchers in parallel (``run`` locks a company's drivers for
           its whole transaction, so two dispatchers on one company queue by design)
contended  every dispatcher runs every company, each starting at a different one:
           the race the locks exist for; it measures their cost and proves them

After every run the parent counts, from the database: bookings assigned, and
double assignments, the sum of (a) bookings that two dispatchers both report
having assigned (each dispatcher records what ``run`` returned in a side table
after the clock stopped), (b) a driver holding two bookings at one pickup
time, (c) a booking whose driver belongs to another company, (d) a booking
whose driver is not the one the dispatcher that assigned it reported. Then
every booking is made pending again (outside the timing) for the next run.
Rounds interleave the dispatcher counts in a rotating order; medians.

CPU accounting, to tell contention from CPU saturation on a shared machine:
each dispatcher reports its own CPU time and its PostgreSQL backend's
(``/proc/PID/stat``), and the time both spent *runnable but waiting for a
core* (``/proc/PID/schedstat``, the run-queue delay); the parent reads
``/proc/stat`` around the run, so the JSON also says how many cores the whole
machine was busy on (and how much of that was someone else: other processes,
PostgreSQL's background processes, hypervisor steal). ``--wait-events``
samples ``pg_stat_activity`` of the dispatchers' backends during the runs
(lock waits, WAL flushes, waiting for the client, running); the sampler costs
a little CPU itself, so it is off by default. Each run also counts the
transactions ``run`` retried (``retries``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from benchmarks.common import (
    DEFAULT_OUT,
    ROOT,
    fresh_pg_database,
    machine_info,
    median,
    migrate,
    plain_engine,
    rotated,
    save_figure,
    write_json,
)

#: goals of issue 7
GOAL_TWO_VS_ONE = 1.6
BASE_TIME = datetime(2031, 1, 1, tzinfo=UTC)
NOW = BASE_TIME - timedelta(days=1)  # before every pickup time: nothing has passed


# ---------------------------------------------------------------------------
# the dispatcher process


def dispatcher(url: str, companies: list[int]) -> None:
    """Connect, say ready, wait for "go", dispatch ``companies``, report, record assignments."""
    from myapp.db import Database, create_engine_for
    from myapp.db.settings import normalise_url
    from myapp.services.dispatch import run

    # one pooled connection, opened before the clock: every unit of work uses it, so its
    # server process is this dispatcher's PostgreSQL backend (whose CPU time is measured)
    db = Database(create_engine_for(normalise_url(url), pool_size=1, max_overflow=0))
    with db.engine.connect() as conn:
        backend_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    retries = RetryCounter()
    logging.getLogger("myapp.db").addHandler(retries)  # db_transaction logs each retry there
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    assigned: list[tuple[int, int]] = []
    unassigned = 0
    backend_cpu = process_cpu_seconds(backend_pid)
    sched = process_schedstat(os.getpid()), process_schedstat(backend_pid)
    cpu = time.process_time()
    start = time.perf_counter()
    for company_id in companies:
        with db.scope():
            result = run(company_id, now=NOW)
        assigned.extend(result.assigned)
        unassigned += len(result.unassigned)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    backend_end = process_cpu_seconds(backend_pid)
    sched_end = process_schedstat(os.getpid()), process_schedstat(backend_pid)
    report = {
        "assigned": len(assigned),
        "unassigned": unassigned,
        "seconds": elapsed,
        "dispatcher_cpu_s": cpu,
        "backend_cpu_s": (
            backend_end - backend_cpu
            if backend_end is not None and backend_cpu is not None
            else None
        ),
        # runnable but waiting for a core (run-queue delay), from /proc/PID/schedstat
        "dispatcher_runqueue_s": _delta(sched[0], sched_end[0], 1),
        "backend_runqueue_s": _delta(sched[1], sched_end[1], 1),
        # transactions retried (serialization failures, deadlocks, double bookings refused)
        "retries": retries.count,
    }
    print(json.dumps(report), flush=True)
    # after the clock: what this dispatcher believes it assigned, for the parent's checks
    with db.engine.begin() as conn:
        if assigned:
            conn.execute(
                text("INSERT INTO bench_assignments (booking_id, driver_id, dispatcher) "
                     "VALUES (:b, :d, :p)"),
                [{"b": b, "d": d, "p": os.getpid()} for b, d in assigned],
            )  # fmt: skip
    db.dispose()


class RetryCounter(logging.Handler):
    """Counts the "retrying" warnings of ``db_transaction`` (one per retried attempt)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``), None if unreadable.

    PostgreSQL runs on this machine for the benchmark, so a dispatcher can read the
    CPU time of its own backend process: with the dispatcher's own CPU time, that
    says how much of the two cores one booking costs.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def process_schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable waiting for a CPU) of ``pid``, None if unreadable.

    ``/proc/PID/schedstat``: the second figure is the run-queue delay, the direct sign of
    CPU saturation (the process was ready to run and no core was free).
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


def _delta(before: Any, after: Any, index: int) -> float | None:
    if before is None or after is None:
        return None
    return after[index] - before[index]


def machine_cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies of the whole machine since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


class WaitEventSampler:
    """Samples ``pg_stat_activity`` of the other backends of database ``url`` in a thread.

    Counts, per sample and backend, ``wait_event_type:wait_event`` (``running`` when the
    backend is active and waits for nothing, ``idle in transaction`` when it waits for its
    client between statements, ``idle`` between transactions).
    """

    def __init__(self, url: str, interval: float = 0.005) -> None:
        self.url = url
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> WaitEventSampler:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        import psycopg

        from myapp.db.settings import normalise_url

        dsn = normalise_url(self.url).replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            query = (
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
            self._ready.set()
            while not self._stop.is_set():
                rows = conn.execute(query).fetchall()
                self.samples += 1
                for state, kind, event in rows:
                    if state == "active":
                        key = f"{kind}:{event}" if kind else "running"
                    else:
                        key = state if not kind or kind == "Client" else f"{state} {kind}:{event}"
                    self.counts[key] += 1
                time.sleep(self.interval)


# ---------------------------------------------------------------------------
# the parent


def setup(url: str, bookings: int, companies: int, drivers: int) -> None:
    """Companies, drivers, ``bookings`` pending bookings, and the side table."""
    engine = plain_engine(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO companies (id, name, created, updated) VALUES (:i, :n, :t, :t)"),
                [{"i": c, "n": f"Company {c}", "t": now} for c in range(1, companies + 1)],
            )
            conn.execute(
                text(
                    "INSERT INTO drivers (company_id, name, active, created, updated) "
                    "VALUES (:c, :n, true, :t, :t)"
                ),
                [
                    {"c": c, "n": f"Driver {c}.{d}", "t": now}
                    for c in range(1, companies + 1)
                    for d in range(drivers)
                ],
            )
            conn.exec_driver_sql(
                "CREATE TABLE bench_assignments (booking_id integer, driver_id integer, "
                "dispatcher integer)"
            )
        raw = engine.raw_connection()
        try:
            pg = raw.driver_connection
            cols = (
                "company_id, pickup_time, pickup_address, dropoff_address, status, created, updated"
            )
            with pg.cursor() as cur, cur.copy(f"COPY bookings ({cols}) FROM STDIN") as copy:
                for i in range(bookings):
                    copy.write_row(
                        (
                            i % companies + 1,
                            BASE_TIME + timedelta(minutes=i),
                            f"{i} rue de la Gare",
                            f"{i} avenue du Port",
                            "pending",
                            now,
                            now,
                        )
                    )
            pg.commit()
        finally:
            raw.close()
        vacuum(engine)
    finally:
        engine.dispose()


def vacuum(engine: Any) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE bookings")
        conn.exec_driver_sql("VACUUM ANALYZE drivers")


def check_and_reset(url: str) -> dict[str, int]:
    """Count assignments and double assignments in the database; make all bookings pending."""
    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            one = conn.exec_driver_sql
            counts = {
                "assigned_in_db": one(
                    "SELECT count(*) FROM bookings WHERE status = 'assigned' "
                    "AND driver_id IS NOT NULL"
                ).scalar_one(),
                "reported_twice": one(
                    "SELECT count(*) - count(DISTINCT booking_id) FROM bench_assignments"
                ).scalar_one(),
                "driver_double_booked": one(
                    "SELECT count(*) FROM (SELECT driver_id, pickup_time FROM bookings "
                    "WHERE driver_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) AS d"
                ).scalar_one(),
                "driver_of_other_company": one(
                    "SELECT count(*) FROM bookings b JOIN drivers d ON d.id = b.driver_id "
                    "WHERE d.company_id <> b.company_id"
                ).scalar_one(),
                "driver_differs_from_report": one(
                    "SELECT count(*) FROM bench_assignments a JOIN bookings b "
                    "ON b.id = a.booking_id WHERE b.driver_id IS DISTINCT FROM a.driver_id"
                ).scalar_one(),
            }
            counts["double_assignments"] = (
                counts["reported_twice"]
                + counts["driver_double_booked"]
                + counts["driver_of_other_company"]
                + counts["driver_differs_from_report"]
            )
            one("UPDATE bookings SET status = 'pending', driver_id = NULL")
            one("TRUNCATE bench_assignments")
        vacuum(engine)
        return counts
    finally:
        engine.dispose()


def shares(companies: int, dispatchers: int, layout: str) -> list[list[int]]:
    ids = list(range(1, companies + 1))
    if layout == "sharded":
        return [ids[k::dispatchers] for k in range(dispatchers)]
    step = max(1, companies // dispatchers)
    return [rotated(ids, k * step) for k in range(dispatchers)]


def one_run(
    url: str, parts: list[list[int]], timeout: float, wait_events: bool = False
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = []
    try:
        for part in parts:
            cmd = [sys.executable, "-m", "benchmarks.dispatch_scaling", "--worker"]
            cmd += ["--url", url, "--worker-companies", ",".join(map(str, part))]
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"dispatcher did not start: {line!r}")
        sampler = WaitEventSampler(url) if wait_events else None
        if sampler is not None:
            sampler.__enter__()
        machine = machine_cpu_jiffies()
        start = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = [json.loads(p.stdout.readline()) for p in procs]
        wall = time.perf_counter() - start
        machine_end = machine_cpu_jiffies()
        if sampler is not None:
            sampler.__exit__(None, None, None)
        for p in procs:
            p.stdin.close()
            if p.wait(timeout=timeout) != 0:
                raise RuntimeError(f"a dispatcher failed with exit code {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assigned = sum(r["assigned"] for r in reports)
    cpu = sum(r["dispatcher_cpu_s"] for r in reports)
    backend = [r["backend_cpu_s"] for r in reports]
    backend_cpu = sum(backend) if None not in backend else None
    queued = [r.get(k) for r in reports for k in ("dispatcher_runqueue_s", "backend_runqueue_s")]
    out: dict[str, Any] = {
        "seconds": wall,
        "assigned_reported": assigned,
        "dispatcher_cpu_s": cpu,
        "backend_cpu_s": backend_cpu,
        # summed over the dispatchers and their backends: time ready to run but without a core
        "runqueue_s": sum(queued) if None not in queued else None,
        "retries": sum(r.get("retries", 0) for r in reports),
        "loadavg_1min_after": os.getloadavg()[0],
        "per_dispatcher": reports,
    }
    if machine is not None and machine_end is not None:
        tick = os.sysconf("SC_CLK_TCK")
        busy = (machine_end[0] - machine[0]) / tick / wall
        ours = (cpu + (backend_cpu or 0.0)) / wall
        out["machine_cores_busy"] = busy
        # everything else on the machine during the run: other engineers' processes, the
        # parent, PostgreSQL's own background processes (WAL writer...); clamped at 0 (jiffies)
        out["others_cores_busy"] = max(0.0, busy - ours)
        out["steal_cores"] = (machine_end[1] - machine[1]) / tick / wall
    if sampler is not None:
        out["wait_events"] = dict(sampler.counts.most_common())
        out["wait_event_samples"] = sampler.samples
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for n in args.sizes:
        with fresh_pg_database(args.dburl) as url:
            migrate(url)
            setup(url, n, args.companies, args.drivers)
            rounds = args.rounds if n < 100_000 else args.rounds_large
            configs = [(layout, p) for layout in args.layouts for p in args.dispatchers]
            runs: dict[str, list[dict[str, Any]]] = {f"{lay}/{p}": [] for lay, p in configs}
            for r in range(rounds):
                for layout, p in rotated(configs, r):
                    run = one_run(
                        url, shares(args.companies, p, layout), args.timeout, args.wait_events
                    )
                    run.update(check_and_reset(url))
                    if run["assigned_in_db"] != n:
                        raise RuntimeError(
                            f"{n} bookings, {layout}/{p}: {run['assigned_in_db']} assigned, not all"
                        )
                    run["bookings_per_s"] = n / run["seconds"]
                    total_cpu = run["dispatcher_cpu_s"] + (run["backend_cpu_s"] or 0.0)
                    run["cpu_ms_per_booking"] = total_cpu * 1000 / n
                    run["cores_busy"] = total_cpu / run["seconds"]
                    runs[f"{layout}/{p}"].append(run)
                    print(
                        f"  {n:>7} bookings round {r + 1}/{rounds} {layout:<9} {p} dispatcher(s): "
                        f"{run['bookings_per_s']:>8.0f} bookings/s, "
                        f"CPU {run['cpu_ms_per_booking']:.3f} ms/booking on "
                        f"{run['cores_busy']:.2f} cores, "
                        f"double assignments {run['double_assignments']}" + _cpu_note(run),
                        flush=True,
                    )
                    if "wait_events" in run:
                        total = sum(run["wait_events"].values()) or 1
                        print(
                            "      wait events: "
                            + ", ".join(
                                f"{k} {v * 100 / total:.0f}%" for k, v in run["wait_events"].items()
                            ),
                            flush=True,
                        )
        per: dict[str, Any] = {}
        for key, rs in runs.items():
            per[key] = {
                "bookings_per_s": median([x["bookings_per_s"] for x in rs]),
                "seconds": median([x["seconds"] for x in rs]),
                "double_assignments": sum(x["double_assignments"] for x in rs),
                "retries": sum(x.get("retries", 0) for x in rs),
                "cpu_ms_per_booking": median([x["cpu_ms_per_booking"] for x in rs]),
                "cores_busy": median([x["cores_busy"] for x in rs]),
                "runqueue_ms_per_booking": _median_of(rs, "runqueue_s", 1000 / int(n)),
                "others_cores_busy": _median_of(rs, "others_cores_busy"),
                "rounds": len(rs),
                "runs": rs,
            }
        for layout in args.layouts:
            one = per.get(f"{layout}/1")
            for p in args.dispatchers:
                if one is not None:
                    per[f"{layout}/{p}"]["speedup_vs_1"] = (
                        per[f"{layout}/{p}"]["bookings_per_s"] / one["bookings_per_s"]
                    )
        results[str(n)] = per
    return results


def _cpu_note(run: dict[str, Any]) -> str:
    note = f", retries {run.get('retries', 0)}"
    if run.get("runqueue_s") is not None:
        note += f", run-queue wait {run['runqueue_s'] / run['seconds']:.2f} (s/s)"
    if "others_cores_busy" in run:
        note += (
            f", machine busy {run['machine_cores_busy']:.2f} cores "
            f"(others {run['others_cores_busy']:.2f}, steal {run['steal_cores']:.2f})"
        )
    return note


def _median_of(runs: list[dict[str, Any]], key: str, scale: float = 1.0) -> float | None:
    values = [x[key] for x in runs if x.get(key) is not None]
    return median(values) * scale if values else None


def report(results: dict[str, Any]) -> str:
    keys = list(next(iter(results.values())))
    lines = ["== dispatch, PostgreSQL: bookings/s (speed-up vs 1 dispatcher), double assignments"]
    header = f"{'bookings':>9}" + "".join(f"{k:>22}" for k in keys)
    lines += [header, "-" * len(header)]
    for n, per in results.items():
        row = f"{int(n):>9}"
        for k in keys:
            cell = (
                f"{per[k]['bookings_per_s']:.0f} ({per[k].get('speedup_vs_1', 0):.2f}x) "
                f"{per[k]['double_assignments']}"
            )
            row += f"{cell:>22}"
        lines.append(row)
    lines.append(f"goals: 2 dispatchers >= {GOAL_TWO_VS_ONE}x one; double assignments 0")
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> Path:
    from benchmarks.common import pyplot

    plt = pyplot()
    sizes = [int(n) for n in results]
    keys = list(next(iter(results.values())))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k in keys:
        ax1.plot(sizes, [results[str(n)][k]["bookings_per_s"] for n in sizes], marker="o", label=k)
        ax2.plot(sizes, [results[str(n)][k]["seconds"] for n in sizes], marker="o", label=k)
    ax1.set_ylabel("bookings/s (median)")
    ax2.set_ylabel("seconds to dispatch all (median)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("pending bookings")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="layout/dispatchers", title_fontsize=8)
    ax2.set_yscale("log")
    fig.suptitle("Dispatch on PostgreSQL")
    return save_figure(fig, out, "dispatch_postgresql")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dburl", help="PostgreSQL server URL (fresh databases are created)")
    parser.add_argument(
        "--sizes", default="1000,10000", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--dispatchers", default="1,2,4", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--layouts", default="sharded,contended", type=lambda s: [x for x in s.split(",") if x]
    )
    parser.add_argument("--companies", type=int, default=8)
    parser.add_argument("--drivers", type=int, default=20, help="active drivers per company")
    parser.add_argument("--rounds", type=int, default=3, help="rounds below 100k bookings")
    parser.add_argument("--rounds-large", type=int, default=1, help="rounds at 100k or more")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--wait-events",
        action="store_true",
        help="sample pg_stat_activity wait events of the dispatchers' backends (costs some CPU)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--worker-companies", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        dispatcher(args.url, [int(x) for x in args.worker_companies.split(",") if x])
        return 0
    if not args.dburl:
        parser.error("--dburl (a PostgreSQL server URL) is required: dispatch needs row locks")
    for layout in args.layouts:
        if layout not in ("sharded", "contended"):
            parser.error(f"unknown layout {layout!r}")
    args.sizes = sorted(args.sizes)
    results = measure(args)
    data = {
        "benchmark": "dispatch",
        "backend": "postgresql",
        "machine": machine_info(args.dburl),
        "parameters": {
            k: getattr(args, k)
            for k in ("sizes", "dispatchers", "layouts", "companies", "drivers", "rounds")
        },
        "goals": {"two_vs_one": GOAL_TWO_VS_ONE, "double_assignments": 0},
        "results": results,
    }
    write_json(args.out, "dispatch_postgresql", data)
    if not args.no_plot:
        plot(results, args.out)
    print(report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
