"""The command registry: plugging commands in, and the transaction each one runs in.

Transaction tests call ``main()`` in-process with a registry of test commands
(the same runner as the console script: bootstrap, scope, unit of work), on
both backends; one test runs a plug-in script as a real subprocess.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import myapp.commands
from myapp.commands import Command, CommandError, CommandRegistry, main
from myapp.db import current_session, db_batch_operation, is_in_transaction
from myapp.models import Item

from .conftest import Cli, InProcess, assert_one_error_line, run_myapp

SEEN: list[Any] = []  # the Database each command ran with, to check what it left behind


class AddItems(Command):
    name = "demo add"
    help = "add items in the command's unit of work"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, default=1)
        parser.add_argument("--status", type=int, default=0)
        parser.add_argument("--fail", action="store_true")

    def handle(self, ctx: Any, *, count: int, status: int, fail: bool) -> int:
        SEEN.append(ctx.db)
        assert is_in_transaction()
        assert current_session() is ctx.dbsession
        for i in range(count):
            ctx.dbsession.add(Item(name=f"add {i}"))
        ctx.dbsession.flush()
        if fail:
            raise CommandError("refusing on purpose")
        return status


class BatchItems(Command):
    name = "demo batch"
    help = "add items in batches of 2, each committed"
    atomic = False

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--fail-at", type=int)

    def handle(self, ctx: Any, *, count: int, fail_at: int | None) -> None:
        SEEN.append(ctx.db)
        assert not is_in_transaction()
        assert current_session() is ctx.dbsession
        with db_batch_operation(batch_size=2) as (session, commit_batch):
            for i in range(count):
                if i == fail_at:
                    raise RuntimeError(f"failed at {i}")
                session.add(Item(name=f"batch {i}"))
                commit_batch()
        ctx.out(f"batched {count}")


class BatchInsideUnit(Command):
    name = "demo nested-batch"
    help = "an atomic command trying a batch operation"

    def handle(self, ctx: Any) -> None:
        SEEN.append(ctx.db)
        with db_batch_operation() as (session, _commit):
            session.add(Item(name="never"))


@pytest.fixture
def demo() -> CommandRegistry:
    registry = CommandRegistry()
    registry.group("demo", help="test commands")
    for cls in (AddItems, BatchItems, BatchInsideUnit):
        registry.register(cls)
    return registry


@pytest.fixture
def run(in_process: InProcess, demo: CommandRegistry) -> Iterator[Any]:
    """``run(*argv)`` → (status, stdout, stderr), in this process, on the test database."""
    SEEN.clear()

    def run(*argv: str) -> tuple[int, str, str]:
        result = in_process(*argv, registry=demo)
        for database in SEEN:  # the runner disposed of the engine: nothing checked out
            assert database.engine.pool.checkedout() == 0
        return result.returncode, result.stdout, result.stderr

    yield run
    SEEN.clear()


def test_a_group_without_its_subcommand(demo: CommandRegistry, capsys: Any) -> None:
    assert main(["demo", "--help"], registry=demo) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("usage: myapp demo")
    for name in ("add", "batch", "nested-batch"):
        assert f"\n    {name} " in out
    assert main(["demo"], registry=demo) == 2
    _, err = capsys.readouterr()
    assert err == (
        "myapp: error: choose a command: add, batch, nested-batch (see 'myapp demo --help')\n"
    )


def test_atomic_command_commits_its_unit_of_work(run: Any, migrated_cli: Cli) -> None:
    assert run("demo", "add", "--count", "2")[0] == 0
    assert migrated_cli.item_names() == ["add 0", "add 1"]


def test_atomic_command_aborts_on_error_or_nonzero_status(run: Any, migrated_cli: Cli) -> None:
    status, _, err = run("demo", "add", "--count", "2", "--status", "3")
    assert (status, err) == (3, "")
    status, _, err = run("demo", "add", "--fail")
    assert (status, err) == (1, "myapp: error: refusing on purpose\n")
    assert migrated_cli.item_names() == []


def test_non_atomic_command_commits_its_own_batches(run: Any, migrated_cli: Cli) -> None:
    status, out, _ = run("demo", "batch", "--count", "5")
    assert (status, out) == (0, "batched 5\n")
    assert len(migrated_cli.item_names()) == 5

    status, _, err = run("demo", "batch", "--count", "5", "--fail-at", "3")
    assert status == 1
    assert err.startswith("myapp: error: ") and err.count("\n") == 1, err
    # batches of 2: rows 0-1 were committed before the failure, row 2 was rolled back
    assert migrated_cli.item_names()[5:] == ["batch 0", "batch 1"]


def test_batch_refused_inside_an_atomic_command(run: Any, migrated_cli: Cli) -> None:
    status, _, err = run("demo", "nested-batch")
    assert status == 1
    assert err.startswith("myapp: error: NestedTransactionError: db_batch_operation()"), err
    assert migrated_cli.item_names() == []


def test_registry_rejects_clashes() -> None:
    registry = CommandRegistry()
    registry.register(AddItems)
    registry.register(AddItems)  # the same class again (a module imported twice): fine

    class Clash(Command):
        name = "demo add"

    class GroupAsCommand(Command):
        name = "demo"

    class UnderACommand(Command):
        name = "demo add more"

    class BadName(Command):
        name = "Demo Add!"

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Clash)
    with pytest.raises(ValueError, match="already a group"):
        registry.register(GroupAsCommand)
    with pytest.raises(ValueError, match="is a command, not a group"):
        registry.register(UnderACommand)
    with pytest.raises(ValueError, match="invalid command name"):
        registry.register(BadName)
    with pytest.raises(TypeError):
        registry.register(object)  # type: ignore[arg-type]
    assert registry.names() == ["demo add"]


PLUGIN = """
import sys

