"""The application's models. Importing this package registers every table on ``Base.metadata``."""

from myapp.db import Base, BaseModel

from .event import Event
from .item import Item

__all__ = ["Base", "BaseModel", "Event", "Item"]
