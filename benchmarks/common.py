"""Shared plumbing of the benchmarks: databases, machine facts, medians, JSON and plots.

Nothing here measures anything. Timing is always ``time.perf_counter()`` around
the work only; figures are medians over interleaved rounds (every competitor
runs once per round, in a rotating order), so a burst of load on this shared
machine hits the competitors alike.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from myapp.db.settings import normalise_url

ROOT = Path(__file__).resolve().parent.parent
#: where the figures go unless ``--out`` says otherwise
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
#: prefix of the PostgreSQL databases the benchmarks create (and drop)
PG_BENCH_PREFIX = "myapp_bench_"


# ---------------------------------------------------------------------------
# databases


@contextmanager
def fresh_pg_database(server_url: str) -> Iterator[str]:
    """A new PostgreSQL database on ``server_url``; yields its URL; dropped (FORCE) at exit.

    A MySQL/MariaDB server URL gets a MySQL database (utf8mb4, myapp's collation).
    """
    server = make_url(normalise_url(server_url))
    name = f"{PG_BENCH_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=_null_pool())
    if server.get_backend_name() in ("mysql", "mariadb"):
        from myapp.db.mysql import CHARSET, COLLATION

        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    f"CREATE DATABASE `{name}` CHARACTER SET {CHARSET} COLLATE {COLLATION}"
                )
            try:
                yield server.set(database=name).render_as_string(hide_password=False)
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.dispose()
        return
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the head revision with the project's migrations."""
    from myapp.db import create_engine_for
    from myapp.testing.plugin import run_migrations

    engine = create_engine_for(normalise_url(url))
    try:
        with engine.begin() as conn:
            run_migrations(conn)
    finally:
        engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def plain_engine(url: str, **options: Any) -> Engine:
    """A plain SQLAlchemy engine for the competitors of myapp, on equal terms with myapp's.

    Same URL normalisation (psycopg 3) and, on a SQLite file, the same
    connection PRAGMAs as :mod:`myapp.db.sqlite` (WAL, ``synchronous=NORMAL``,
    busy timeout, foreign keys), so that no competitor wins by fsyncing less.
    What it does *not* get is myapp's explicit ``BEGIN`` (pysqlite's own lazy
    transaction handling stays): that is a cost of myapp's design.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        options.setdefault("connect_args", {})["check_same_thread"] = False
        engine = sqlalchemy.create_engine(url, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sqlalchemy.create_engine(url, **options)


def backend_of(url: str) -> str:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        return "sqlite"
    return "mysql" if make_url(url).get_backend_name() in ("mysql", "mariadb") else "postgresql"


# ---------------------------------------------------------------------------
# measuring


def rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` rotated by ``round_index``: each competitor takes every position in turn."""
    k = round_index % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: Any = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port`` (or fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# reporting


def machine_info(dburl: str | None = None) -> dict[str, Any]:
    """What the figures were measured on (the machine is shared: see ``loadavg``)."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlalchemy": sqlalchemy.__version__,
        "loadavg_1_5_15min_at_the_end": list(os.getloadavg()),
    }
    try:
        with open("/proc/meminfo") as f:
            total = next(line for line in f if line.startswith("MemTotal"))
        info["memory_gib"] = round(int(total.split()[1]) / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line for line in f if line.startswith("model name")), "")
        info["cpu"] = model.split(":", 1)[1].strip() if model else None
    except OSError:
        pass
    if dburl:
        try:
            engine = sqlalchemy.create_engine(normalise_url(dburl), poolclass=_null_pool())
            with engine.connect() as conn:
                info["postgresql"] = conn.exec_driver_sql("SHOW server_version").scalar()
            engine.dispose()
        except Exception as exc:  # informative only
            info["postgresql"] = f"unknown ({type(exc).__name__})"
    return info


def write_json(out: Path, name: str, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