from myapp.commands import Command, main, register, register_group
from myapp.models import Item

register_group("plugin", help="commands of a plug-in module")


@register
class Hello(Command):
    name = "plugin hello"
    help = "add one item named after --name"

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)

    def handle(self, ctx, *, name):
        ctx.dbsession.add(Item(name=name))
        ctx.out(f"hello {name}")


sys.exit(main())
"""


@pytest.fixture(scope="module")
def plugin_script(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    script = tmp_path_factory.mktemp("plugin") / "plugin.py"
    script.write_text(PLUGIN)
    return [sys.executable, str(script)]


def test_a_plugin_module_adds_a_grouped_command(plugin_script: list[str]) -> None:
    """A real process: a module registers ``plugin hello`` next to the built-in commands."""
    listed = run_myapp("--help", prefix=plugin_script)
    assert listed.returncode == 0, listed
    for name in ("plugin", "initdb", "shell"):
        assert f"\n    {name} " in listed.stdout

    missing = run_myapp("plugin", "hello", prefix=plugin_script)
    assert_one_error_line(missing, 2, "required: --name", "myapp plugin hello --help")


def test_a_plugin_command_runs_in_its_unit_of_work(
    migrated_cli: Cli, plugin_script: list[str]
) -> None:
    ran = migrated_cli.run("plugin", "hello", "--name", "world", prefix=plugin_script)
    assert ran.returncode == 0, ran
    assert ran.stdout == "hello world\n"
    assert migrated_cli.item_names() == ["world"]


def _imports_within(package: Path) -> dict[str, set[str]]:
    """Module -> the sibling modules it imports, anywhere in its source (``TYPE_CHECKING``
    blocks and imports inside functions included)."""
    names = {path.stem for path in package.glob("*.py")}
    dotted = "myapp." + package.name
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y
                modules = [f"{dotted}.{node.module or ''}"]
                if not node.module:  # from . import x
                    modules = [f"{dotted}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == dotted:
                modules = [f"{dotted}.{a.name}" for a in node.names] + [f"{dotted}.__init__"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            found.update(m.split(".")[2] for m in modules if m.startswith(dotted + "."))
        graph[path.stem] = (found & names) - {path.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_command_modules_import_each_other_without_a_cycle() -> None:
    """One job per module: the context, the registry, the runner and the errors form a
    hierarchy (``context`` and ``errors`` import no sibling; ``registry`` imports them;
    ``runner`` imports the three), type-checking imports included."""
    graph = _imports_within(Path(myapp.commands.__file__).parent)
    assert {"context", "errors"} <= graph["registry"]  # the graph is really read
    assert {"context", "errors", "registry"} <= graph["runner"]
    assert graph["context"] == set() and graph["errors"] == set()
    assert _cycle(graph) is None, _cycle(graph)
    assert _cycle({**graph, "context": {"registry"}}) == ["context", "registry", "context"]
