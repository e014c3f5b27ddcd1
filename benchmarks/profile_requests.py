"""In-process request costs and profiles of the three Items API competitors.

    python -m benchmarks.profile_requests --db sqlite [--profile myapp] [--requests 3000]
    python -m benchmarks.profile_requests --db postgresql --dburl postgresql://127.0.0.1/test

No server, no sockets: each WSGI application is called directly in one
thread with a fresh environ per request (``webob.Request.blank``), so the
figure is the application's own CPU and database time per request, which is
what the request benchmark's server-side difference is made of. Rounds
interleave the competitors; the result is the median microseconds per
request. ``--profile NAME`` also profiles that competitor with pyinstrument
and prints the call tree (``--html PATH`` writes it as HTML).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webob import Request

from benchmarks.common import median, rotated
from benchmarks.request_overhead import COMPETITORS, database, seed_items, write_ini
from benchmarks.serve import build_app


def caller(app: Any, method: str, items: int) -> Callable[[int], None]:
    """``call(i)``: one request to ``app`` (GET item ``i % items + 1``, or a POST), checked."""

    def call(i: int) -> None:
        if method == "GET":
            environ = Request.blank(f"/items/{i % items + 1}").environ
        else:
            environ = Request.blank("/items", method="POST", body=b"").environ
        status: list[str] = []
        body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
        if not status or not status[0].startswith("200"):
            raise RuntimeError(f"{method} answered {status} {body[:200]!r}")

    return call


def measure(apps: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, list[float]]] = {}
    for method in ("GET", "POST"):
        calls = {name: caller(app, method, args.items) for name, app in apps.items()}
        for call in calls.values():  # warm-up
            for i in range(50):
                call(i)
        per = results.setdefault(method, {name: [] for name in apps})
        for r in range(args.rounds):
            for name in rotated(list(apps), r):
                gc.collect()
                start = time.perf_counter()
                for i in range(args.requests):
                    calls[name](i)
                per[name].append((time.perf_counter() - start) / args.requests * 1e6)
    return {m: {n: median(v) for n, v in per.items()} for m, per in results.items()}


def profile(app: Any, args: argparse.Namespace) -> None:
    from pyinstrument import Profiler

    for method in ("GET", "POST"):
        call = caller(app, method, args.items)
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for i in range(args.requests):
            call(i)
        profiler.stop()
        print(f"==== profile of {args.profile} {method}")
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        if args.html:
            Path(f"{args.html}.{method}.html").write_text(profiler.output_html())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--dburl")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--profile", choices=COMPETITORS)
    parser.add_argument("--html", help="with --profile: write PATH.GET.html and PATH.POST.html")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, database(args.db, args.dburl, Path(tmp)) as url:
        seed_items(url, args.items)
        ini = write_ini(Path(tmp) / "bench.ini", url, 4)
        apps = {name: build_app(name, ini=str(ini), url=url, pool_size=4) for name in COMPETITORS}
        figures = measure(apps, args)
        print(f"in-process, {args.db}: median microseconds per request")
        for method, per in figures.items():
            print(
                f"  {method:<5}"
                + "".join(f"{n}={per[n]:>7.0f}  " for n in COMPETITORS)
                + f"myapp/flask speed {per['flask'] / per['myapp']:.2f}x, "
                f"myapp/bare speed {per['bare'] / per['myapp']:.2f}x"
            )
        if args.profile:
            profile(apps[args.profile], args)
        for name, app in apps.items():
            engine = getattr(app, "engine", None) or (
                app.config["db_engine"] if name == "flask" else app.registry["db"].engine
            )
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
