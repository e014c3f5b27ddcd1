"""Smoke tests: every benchmark of issue 7 runs end to end at tiny sizes, so none of them rots.

No timing assertions (the machine is shared and noisy): each benchmark must run
against the real components (waitress servers, subprocess workers, real
databases), and its JSON must be sane: every competitor measured, rates
positive, ratios consistent with the rates, zero double assignments, a plot
written. PostgreSQL runs use fresh databases the benchmarks create and drop.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from benchmarks import batch_load, dispatch_scaling, instructions, isolation, request_overhead
from benchmarks.common import PG_BENCH_PREFIX
from myapp.db.settings import normalise_url


def _dburl(request: pytest.FixtureRequest, backend: str) -> list[str]:
    if backend == "sqlite":
        return []
    return ["--dburl", request.config.getoption("--dburl")]


def _load(path: Path) -> dict[str, Any]:
    assert path.exists(), f"{path.name} was not written"
    return json.loads(path.read_text())


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _no_bench_database_left(request: pytest.FixtureRequest) -> None:
    engine = sqlalchemy.create_engine(normalise_url(request.config.getoption("--dburl")))
    try:
        with engine.connect() as conn:
            names = conn.exec_driver_sql("SELECT datname FROM pg_database").scalars().all()
    finally:
        engine.dispose()
    # other benchmark runs may be going on concurrently: only ours (this pid) must be gone
    assert not [n for n in names if n.startswith(f"{PG_BENCH_PREFIX}{os.getpid()}_")]


def test_request_overhead(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    code = request_overhead.main(
        ["--db", backend, *_dburl(request, backend), "--rounds", "2", "--requests", "30",
         "--items", "10", "--concurrency", "2", "--threads", "2", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = _load(tmp_path / f"request_overhead_{backend}.json")
    assert data["backend"] == backend
    assert set(data["results"]) == set(request_overhead.ENDPOINTS)
    for endpoint, figures in data["results"].items():
        rps = figures["rps_median"]
        assert set(rps) == {"myapp", "flask", "bare"}, endpoint
        assert all(_positive(v) for v in rps.values()), (endpoint, rps)
        assert all(len(r) == 2 for r in figures["rps_rounds"].values())
        assert figures["ratios"]["myapp/flask"] == pytest.approx(rps["myapp"] / rps["flask"])
        assert figures["ratios"]["myapp/bare"] == pytest.approx(rps["myapp"] / rps["bare"])
    assert (tmp_path / f"request_overhead_{backend}.png").stat().st_size > 0
    if backend == "postgresql":
        _no_bench_database_left(request)


def test_batch_load(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    code = batch_load.main(
        ["--db", backend, *_dburl(request, backend), "--sizes", "100,300", "--batch-size", "50",
         "--rounds", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = _load(tmp_path / f"batch_load_{backend}.json")
    expected = set(batch_load.COMPETITORS) - ({"copy"} if backend == "sqlite" else set())
    assert set(data["results"]) == {"100", "300"}
    for size, per in data["results"].items():
        assert set(per) == expected, size
        for name, figures in per.items():
            assert _positive(figures["rows_per_s"]), (size, name)
            assert _positive(figures["peak_rss_mib"]), (size, name)
        assert data["summary"]["vs_core"][size]["core"] == pytest.approx(1.0)
    assert set(data["summary"]["memory_ratio_largest_vs_smallest"]) == expected
    assert (tmp_path / f"batch_load_{backend}.png").stat().st_size > 0


def test_isolation(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    code = isolation.main(
        [*_dburl(request, backend), "--rounds", "1", "--iterations", "3",
         "--slow-iterations", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = _load(tmp_path / "isolation.json")
    backends = {"sqlite"} | ({"postgresql"} if backend == "postgresql" else set())
    assert set(data["results_ms_per_test"]) == backends
    for name, modes in data["results_ms_per_test"].items():
        for mode in ("raw floor", "savepoint fixture", "doomed fixture", "migrations"):
            assert _positive(modes[mode]), (name, mode)
        assert set(data["checks"][name]["met"]) == {"ms", "vs_raw_floor", "vs_migrations"}
    assert (tmp_path / "isolation.png").stat().st_size > 0


@pytest.mark.postgresql_only
def test_dispatch(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    code = dispatch_scaling.main(
        [*_dburl(request, backend), "--sizes", "60", "--dispatchers", "1,2", "--companies", "4",
         "--drivers", "3", "--rounds", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = _load(tmp_path / "dispatch_postgresql.json")
    per = data["results"]["60"]
    assert set(per) == {"sharded/1", "sharded/2", "contended/1", "contended/2"}
    for key, figures in per.items():
        assert _positive(figures["bookings_per_s"]), key
        assert _positive(figures["cpu_ms_per_booking"]), key
        assert figures["double_assignments"] == 0, key
        for run in figures["runs"]:
            assert run["assigned_in_db"] == 60, key
            assert run["double_assignments"] == 0, key
    assert per["sharded/2"]["speedup_vs_1"] == pytest.approx(
        per["sharded/2"]["bookings_per_s"] / per["sharded/1"]["bookings_per_s"]
    )
    assert (tmp_path / "dispatch_postgresql.png").stat().st_size > 0
    _no_bench_database_left(request)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    code = instructions.main(
        ["--db", "sqlite", "--requests", "3", "--warmup", "2", "--items", "10",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = _load(tmp_path / "instructions.json")
    for method in instructions.METHODS:
        per = data["results"]["sqlite"][method]
        assert set(per) == set(request_overhead.COMPETITORS)
        assert all(_positive(n) for n in per.values())
        # a request of any stack costs more than the bare WSGI function's
        assert per["bare"] < per["flask"] and per["bare"] < per["myapp"]
