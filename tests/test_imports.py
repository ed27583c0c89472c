"""No import cycle in the ``ctxscale`` package, read from the source (nothing is imported).

The graph has one node per module, ``ctxscale.pkg`` standing for a package's ``__init__``. Every ``import`` and
``from ... import`` of a ctxscale module is an edge, lazy ones inside functions included (a cycle through a lazy
import still means two modules that cannot be understood apart). ``from ctxscale.pkg import name`` points at the
module ``ctxscale.pkg.name`` when there is one, else at ``ctxscale.pkg``; and importing ``ctxscale.pkg.mod``
first runs ``ctxscale.pkg``'s ``__init__``, so every module also points at the packages above it. The root package
``ctxscale`` itself is left out: Python runs its ``__init__`` before any submodule, so every module would point at
it, and it imports nothing of the package.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
ROOT = "ctxscale"


def module_names(source: Path = SOURCE) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package (``__init__.py`` names its package)."""
    names = {}
    for path in sorted((source / ROOT).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ctxscale modules that ``name`` (at ``path``) imports, lazy imports included, each with its packages."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb level - 1 packages from this module's package
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    edges = set()
    for target in targets:
        if target != ROOT and not target.startswith(ROOT + "."):
            continue
        while target not in modules and "." in target:  # ``import ctxscale.x.attr`` style: the module part
            target = target.rpartition(".")[0]
        parts = target.split(".")
        edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))  # the module and its packages
    # Running a module first runs its own packages' __init__: not an edge of the module's code, and a package
    # importing its own submodule would otherwise look like a cycle with every submodule.
    return {t for t in edges if t != name and t in modules and not (name.startswith(t + ".") and t != name)}


def import_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    """Module -> the ctxscale modules it imports (the root package left out, see the module docstring)."""
    names = module_names(source)
    return {name: imported_modules(name, path, set(names)) - {ROOT} for name, path in names.items() if name != ROOT}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]`` (each imports the next), or ``None``."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists it against the import direction
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles until none is left, each found after cutting one import of the ones before, so every
    tangle of modules is named at least once."""
    graph = {name: set(targets) for name, targets in graph.items()}
    cycles = []
    while (cycle := find_cycle(graph)) is not None:
        cycles.append(cycle)
        graph[cycle[0]].discard(cycle[1])
    return cycles


def test_the_graph_sees_lazy_relative_and_package_imports(tmp_path):
    package = tmp_path / ROOT
    (package / "pkg").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pkg" / "__init__.py").write_text("")
    (package / "pkg" / "low.py").write_text("def f():\n    from ctxscale import top\n")  # lazy, names a module
    (package / "pkg" / "high.py").write_text("from . import low\nfrom .low import f\n")  # relative
    (package / "top.py").write_text("import ctxscale.pkg.high\nfrom ctxscale.pkg import something\n")
    graph = import_graph(tmp_path)
    assert graph == {"ctxscale.top": {"ctxscale.pkg.high", "ctxscale.pkg"}, "ctxscale.pkg": set(),
                     "ctxscale.pkg.high": {"ctxscale.pkg.low"}, "ctxscale.pkg.low": {"ctxscale.top"}}  # fmt: skip
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["ctxscale.pkg.high", "ctxscale.pkg.low", "ctxscale.top"]
    assert all(b in graph[a] for a, b in zip(cycle, cycle[1:]))  # each imports the next
    assert find_cycles(graph) == [cycle]
    (package / "pkg" / "low.py").write_text("from ctxscale.pkg import high\n")  # a sibling, through the package
    cycle = find_cycle(import_graph(tmp_path))
    assert len(cycle) == 3 and set(cycle) == {"ctxscale.pkg.high", "ctxscale.pkg.low"}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"ctxscale.config", "ctxscale.datasets.registry"} <= graph["ctxscale.datasets.prepare"]  # the real code
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in src/ctxscale:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
