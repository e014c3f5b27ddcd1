"""Seed 004's Items API through the real pyramid_tm tween."""

import logging

from sqlalchemy import func, select

from myapp.models import Item


def test_seed_transcript(testapp):
    assert testapp.get("/items").json == {"items": []}
    posted = testapp.post("/items").json
    # ids come from a sequence that a rolled-back test may have advanced on PostgreSQL
    assert posted == {"id": posted["id"], "name": f"Item #{posted['id']}"}
    assert testapp.get("/items").json == {"items": [posted]}
    response = testapp.get("/items/99", status=404)
    assert response.json == {"error": "not found"}


def test_post_is_committed_and_visible_to_the_test(testapp, db):
    body = testapp.post("/items").json
    item = db.session.get(Item, body["id"])
    assert item is not None and item.name == body["name"]


def test_nothing_leaks_between_tests(db):
    assert db.session.scalar(select(func.count()).select_from(Item)) == 0


def test_one_commit_or_rollback_log_line_per_request(testapp, caplog):
    """As the seed prints "[SESSION] Rolling back..." for the 404, myapp.db.tx logs per request."""
    caplog.set_level(logging.INFO, logger="myapp.db.tx")
    testapp.get("/items")
    testapp.post("/items")
    testapp.get("/items/99", status=404)
    lines = [r.getMessage() for r in caplog.records if r.name == "myapp.db.tx"]
    assert lines == ["COMMIT /items", "COMMIT /items", "ROLLBACK /items/99"]


def test_rolled_back_404_writes_nothing(testapp, db):
    before = db.session.scalar(select(func.count()).select_from(Item))
    testapp.get("/items/abc", status=404)
    testapp.get("/items/12345", status=404)
    assert db.session.scalar(select(func.count()).select_from(Item)) == before
