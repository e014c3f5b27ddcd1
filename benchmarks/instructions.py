"""Instructions per request of the three Items API competitors, counted by callgrind.

    python -m benchmarks.instructions --db sqlite|postgresql|both --dburl postgresql://127.0.0.1/test

The request benchmark's figures move by ±20% on this shared machine, and an
A/B of a small change drowns in that. Instruction counts do not: each
competitor runs in its own process under ``valgrind --tool=callgrind`` with
collection switched off, builds its application (the same as
``benchmarks.profile_requests``: no server, a fresh environ per request),
warms up, then switches collection on (``callgrind_control -i on``) for
``--requests`` requests only. The figure is the count of machine instructions
the process executed per request, Python interpreter and C extensions
included; the database server's work (PostgreSQL runs in another process) is
not counted, SQLite's (in-process) is. Two runs of the same code agree within
about 0.3%, whatever else the machine is doing.

Instructions are not time (cache misses, system calls and waiting on the
database are not in them), so this complements the HTTP figures of
``benchmarks.request_overhead``; it does not replace them. The ratios are
printed as speed (fewer instructions = faster), like the other benchmarks.
Writes ``instructions.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_OUT, machine_info
from benchmarks.request_overhead import COMPETITORS, database, seed_items, write_ini

METHODS = ("GET", "POST")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def child(args: argparse.Namespace) -> int:
    """Inside valgrind: build one competitor, warm up, count ``--requests`` requests."""
    from benchmarks.profile_requests import caller
    from benchmarks.serve import build_app

    app = build_app(args.child, ini=args.ini, url=args.url, pool_size=4)
    call = caller(app, args.method, args.items)
    for i in range(args.warmup):
        call(i)
    toggle = ["callgrind_control", "-i"]
    subprocess.run([*toggle, "on", str(os.getpid())], check=True, capture_output=True)
    for i in range(args.requests):
        call(i)
    subprocess.run([*toggle, "off", str(os.getpid())], check=True, capture_output=True)
    return 0


def count(name: str, method: str, url: str, ini: Path, args: argparse.Namespace) -> float:
    """Instructions per request of ``name`` answering ``method`` (one valgrind process)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={Path(tmp) / 'callgrind.out'}",
            sys.executable, "-m", "benchmarks.instructions", "--child", name,
            "--method", method, "--url", url, "--ini", str(ini),
            "--requests", str(args.requests), "--warmup", str(args.warmup),
            "--items", str(args.items),
        ]  # fmt: skip
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, cwd=Path.cwd()
        )
    found = _COLLECTED.findall(proc.stderr)
    if proc.returncode != 0 or not found or int(found[-1]) == 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{name} {method} under callgrind failed ({proc.returncode}):\n{tail}")
    return int(found[-1]) / args.requests


def run_backend(kind: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp, database(kind, args.dburl, Path(tmp)) as url:
        seed_items(url, args.items)
        ini = write_ini(Path(tmp) / "bench.ini", url, 4)
        jobs = [(name, method) for method in METHODS for name in COMPETITORS]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            counts = list(pool.map(lambda job: count(*job, url, ini, args), jobs))
    results: dict[str, dict[str, float]] = {method: {} for method in METHODS}
    for (name, method), n in zip(jobs, counts, strict=True):
        results[method][name] = n
    return results


def report(kind: str, results: dict[str, dict[str, float]]) -> str:
    lines = [f"== {kind}: instructions per request (speed ratios: fewer is faster)"]
    for method, per in results.items():
        lines.append(
            f"  {method:<5}"
            + "".join(f"{name}={per[name] / 1e6:6.3f}M  " for name in COMPETITORS)
            + f"myapp/flask speed {per['flask'] / per['myapp']:.2f}x, "
            f"myapp/bare speed {per['bare'] / per['myapp']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--dburl", help="PostgreSQL server URL (a fresh database is created)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", choices=COMPETITORS, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ini", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(
            f"error: {', '.join(missing)} not found (Debian: apt install valgrind)", file=sys.stderr
        )
        return 2
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in kinds and not args.dburl:
        print("error: --db postgresql needs --dburl (a PostgreSQL server URL)", file=sys.stderr)
        return 2
    data: dict[str, Any] = {
        "benchmark": "instructions",
        "method": {"requests": args.requests, "warmup": args.warmup, "items": args.items},
        "machine": machine_info(args.dburl if "postgresql" in kinds else None),
        "results": {},
    }
    for kind in kinds:
        results = run_backend(kind, args)
        data["results"][kind] = results
        print(report(kind, results), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instructions.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
