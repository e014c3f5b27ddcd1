"""argparse ``type=`` converters shared by the commands (a bad value is a usage error, status 2)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def period_argument(value: str) -> str:
    """argparse ``type=`` for ``YYYY-MM`` (a bad value is a usage error, status 2)."""
    from myapp.services.invoicing import InvalidPeriod, parse_period

    try:
        return parse_period(value).name
    except InvalidPeriod as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole_number(value: str, minimum: int, meaning: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {meaning}, got {number}")
    return number


def positive_int(value: str) -> int:
    return _whole_number(value, 1, "at least 1")


def count_argument(value: str) -> int:
    return _whole_number(value, 0, "zero or more")


def instant_argument(value: str) -> datetime:
    """An ISO 8601 date and time; without an offset it is taken as UTC."""
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date and time such as 2026-10-01T08:00Z, got {value!r}"
        ) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)
