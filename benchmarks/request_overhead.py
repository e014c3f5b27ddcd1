"""Request overhead: myapp vs seed 004's Flask ``session_scope()`` vs a bare WSGI function.

    python -m benchmarks.request_overhead --db sqlite
    python -m benchmarks.request_overhead --db postgresql --dburl postgresql://127.0.0.1/test
    python -m benchmarks.request_overhead --db both --dburl postgresql://127.0.0.1/test

The same two endpoints, ``GET /items/{id}`` and ``POST /items``, served three ways:

myapp   the real application (``myapp.main`` from an ini file written for the run:
        the ``prod`` profile, this database, logging at WARN), API and dashboard included
flask   seed 004's design (:mod:`benchmarks.flask_items`)
bare    a WSGI function over SQLAlchemy Core (:mod:`benchmarks.bare_items`)

Each is its own waitress process with the same thread count (``--threads``)
and a pool of that many connections (no overflow, no pre-ping) on the same
database: a temporary SQLite file, or a fresh PostgreSQL database created on
``--dburl``'s server and dropped at the end, migrated with myapp's migrations
and seeded with ``--items`` items. A client process (:mod:`benchmarks.loadgen`)
sends bounded bursts over ``--concurrency`` keep-alive connections on loopback.
Every round runs every (endpoint, competitor) burst once, competitors in a
rotating order; the figures are the medians over the rounds of requests per
second, and the ratios of the medians. A burst with an error response
invalidates the run (the script exits non-zero).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from benchmarks.common import (
    DEFAULT_OUT,
    ROOT,
    free_port,
    fresh_pg_database,
    machine_info,
    median,
    migrate,
    plain_engine,
    rotated,
    save_figure,
    wait_for_port,
    write_json,
)

COMPETITORS = ("myapp", "flask", "bare")
ENDPOINTS = ("GET /items/{id}", "POST /items")
#: goals of issue 7: myapp / competitor
GOALS = {"flask": 1.2, "bare": 0.5}

INI_TEMPLATE = """\
[app:main]
use = egg:myapp
myapp.env = prod
myapp.expose_errors = false
myapp.session_secret = {secret}
pyramid.reload_templates = false
pyramid.debug_authorization = false
pyramid.debug_notfound = false
pyramid.debug_routematch = false
sqlalchemy.url = {url}
sqlalchemy.pool_size = {pool}
sqlalchemy.max_overflow = 0
sqlalchemy.pool_recycle = 1800
sqlalchemy.pool_pre_ping = false
sqlalchemy.expire_on_commit = true
retry.attempts = 3

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s
"""


def write_ini(path: Path, url: str, pool: int) -> Path:
    """An ini file for myapp on ``url``: production settings, pool of ``pool``, WARN logging."""
    path.write_text(
        INI_TEMPLATE.format(url=url.replace("%", "%%"), pool=pool, secret=secrets.token_hex(24))
    )
    return path


def seed_items(url: str, count: int) -> None:
    """Insert ``count`` items named ``Item #<id>`` (ids 1..count on a fresh database)."""
    from benchmarks.bare_items import items

    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(items), [{"name": None} for _ in range(count)])
            if conn.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("UPDATE items SET name = CONCAT('Item #', id)")
            else:
                conn.exec_driver_sql("UPDATE items SET name = 'Item #' || id")
    finally:
        engine.dispose()


