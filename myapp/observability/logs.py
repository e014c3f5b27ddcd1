"""Log formats: JSON lines, or text with the request id; selectable in the ini file.

Two ways to choose, both in the ini file:

* the application setting ``myapp.log_format = json`` (or ``text``): at startup
  the handlers of the root logger get :class:`JsonFormatter` (or
  :data:`TEXT_FORMAT`, which carries the request id);
* or the logging sections themselves: ``[formatter_json]`` with
  ``class = myapp.observability.logs.JsonFormatter``.

Unset, the logging configuration is left exactly as the ini file wrote it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from .context import install_record_factory

LOG_FORMAT_SETTING = "myapp.log_format"
TEXT_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)s][%(threadName)s][%(request_id)s] %(message)s"

#: attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = set(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id,
    the record's ``extra=`` fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_log_format(settings: dict[str, Any]) -> None:
    """Apply ``myapp.log_format`` (``json``/``text``) to the root logger's handlers, if set."""
    install_record_factory()
    choice = str(settings.get(LOG_FORMAT_SETTING) or "").strip().lower()
    if not choice:
        return
    if choice == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif choice == "text":
        formatter = logging.Formatter(TEXT_FORMAT)
    else:
        from pyramid.exceptions import ConfigurationError

        raise ConfigurationError(f"{LOG_FORMAT_SETTING}: expected 'json' or 'text', got {choice!r}")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
