"""No connection stays checked out after 1,000 mixed requests through the real stack.

The app is ``config.include("myapp")`` (the real routes and views) plus one
failing route, on a real engine-bound Database: every request takes a real
connection from the pool and must give it back, whatever its outcome.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import text
from stack_helpers import RealStack, add_view

ROUNDS = 200  # x 5 requests


def test_pool_is_empty_after_1000_mixed_requests(real: RealStack) -> None:
    def fails(request: Any) -> dict[str, Any]:
        request.dbsession.execute(text("SELECT 1"))  # holds a connection when it fails
        raise RuntimeError("a failing request")

    def configure(config: Any) -> None:
        add_view(config, "/t/fail", fails)

    app = real.app(configure)
    statuses: Counter[tuple[str, int]] = Counter()
    for n in range(ROUNDS):
        listed = app.get("/items")
        posted = app.post("/items")
        item = posted.json
        real.ids.add(item["id"])
        fetched = app.get(f"/items/{item['id']}")
        assert fetched.json == item
        missing = app.get("/items/999999999", status=404)
        failed = app.get("/t/fail", status=500)
        for kind, response in (
            ("list", listed),
            ("post", posted),
            ("get", fetched),
            ("missing", missing),
            ("fail", failed),
        ):
            statuses[kind, response.status_int] += 1
        if n % 50 == 0:
            assert real.engine.pool.checkedout() == 0
    assert statuses == {
        ("list", 200): ROUNDS,
        ("post", 200): ROUNDS,
        ("get", 200): ROUNDS,
        ("missing", 404): ROUNDS,
        ("fail", 500): ROUNDS,
    }
    assert real.engine.pool.checkedout() == 0
    assert real.open_transaction() is None
    assert real.count_ids(*real.ids) == ROUNDS  # every POST committed
