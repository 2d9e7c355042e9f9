"""The package's modules import only downwards: no module reaches, through any chain of imports (at module
level or inside a function), back to itself. A cycle means two layers lean on each other, so a new one fails
here with the modules that form it."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "MedCLIPSAMLib"


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package's own name for its __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a (possibly relative) ``from`` import refers to."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _deepest_module(name: str, modules: dict[str, Path]) -> str | None:
    """``pkg.mod.func`` -> ``pkg.mod``: the longest prefix that is one of the package's modules."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (module level, functions, TYPE_CHECKING)."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.level, node.module)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                found = _deepest_module(target, modules)
                if found and found != name:
                    graph[name].add(found)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return sorted(cycles)


def test_medclipsamlib_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and "MedCLIPSAMLib.cli" in graph  # the walk found the package
    assert graph["MedCLIPSAMLib.cli"] >= {"MedCLIPSAMLib.options", "MedCLIPSAMLib.pipeline"}  # function level too
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (move what both sides need to a lower module):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_the_check_finds_cycles_through_functions_relative_imports_and_type_checking(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/base.py": "import os\n",
        "pkg/a.py": "from .b import helper\nfrom . import base\n",
        "pkg/b.py": "def helper():\n    from .sub.c import thing\n    return thing\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\nthing = 1\n",
        "pkg/d.py": "import pkg.e\n",
        "pkg/e.py": "from pkg import d\n",
        "pkg/f.py": "from .base import os\nfrom .sub import c\n",
    })
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg", "pkg.b", "pkg.base"}  # ``from . import base`` runs pkg/__init__ too
    assert graph["pkg.f"] == {"pkg.base", "pkg.sub", "pkg.sub.c"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"], ["pkg.d", "pkg.e"]]


def test_a_package_without_cycles_passes(tmp_path):
    package = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "X = 1\n",
        "pkg/mid.py": "from .low import X\n",
        "pkg/top.py": "from . import mid\ndef run():\n    from .low import X\n    return X\n",
    })
    assert import_cycles(import_graph(package)) == []
