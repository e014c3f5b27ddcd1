"""The two-phase commit benchmark's round trips, exact (``benchmarks/twophase.py``)."""

from __future__ import annotations

from benchmarks.twophase import measure


def test_round_trips_of_one_and_two_database_units() -> None:
    data = measure(rtts=[0.0], n_units=5, rounds=1)
    # one phase: BEGIN+INSERT, COMMIT. Two units in a row: twice that. Two phases:
    # BEGIN+INSERT in each, PREPARE in each, the decision record, COMMIT PREPARED in each.
    assert data["round_trips"] == {"one-db": 2, "two-db-1pc": 4, "two-db-2pc": 7}
    assert set(data["units_per_second"]["0.0"]) == {"one-db", "two-db-1pc", "two-db-2pc"}
