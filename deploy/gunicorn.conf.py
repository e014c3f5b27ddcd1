"""gunicorn settings for running myapp with several worker processes (docs/deployment.md).

    PROMETHEUS_MULTIPROC_DIR=/run/myapp-metrics DATABASE_URL=postgresql://... \
    MYAPP_SESSION_SECRET=... gunicorn -c deploy/gunicorn.conf.py --paste production.ini

Environment (all optional): MYAPP_BIND (default 127.0.0.1:6543), MYAPP_WORKERS
(default 2), MYAPP_THREADS (threads per worker, default 4), MYAPP_GRACEFUL_TIMEOUT
(seconds a stopping worker may finish its requests, default 30).

What this file does for the unit-of-work machinery:

* ``preload_app``: the application (and its engine) is built once, in the master;
  ``post_fork`` then calls ``database.dispose(close=False)`` in each worker, so no
  worker ever uses a pooled connection inherited from the master (SQLAlchemy's
  rule for forking: the child starts with an empty pool, the parent's sockets
  are left alone);
* each worker has its own pool: ``sqlalchemy.pool_size`` + ``max_overflow`` per
  process, so the database sees at most workers x (pool_size + max_overflow)
  connections (size them against PostgreSQL's max_connections);
* Prometheus metrics in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (made here
  when unset, emptied at start), ``/metrics`` adds up the workers, and a dead
  worker's live gauges are dropped (``child_exit``);
* SIGTERM stops gracefully and loses no request (:class:`DrainingThreadWorker`): each
  worker makes the kernel start no new connection on the listening socket, takes every
  connection already waiting in its queue, closes the socket, then finishes the requests
  it has (up to MYAPP_GRACEFUL_TIMEOUT) and exits. gunicorn's own gthread worker stops
  calling accept() but keeps the socket open until its requests are done: connections that
  arrive meanwhile wait in the kernel's queue and are reset when the socket finally closes
  (gunicorn issue #3397).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from myapp.server import HANDSHAKE_LINGER, refuse_new_handshakes, take_queue

bind = os.environ.get("MYAPP_BIND", "127.0.0.1:6543")
workers = int(os.environ.get("MYAPP_WORKERS", "2"))
threads = int(os.environ.get("MYAPP_THREADS", "4"))
graceful_timeout = int(os.environ.get("MYAPP_GRACEFUL_TIMEOUT", "30"))
timeout = 60
preload_app = True
accesslog = None  # myapp logs one line per request itself (myapp.units)


def _fresh_metrics_directory() -> None:
    """Make (or empty) the metrics directory: values of a previous run must not be added in.

    Runs when gunicorn reads this file, before the application is loaded (with
    ``preload_app`` the master imports prometheus_client then).
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix="myapp-metrics-"
        )
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


_fresh_metrics_directory()


class DrainingThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, closing its listening socket on SIGTERM without a reset.

    gunicorn's worker, once told to stop, unregisters the listening socket but keeps it
    open until its last request is done; the master has closed its copy, yet the socket
    lives on in the workers, so the kernel keeps completing handshakes into its queue, and
    closing it at the end resets them all: requests sent and never read. Here, at the
    stop, before the in-flight requests are finished: the kernel is told to start no new
    handshake (:func:`myapp.server.refuse_new_handshakes`: shared by every process of the
    socket), the connections already queued are accepted and served like any other
    (:func:`myapp.server.take_queue`, for ``HANDSHAKE_LINGER`` seconds), then this
    process's copy of the socket is closed. A client connecting after that is refused
    (at once once every worker closed it, else when it retries its SYN a second later).
    """

    _listeners_closed = False

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive and not self._listeners_closed:
            self._listeners_closed = True  # run() calls this once its loop ended: a stop
            self._close_listeners()

    def _close_listeners(self) -> None:
        taken = 0
        for listener in self.sockets:
            refuse_new_handshakes(listener.sock)
        for listener in self.sockets:
            if listener.sock is None:
                continue

            def take(client: Any, address: Any, listener: Any = listener) -> None:
                self.nr_conns += 1
                client.setblocking(True)
                self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))

            taken += take_queue(listener.sock, take, HANDSHAKE_LINGER)
            listener.close()
        self.log.info(
            "Stopping: listening socket closed, %d queued connection(s) taken; "
            "finishing %d connection(s)",
            taken,
            self.nr_conns,
        )


worker_class = DrainingThreadWorker


def post_fork(server: Any, worker: Any) -> None:
    """A fresh connection pool in each worker (never a connection inherited from the master)."""
    app = worker.app.wsgi()
    registry = getattr(app, "registry", None)
    database = registry.get("db") if registry is not None else None
    if database is not None:
        database.dispose(close=False)  # the primary's, the read engine's and the replicas' pools


def child_exit(server: Any, worker: Any) -> None:
    """Drop the live gauges (pool checked out, overflow) of a worker that exited."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
