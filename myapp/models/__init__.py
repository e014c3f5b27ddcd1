"""The application's models. Importing this package registers every table on ``Base.metadata``."""

from myapp.db import Base, BaseModel

from .dispatch import BOOKING_STATUSES, Booking, BookingStatus, Company, Driver, Invoice
from .event import Event
from .item import Item

__all__ = [
    "BOOKING_STATUSES",
    "Base",
    "BaseModel",
    "Booking",
    "BookingStatus",
    "Company",
    "Driver",
    "Event",
    "Invoice",
    "Item",
]
