"""The shape of the package: what importing it costs, and that its modules import each other without circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "lifecycle"
HEAVY = (
    "torch",
    "transformers",
    "numpy",
    "scipy",
    "mlflow",
    "lm_eval",
    "llmcompressor",
    "trl",
    "peft",
    "sky",
)
COMMANDS = [
    "",
    "train",
    "quantize",
    "gate",
    "register",
    "runs",
    "doctor",
    "verify",
    "validate",
    "ui",
    "jobs",
    "promote",
    "rollback",
    "serve",
    "apply",
    "report",
    "report cost",
    "report residency",
]


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stderr.split()


def test_the_api_and_the_results_import_nothing_heavy() -> None:
    assert _loaded_after("import lifecycle.api, lifecycle.results, lifecycle.runner") == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_imports_nothing_heavy(command: str) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['lifecycle', *{command.split()!r}, '--help']\n"
        "from lifecycle.cli.app import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(code) == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], *, top_level_only: bool) -> set[str]:
    """The package's modules `path` imports; with top_level_only, only those run when it is imported."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


@pytest.mark.parametrize("top_level_only", [True, False], ids=["on-import", "anywhere"])
def test_no_import_circles(top_level_only: bool) -> None:
    """Layers point one way: results <- runs <- runner <- stages <- api <- cli. A circle, even through an
    import inside a function, means two modules each need the other and neither can be read alone."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {
        name: _imports(path, modules, top_level_only=top_level_only) - {name} for name, path in files.items()
    }
    graph = {name: {d for d in deps if d != "lifecycle"} for name, deps in graph.items()}
    assert _cycles(graph) == []
