"""The code layout of docs/architecture.md, checked on the source text (``ast``; nothing is
imported): no import cycles between mtdeploy modules, the IR a leaf, functions short, and no
switching on node-kind names outside the kinds and the backends' per-kind tables.

The import graph has one edge per explicit ``import`` / ``from ... import`` statement anywhere
in a file (top level or inside a function; ``if TYPE_CHECKING:`` blocks excluded).
``from mtdeploy.pkg import name`` is an edge to the submodule ``mtdeploy.pkg.name`` when that
file exists, else to ``mtdeploy.pkg`` (its ``__init__``). Importing ``mtdeploy.a.b`` runs
``mtdeploy/a/__init__.py`` too, but that implicit parent import is not an edge: counting it
would make every package ``__init__`` that re-exports its submodules a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mtdeploy"

#: (importer, imported) -> why this edge may close a cycle; the goal is an empty dict. Any
#: cycle that does not run through one of these edges fails the test.
CYCLE_EDGES_ALLOWED: dict[tuple[str, str], str] = {}

#: modules outside mtdeploy.ir that the IR may import
IR_MAY_IMPORT = {"mtdeploy.errors"}

MAX_FUNCTION_LINES = 80
#: "module:qualified.name" -> why this function may be longer than MAX_FUNCTION_LINES
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}

#: files that may compare ``<x>.kind`` with kind names: the kinds themselves and the backends'
#: per-kind table modules (keyed by kind name), under their current and their restructured paths
KIND_SWITCH_ALLOWED = ("mtdeploy/kinds/", "mtdeploy/targets/loihi2/netx/kinds.py",
                       "mtdeploy/targets/loihi2/lava/tables.py")


# ---- reading the package ------------------------------------------------------------------
def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root / package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def import_statements(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name denotes, or the nearest enclosing one that is a file."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path],
               package: str = PACKAGE) -> set[str]:
    """The package's modules that ``module`` imports explicitly."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    targets: set[str] = set()
    for stmt in import_statements(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import):
            names = [alias.name for alias in stmt.names]
        else:
            if stmt.level:
                base = here[:len(here) - (stmt.level - 1)] if stmt.level > 1 else here
                prefix = ".".join(base + ([stmt.module] if stmt.module else []))
            else:
                prefix = stmt.module or ""
            # `from p import name`: the submodule p.name when it is a file, else p itself
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                     for alias in stmt.names]
        for name in names:
            if name == package or name.startswith(package + "."):
                target = _resolve(name, modules)
                if target is not None and target != module:
                    targets.add(target)
    return targets


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root, package)
    return {m: imports_of(m, p, modules, package) for m, p in modules.items()}


# ---- cycles -------------------------------------------------------------------------------
def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one: ``[a, b, ..., a]``, the
    shortest through the component's first module (breadth-first)."""
    cycles = []
    for component in strongly_connected(graph):
        members = set(component)
        start = component[0]
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        parent: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt_frontier = []
            for node in frontier:
                for nxt in sorted(graph.get(node, ())):
                    if nxt == start:
                        found = node
                        break
                    if nxt in members and nxt not in parent:
                        parent[nxt] = node
                        nxt_frontier.append(nxt)
                if found is not None:
                    break
            frontier = nxt_frontier
        path = [start]
        node = found
        while node != start:
            path.append(node)
            node = parent[node]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


# ---- the checks ---------------------------------------------------------------------------
def test_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_resolution(tmp_path):
    """Statements become edges as the module docstring says, and a cycle through a package
    ``__init__``, a relative import and an import inside a function is found."""
    pkg = tmp_path / PACKAGE
    for folder in (pkg, pkg / "a"):
        folder.mkdir()
    files = {
        "__init__.py": "from mtdeploy import a\n",
        "a/__init__.py": "from mtdeploy.a.x import f\n",
        "a/x.py": "def f():\n    from ..b import g\n",
        "a/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mtdeploy.b\n",
        "b.py": "import os\nimport mtdeploy.a.y\nfrom mtdeploy.a import f\ng = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph == {"mtdeploy": {"mtdeploy.a"}, "mtdeploy.a": {"mtdeploy.a.x"},
                     "mtdeploy.a.x": {"mtdeploy.b"}, "mtdeploy.a.y": set(),
                     "mtdeploy.b": {"mtdeploy.a.y", "mtdeploy.a"}}
    assert find_cycles(graph) == [["mtdeploy.a", "mtdeploy.a.x", "mtdeploy.b", "mtdeploy.a"]]


def test_cycle_edge_allow_list_is_current():
    graph = import_graph()
    stale = [edge for edge in CYCLE_EDGES_ALLOWED if edge[1] not in graph.get(edge[0], ())]
    assert not stale, f"remove from CYCLE_EDGES_ALLOWED (no such import any more): {stale}"


def test_no_import_cycles():
    graph = {m: {t for t in targets if (m, t) not in CYCLE_EDGES_ALLOWED}
             for m, targets in import_graph().items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between mtdeploy modules:\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_ir_is_a_leaf():
    bad = [f"{m} imports {t}" for m, targets in sorted(import_graph().items())
           if m == "mtdeploy.ir" or m.startswith("mtdeploy.ir.")
           for t in sorted(targets)
           if not (t == "mtdeploy.ir" or t.startswith("mtdeploy.ir.") or t in IR_MAY_IMPORT)]
    assert not bad, ("mtdeploy.ir may import only itself and " + ", ".join(sorted(IR_MAY_IMPORT))
                     + ":\n" + "\n".join(bad))


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from functions(node, name + ".")
        else:
            yield from functions(node, prefix)


def long_functions(root: Path = ROOT) -> dict[str, int]:
    out = {}
    for module, path in module_files(root).items():
        for name, node in functions(ast.parse(path.read_text(), str(path))):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out[f"{module}:{name}"] = length
    return out


def test_long_function_allow_list_is_current():
    """Every allowed long function still exists and is still long."""
    stale = set(LONG_FUNCTIONS_ALLOWED) - set(long_functions())
    assert not stale, f"remove from LONG_FUNCTIONS_ALLOWED: {sorted(stale)}"


def test_functions_are_short():
    offenders = {k: n for k, n in long_functions().items() if k not in LONG_FUNCTIONS_ALLOWED}
    assert not offenders, (f"functions longer than {MAX_FUNCTION_LINES} lines (split them, or "
                           "list them in LONG_FUNCTIONS_ALLOWED with a reason):\n" + "\n".join(
                               f"{k}: {n} lines" for k, n in sorted(offenders.items())))


def _names_kind(expr: ast.expr) -> bool:
    """``<x>.kind``, but not numpy's ``<x>.dtype.kind``."""
    if not (isinstance(expr, ast.Attribute) and expr.attr == "kind"):
        return False
    owner = expr.value
    return not ((isinstance(owner, ast.Attribute) and owner.attr == "dtype")
                or (isinstance(owner, ast.Name) and owner.id == "dtype"))


def _strings(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, str)
    if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
        return bool(expr.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                       for e in expr.elts)
    return False


def kind_switches(root: Path = ROOT) -> list[str]:
    """``x.kind == "name"`` / ``!=`` / ``in (...)`` / ``not in`` outside the allowed files."""
    out = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(KIND_SWITCH_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            if not all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(map(_names_kind, operands)) and any(map(_strings, operands)):
                out.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_kind_name_switches():
    found = kind_switches()
    assert not found, ("node-kind names compared outside mtdeploy/kinds/ and the backends' "
                       "per-kind tables (give the kind a method or the backend a table entry):\n"
                       + "\n".join(found))
