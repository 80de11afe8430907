"""Layers point one way: every core module imports on its own, and no module-level imports form a circle."""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import ROOT

CORE = ROOT / "core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(path) for path in CORE.rglob("*.py"))


def loaded_after(statement: str) -> set[str]:
    """The core modules a fresh interpreter holds after running `statement`."""
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m == 'core' or m.startswith('core.')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{statement}:\n{result.stderr}"
    return set(result.stdout.split())


def test_every_core_module_imports_alone_in_a_fresh_interpreter():
    # Alone: an import circle shows only when its modules are imported in an unlucky order.
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(_import_alone, MODULES) if f]
    assert not failures, "\n\n".join(failures)


def _import_alone(module: str) -> str:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    return "" if result.returncode == 0 else f"import {module}:\n{result.stderr.strip().splitlines()[-1]}"


def test_the_context_the_queue_package_and_the_codec_import_only_what_they_need():
    assert loaded_after("import core.context") == {"core", "core.context"}
    assert "core.dispatch" not in loaded_after("import core.queue")
    assert "core.job" not in loaded_after("import core.payload")
    assert "core.dispatch" in loaded_after("from core.queue import dispatch; assert callable(dispatch)")


def top_level_imports(path: Path) -> set[str]:
    """The core modules `path` imports as it loads: not those imported inside functions (on first
    use) nor under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in _module_level(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)    # `from core.queue import sync`
    return {name for name in found if name in MODULES and name != module_name(path)}


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    nodes = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            nodes += _module_level(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", []))
        else:
            nodes.append(node)
    return nodes


def test_no_circle_among_the_module_level_imports():
    graph = {module_name(path): top_level_imports(path) for path in CORE.rglob("*.py")}
    for module, imports in graph.items():
        # Importing core.a.b runs core.a's __init__ first, unless the importer is inside core.a.
        for name in list(imports):
            parents = [name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)]
            imports.update(p for p in parents if p in graph and p != module and not module.startswith(p + "."))
    circle = _find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}        # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None
