"""A bounded keep-alive HTTP load generator (run as a subprocess: its own GIL, its own core).

Reads a JSON plan on standard input, prints a JSON result on standard output::

    {"concurrency": 4, "max_seconds": 10,
     "bursts": [{"name": "myapp", "port": 8001, "method": "GET",
                 "paths": ["/items/1", "/items/2"], "requests": 2000}, ...]}

Bursts run one after the other, in the given order. Each burst opens
``concurrency`` keep-alive connections (``http.client``, HTTP/1.1), warms
each with one request, then sends ``requests`` requests spread over the
connections, cycling through ``paths``, and stops early at ``max_seconds``.
Every response is read in full; one that is not a 200 with a JSON object is
counted as an error. Result per burst: completed requests, errors, elapsed
seconds, requests per second, median and 95th-percentile latency (ms).
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import threading
import time
from typing import Any


def _connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    return conn


def _one(conn: http.client.HTTPConnection, method: str, path: str) -> tuple[int, bytes]:
    if method == "POST":
        conn.request("POST", path, body=b"", headers={"Content-Length": "0"})
    else:
        conn.request(method, path)
    response = conn.getresponse()
    return response.status, response.read()


def _ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def run_burst(burst: dict[str, Any], concurrency: int, max_seconds: float) -> dict[str, Any]:
    port, method, paths = burst["port"], burst["method"], burst["paths"]
    total = int(burst["requests"])
    conns = [_connect(port) for _ in range(concurrency)]
    errors = [0] * concurrency
    done = [0] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    samples: list[str] = []
    for i, conn in enumerate(conns):  # warm-up: one request per connection
        status, body = _one(conn, method, paths[i % len(paths)])
        if not _ok(status, body):
            samples.append(f"warm-up: {status} {body[:200]!r}")
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(k: int) -> None:
        conn, lat = conns[k], latencies[k]
        share = total // concurrency + (1 if k < total % concurrency else 0)
        barrier.wait()
        for i in range(share):
            path = paths[(k + i * concurrency) % len(paths)]
            t0 = time.perf_counter()
            try:
                status, body = _one(conn, method, path)
            except (OSError, http.client.HTTPException) as exc:
                errors[k] += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = conns[k] = _connect(port)
                continue
            lat.append(time.perf_counter() - t0)
            done[k] += 1
            if not _ok(status, body):
                errors[k] += 1
                if len(samples) < 3:
                    samples.append(f"{status} {body[:200]!r}")
            if t0 > deadline[0]:
                break

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    flat = sorted(x for lat in latencies for x in lat)
    completed = sum(done)
    return {
        "name": burst["name"],
        "method": method,
        "requests": completed,
        "errors": sum(errors),
        "error_samples": samples,
        "elapsed_s": elapsed,
        "rps": completed / elapsed if elapsed > 0 else 0.0,
        "latency_median_ms": statistics.median(flat) * 1000 if flat else None,
        "latency_p95_ms": flat[int(len(flat) * 0.95) - 1] * 1000 if flat else None,
    }


def main() -> int:
    plan = json.load(sys.stdin)
    results = [
        run_burst(burst, int(plan["concurrency"]), float(plan["max_seconds"]))
        for burst in plan["bursts"]
    ]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
