"""What a command's ``handle()`` receives: :class:`CommandContext`."""

from __future__ import annotations

import sys
from typing import IO, Any, Protocol


class NamedCommand(Protocol):
    """The command being run, as the context knows it (a :class:`~myapp.commands.Command`).

    Typed structurally so that this module imports nothing of the registry, which imports
    it (``Command.handle`` receives a :class:`CommandContext`).
    """

    name: str


class CommandContext:
    """The bootstrapped application and its database, for one command.

    ``dbsession`` and ``tm`` are the bootstrap request's session and the
    thread's transaction manager; ``db`` is the application's
    :class:`~myapp.db.Database`. Inside ``handle()`` the current database
    scope is set, so ``current_session()`` is ``dbsession``.
    """

    def __init__(
        self,
        env: dict[str, Any],
        *,
        command: NamedCommand,
        config_uri: str,
        config_file: str,
        verbose: bool = False,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.env = env
        self.command = command
        self.config_uri = config_uri
        self.config_file = config_file
        self.verbose = verbose
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr

    @property
    def registry(self) -> Any:
        """The Pyramid registry."""
        return self.env["registry"]

    @property
    def request(self) -> Any:
        """The request made by ``pyramid.paster.bootstrap``."""
        return self.env["request"]

    @property
    def app(self) -> Any:
        """The WSGI application."""
        return self.env.get("app")

    @property
    def settings(self) -> Any:
        return self.registry.settings

    @property
    def db(self) -> Any:
        """The application's :class:`~myapp.db.Database` (``registry["db"]``)."""
        return self.registry["db"]

    @property
    def dbsession(self) -> Any:
        """The session of this command (``request.dbsession``)."""
        return self.request.dbsession

    @property
    def tm(self) -> Any:
        """The transaction manager (``request.tm``: the thread's, in explicit mode)."""
        return self.request.tm

    def out(self, *parts: Any) -> None:
        """Print to the command's standard output."""
        print(*parts, file=self.stdout)
