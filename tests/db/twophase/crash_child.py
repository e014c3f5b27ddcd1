"""A process that commits one unit of work across two databases and stops at a given point.

    python crash_child.py MAIN_URL LEDGER_URL ID POINT

It prints ``AT <POINT>`` when it reaches POINT and waits there to be SIGKILLed
by the test (``tests/db/twophase/test_crash_recovery.py``). POINT is one of
``before-prepare``, ``after-first-prepare``, ``after-both-prepares``,
``after-decision``, ``after-first-commit``, or ``none`` (commit normally).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from sqlalchemy import event, text

from myapp.db import Database, current_session, db_transaction


def stop(point: str) -> None:
    print(f"AT {point}", flush=True)
    while True:  # the test kills us here
        time.sleep(60)


class StopAt(logging.Handler):
    """Stops the process when the coordinator logs the step of the point."""

    def __init__(self, point: str) -> None:
        super().__init__(logging.DEBUG)
        self.point = point
        self.prepared = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("prepared "):
            self.prepared += 1
            if self.point == "after-first-prepare" and self.prepared == 1:
                stop(self.point)
            if self.point == "after-both-prepares" and self.prepared == 2:
                stop(self.point)
        elif (" decided: commit" in message and self.point == "after-decision") or (
            message.startswith("committed prepared ") and self.point == "after-first-commit"
        ):
            stop(self.point)


def main(main_url: str, ledger_url: str, id_: int, point: str) -> None:
    db = Database.from_url(main_url, databases={"ledger": ledger_url})
    logger = logging.getLogger("myapp.db.twophase")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(StopAt(point))

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("PREPARE TRANSACTION") and point == "before-prepare":
            stop(point)  # every write sent, nothing prepared

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.database("ledger").engine, "before_cursor_execute", before)
    with db.scope(), db_transaction():
        for name in ("main", "ledger"):
            current_session(name).execute(
                text("INSERT INTO entries VALUES (:id, :note)"), {"id": id_, "note": name}
            )
    print("COMMITTED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
