from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from myapp.db import Base


class Item(Base):
    """An item: an id and a name such as ``Item #1``."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(64))

    def serialize(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}
