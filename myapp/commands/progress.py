"""Progress bars for long commands: on a terminal only, quiet when the output is piped."""

from __future__ import annotations

from types import TracebackType
from typing import IO, Any


def is_terminal(stream: Any) -> bool:
    """True if ``stream`` is an open terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBar:
    """A rich progress bar on ``stream``; every method is a no-op when ``stream`` is no terminal.

    Use it as a context manager; ``update(completed, total)`` moves it.
    """

    def __init__(self, stream: IO[str], description: str, total: int | None = None) -> None:
        self.enabled = is_terminal(stream)
        self.progress: Any = None
        self.task: Any = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, completed: int, total: int | None = None) -> None:
        if self.progress is None:
            return
        if total is not None:
            total = max(total, completed)
        self.progress.update(self.task, completed=completed, total=total)