@contextmanager
def database(kind: str, dburl: str | None, tmp: Path) -> Iterator[str]:
    """A migrated, empty database of ``kind``: yields its URL."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'items.sqlite'}"
        migrate(url)
        yield url
        return
    if not dburl:
        raise SystemExit(f"--db {kind} needs --dburl (a {kind} server URL)")
    with fresh_pg_database(dburl) as url:
        migrate(url)
        yield url


@contextmanager
def servers(url: str, tmp: Path, threads: int) -> Iterator[dict[str, int]]:
    """The three competitors, each a waitress process: yields ``{name: port}``; stops them."""
    ini = write_ini(tmp / "bench.ini", url, threads)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("DATABASE_URL", None)  # it would override the ini's URL
    env.pop("MYAPP_ENV", None)
    try:
        for name in COMPETITORS:
            port = free_port()
            cmd = [sys.executable, "-m", "benchmarks.serve", name, "--port", str(port)]
            cmd += ["--threads", str(threads)]
            cmd += ["--ini", str(ini)] if name == "myapp" else ["--url", url]
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env)
            ports[name] = port
        for name, port in ports.items():
            wait_for_port(port, timeout=60, proc=procs[name])
        yield ports
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_loadgen(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen"],
        input=json.dumps(plan).encode(),
        capture_output=True,
        cwd=ROOT,
        check=False,
        timeout=plan["max_seconds"] * len(plan["bursts"]) + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.decode()[-2000:]}")
    return json.loads(out.stdout)


def check_same_answers(ports: dict[str, int]) -> None:
    """The three competitors answer the same JSON for the same item, and 404 alike."""
    import http.client

    answers = {}
    for name, port in ports.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/items/1")
        r = conn.getresponse()
        answers[name] = (r.status, json.loads(r.read()))
        conn.request("GET", "/items/999999999")
        r = conn.getresponse()
        missing = (r.status, json.loads(r.read()))
        conn.close()
        if missing != (404, {"error": "not found"}):
            raise RuntimeError(f"{name}: GET of a missing item answered {missing}")
    if len({json.dumps(a, sort_keys=True) for a in answers.values()}) != 1:
        raise RuntimeError(f"the competitors disagree on GET /items/1: {answers}")


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, servers(url, Path(tmp), args.threads) as ports:
        check_same_answers(ports)
        paths = {
            "GET /items/{id}": [f"/items/{i}" for i in range(1, args.items + 1)],
            "POST /items": ["/items"],
        }
        rps: dict[str, dict[str, list[float]]] = {
            e: {c: [] for c in COMPETITORS} for e in ENDPOINTS
        }
        latency: dict[str, dict[str, list[float]]] = {
            e: {c: [] for c in COMPETITORS} for e in ENDPOINTS
        }
        # warm-up round (not counted): imports, pools, compiled-statement caches
        warm = [
            {"name": c, "port": ports[c], "method": e.split()[0], "paths": paths[e],
             "requests": max(50, args.requests // 10), "endpoint": e}
            for e in ENDPOINTS for c in COMPETITORS
        ]  # fmt: skip
        run_loadgen({"concurrency": args.concurrency, "max_seconds": 5, "bursts": warm})
        for r in range(args.rounds):
            bursts = []
            for e in rotated(list(ENDPOINTS), r):
                for c in rotated(list(COMPETITORS), r):
                    bursts.append(
                        {"name": c, "port": ports[c], "method": e.split()[0], "paths": paths[e],
                         "requests": args.requests, "endpoint": e}
                    )  # fmt: skip
            results = run_loadgen(
                {"concurrency": args.concurrency, "max_seconds": args.max_seconds, "bursts": bursts}
            )
            for burst, result in zip(bursts, results, strict=True):
                if result["errors"]:
                    raise RuntimeError(
                        f"round {r + 1}: {burst['name']} {burst['endpoint']}: "
                        f"{result['errors']} error responses, e.g. {result['error_samples']}"
                    )
                rps[burst["endpoint"]][burst["name"]].append(result["rps"])
                latency[burst["endpoint"]][burst["name"]].append(result["latency_median_ms"])
            print(
                f"  round {r + 1}/{args.rounds}: "
                + "; ".join(
                    f"{e.split()[0]} " + " ".join(f"{c}={rps[e][c][-1]:.0f}" for c in COMPETITORS)
                    for e in ENDPOINTS
                ),
                flush=True,
            )
    figures: dict[str, Any] = {}
    for e in ENDPOINTS:
        med = {c: median(rps[e][c]) for c in COMPETITORS}
        figures[e] = {
            "rps_median": med,
            "rps_rounds": rps[e],
            "latency_median_ms": {c: median(latency[e][c]) for c in COMPETITORS},
            "ratios": {
                "myapp/flask": med["myapp"] / med["flask"],
                "myapp/bare": med["myapp"] / med["bare"],
                "flask/bare": med["flask"] / med["bare"],
            },
        }
    return figures


def report(backend: str, figures: dict[str, Any]) -> str:
    lines = [f"== request overhead, {backend} (median requests/s over the rounds)"]
    header = f"{'endpoint':<18}" + "".join(f"{c:>9}" for c in COMPETITORS)
    header += f"{'myapp/flask':>13}{'myapp/bare':>12}"
    lines += [header, "-" * len(header)]
    for e, f in figures.items():
        row = f"{e:<18}" + "".join(f"{f['rps_median'][c]:>9.0f}" for c in COMPETITORS)
        row += f"{f['ratios']['myapp/flask']:>12.2f}x{f['ratios']['myapp/bare']:>11.2f}x"
        lines.append(row)
    lines.append(
        f"goals: myapp >= {GOALS['flask']}x flask, >= {GOALS['bare']}x bare "
        "(see docs/benchmarks.md)"
    )
    return "\n".join(lines)


def plot(backend: str, figures: dict[str, Any], out: Path) -> Path:
    from benchmarks.common import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.26
    for i, c in enumerate(COMPETITORS):
        values = [figures[e]["rps_median"][c] for e in ENDPOINTS]
        bars = ax.bar([x + (i - 1) * width for x in range(len(ENDPOINTS))], values, width, label=c)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(ENDPOINTS)), ENDPOINTS)
    ax.set_ylabel("requests/s (median of rounds)")
    ax.set_title(f"Request overhead, {backend} (waitress, same threads, loopback)")
    ax.legend()
    return save_figure(fig, out, f"request_overhead_{backend}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mysql", "both"], default="sqlite")
    parser.add_argument(
        "--dburl",
        help="PostgreSQL or MySQL/MariaDB server URL (a fresh database is created); "
        "mysql+pymysql:// or mysql+mysqldb:// picks the driver",
    )
    parser.add_argument("--label", default="", help="suffix of the output files' backend name")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="requests per burst")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections")
    parser.add_argument("--threads", type=int, default=4, help="waitress threads (each server)")
    parser.add_argument("--items", type=int, default=1000, help="items to read back")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per burst")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp, database(backend, args.dburl, Path(tmp)) as url:
            seed_items(url, args.items)
            print(f"request overhead on {backend}: {args.rounds} rounds", flush=True)
            figures = measure(url, args)
        data = {
            "benchmark": "request_overhead",
            "backend": backend,
            "machine": machine_info(args.dburl if backend == "postgresql" else None),
            "dburl_driver": args.dburl.split(":", 1)[0] if args.dburl else None,
            "parameters": {
                k: getattr(args, k)
                for k in ("rounds", "requests", "concurrency", "threads", "items", "max_seconds")
            },
            "goals": {f"myapp/{k}": v for k, v in GOALS.items()},
            "results": figures,
        }
        write_json(args.out, f"request_overhead_{backend}{args.label}", data)
        if not args.no_plot:
            plot(backend + args.label, figures, args.out)
        print(report(backend, figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
