"""Request threads: WSGI calls on a worker thread of their own, as a real server runs them.

The ``testapp`` fixture sends every request through :func:`threaded_wsgi`
on the session's :class:`RequestThread`, so a request's unit of work (the
thread-local ``transaction.manager``) never collides with the test's.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from myapp.db import current_transaction, get_tm


class RequestThread:
    """Runs WSGI calls on one worker thread, as a real server would.

    The worker has its own thread-local transaction manager, so a request's
    unit of work never collides with the test's own (possibly open) one, and
    the request goes through pyramid_tm exactly as in production.
    """

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="testapp")
        self.used = False

    def run(self, fn: Callable[[], Any]) -> Any:
        self.used = True
        return self.executor.submit(fn).result()

    def open_transaction(self) -> Any:
        return self.executor.submit(lambda: current_transaction(get_tm())).result()

    def abort(self) -> None:
        self.executor.submit(lambda: get_tm().manager.abort_all()).result()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


_RequestThread = RequestThread  # the name tests/db/stack knew


def threaded_wsgi(app: Any, request_thread: RequestThread) -> Callable[..., list[bytes]]:
    """Wrap ``app`` so that every call runs on ``request_thread`` (as a server thread would)."""

    def threaded_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        def call() -> list[bytes]:
            result = app(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

        return request_thread.run(call)

    return threaded_app
