"""The package's shape: no module imports a module that imports it back."""

import ast
from pathlib import Path

import tfrec


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside functions."""
    modules = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        graph[name].add(target)
                    elif base in modules:
                        graph[name].add(base)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import f\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b"]]


def test_tfrec_has_no_import_cycles():
    root = Path(tfrec.__file__).resolve().parent.parent
    assert cycles(import_graph(root, "tfrec")) == []


# The layers of the package, lowest first, as the README's "How the code is organised"
# describes them: a module may import from its own layer and the ones below, never from
# a higher one. Every top-level module and package of tfrec must have a layer here.
LAYERS = {
    # settings, errors and small helpers
    "tfrec.errors": 0, "tfrec.config": 0, "tfrec.utils": 0, "tfrec.progress": 0,
    "tfrec._compat": 0, "tfrec.schema": 0,
    # the data layer; the run and report folders' files; optimizers and strategies
    "tfrec.data": 1, "tfrec.run_folder": 1, "tfrec.optimizers": 1, "tfrec.distribute": 1,
    "tfrec.draws": 1,
    # the public data sets' layouts (read through the data layer)
    "tfrec.datasets": 2,
    # layers and models
    "tfrec.towers": 3, "tfrec.tasks": 4, "tfrec.models": 4,
    # ranks and hit rates of held-out cases (what training and evaluation share)
    "tfrec.metrics": 5,
    # loading runs and their data
    "tfrec.run": 6,
    "tfrec.training": 7,
    # the index, the ranking stage, the export
    "tfrec.index": 8, "tfrec.ranking": 9, "tfrec.exporter": 10,
    "tfrec.evaluate": 11,
    # every user's recommendations, locally and on Beam
    "tfrec.all_users": 12, "tfrec.beam": 13,
    "tfrec.serving": 14,
    "tfrec.cli": 15, "tfrec": 15, "tfrec.__main__": 16,
}


def top_level(module: str) -> str:
    return ".".join(module.split(".")[:2])


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """'a -> b' for every import of a module from a higher layer than its own."""
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            a, b = top_level(module), top_level(target)
            if a != b and layers[b] > layers[a]:
                found.append(f"{module} -> {target}")
    return found


def without_type_checking_imports(graph: dict[str, set[str]], root: Path) -> dict:
    """The graph less the imports made only for type checkers (`if TYPE_CHECKING:`)."""
    out = {}
    for module, imported in graph.items():
        path = root / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        hidden = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for inner in node.body:
                    if isinstance(inner, ast.ImportFrom) and inner.module:
                        hidden |= {inner.module, *(f"{inner.module}.{a.name}"
                                                   for a in inner.names)}
        out[module] = {t for t in imported if t not in hidden}
    return out


def test_the_layer_checker_finds_an_upward_import_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high import g\n")
    (package / "high.py").write_text("from pkg.low.a import f\n")
    graph = import_graph(tmp_path, "pkg")
    assert upward_imports(graph, {"pkg": 2, "pkg.low": 0, "pkg.high": 1}) == [
        "pkg.low.a -> pkg.high"]


def test_tfrec_imports_only_from_its_own_layer_and_below():
    root = Path(tfrec.__file__).resolve().parent.parent
    graph = import_graph(root, "tfrec")
    unplaced = sorted({top_level(m) for m in graph} - set(LAYERS))
    assert unplaced == [], "give these modules a layer in LAYERS"
    assert upward_imports(without_type_checking_imports(graph, root), LAYERS) == []


def test_the_export_layout_and_the_run_folder_import_no_tensorflow():
    """The server's version listing and the all-users job read versions through these."""
    import subprocess
    import sys

    code = ("import sys, tfrec.exporter.layout, tfrec.run_folder, tfrec.all_users; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
