"""The request id: ``X-Request-ID`` when sane, else generated; on every log record.

The id lives in a context variable for the duration of a request (or a
command), and a log record factory copies it onto every record as
``record.request_id`` (``"-"`` outside a request), so any formatter can
print ``%(request_id)s`` and the JSON formatter always does.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HEADER = "X-Request-ID"
#: what a client's request id may look like: 1 to 128 of letters, digits, ``-_.:@/+=``
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
NO_REQUEST = "-"

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "myapp_request_id", default=NO_REQUEST
)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (a random UUID)."""
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The client's id if it is sane (short, no spaces or control characters), else a new one."""
    if value and SANE_REQUEST_ID.match(value):
        return value
    return new_request_id()


def current_request_id() -> str:
    """The request id of the current request or command (``"-"`` outside one)."""
    return _request_id.get()


@contextmanager
def request_id_scope(request_id: str) -> Iterator[str]:
    """Make ``request_id`` the current one inside the block."""
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


_installed = False


def install_record_factory() -> None:
    """Give every log record a ``request_id`` attribute (idempotent, process-wide)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
