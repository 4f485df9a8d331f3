"""The architecture holds: the engine never imports the command line, and the package's import
graph (function-level imports included) has no cycle."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "mirrorpipe"
# The command line on top of the engine.
COMMAND_LINE = ("mirrorpipe.cli", "mirrorpipe.terminal", "mirrorpipe.commands")


def module_names():
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def engine_modules():
    return [name for name in module_names() if not name.startswith(COMMAND_LINE)]


def imports_of(module):
    """The mirrorpipe modules a module imports anywhere in its text (inside functions too)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    known = set(module_names())
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known and name != module}


@pytest.mark.parametrize("module", engine_modules())
def test_an_engine_module_never_imports_the_command_line(module):
    probe = (f"import sys, {module}; "
             "print(' '.join(sorted(m for m in sys.modules if m == 'argparse' or "
             f"m.startswith({COMMAND_LINE!r}))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"{module} brings in {result.stdout.strip()}"


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(name) for name in module_names()}
    # Packages import nothing of their own; a module's parent package is imported with it.
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_check_sees_a_cycle():
    """The graph walk finds the import that a function hides (writer -> parity inside a function)."""
    assert "mirrorpipe.sets.parity" in imports_of("mirrorpipe.sets.writer")
