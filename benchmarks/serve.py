"""Serve one competitor of the request benchmark with waitress (run as a subprocess).

    python -m benchmarks.serve myapp --ini bench.ini --port 8001 --threads 4
    python -m benchmarks.serve flask --url sqlite:///items.sqlite --port 8002 --threads 4
    python -m benchmarks.serve bare  --url postgresql://127.0.0.1/db --port 8003 --threads 4

myapp is the real application, ``myapp.main`` built from the ini file by
``pyramid.paster.get_app`` with the ini's logging (as ``pserve`` does). All
three get the same waitress settings; the pool size of the competitors is
the thread count, as it is in the ini written for myapp.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def build_app(kind: str, *, ini: str | None = None, url: str | None = None, pool_size: int) -> Any:
    """The WSGI application of competitor ``kind`` (``myapp``, ``flask`` or ``bare``)."""
    if kind == "myapp":
        if not ini:
            raise SystemExit("myapp needs --ini")
        from pyramid.paster import get_app, setup_logging

        setup_logging(ini)
        return get_app(ini, "main")
    if not url:
        raise SystemExit(f"{kind} needs --url")
    if kind == "flask":
        from benchmarks.flask_items import create_app

        return create_app(url, pool_size=pool_size)
    if kind == "bare":
        from benchmarks.bare_items import create_app as create_bare

        return create_bare(url, pool_size=pool_size)
    raise SystemExit(f"unknown competitor {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve one benchmark competitor with waitress")
    parser.add_argument("kind", choices=["myapp", "flask", "bare"])
    parser.add_argument("--ini")
    parser.add_argument("--url")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    app = build_app(args.kind, ini=args.ini, url=args.url, pool_size=args.threads)
    # waitress warns on every request queued while all its threads are busy, which a
    # saturating benchmark does all the time: silence that in every competitor alike
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    import waitress

    waitress.serve(
        app,
        host="127.0.0.1",
        port=args.port,
        threads=args.threads,
        ident="bench",
        _quiet=True,
        clear_untrusted_proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
