"""House rules: kvlib's modules import each other without circles, dependencies point one way (the library never
imports the Shakespeare model, the measuring instruments or the teaching props), and figures are written only
when asked."""
import ast
from pathlib import Path

import matplotlib
import pytest

from kvlib.measure import figures
from kvlib.teaching import plotting

matplotlib.use("Agg")

PACKAGE = Path(__file__).resolve().parent.parent / "kvlib"

# Layers, lowest first: a module may import modules of its own layer or lower, never higher (kvlib/__init__.py
# says the same in words). The library is everything up to the front door (kvlib/__init__.py and __main__.py).
LAYERS = [
    ("primitives", ("kvlib.config", "kvlib.attention")),
    ("caches", ("kvlib.cache",)),
    ("model", ("kvlib.model",)),
    ("serving", ("kvlib.serving",)),
    ("front door", ("kvlib", "kvlib.__main__")),
    ("shakespeare", ("kvlib.shakespeare",)),
    ("measuring", ("kvlib.measure",)),
    ("teaching", ("kvlib.teaching",)),
]
LIBRARY = {"primitives", "caches", "model", "serving", "front door"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kvlib_imports(path: Path) -> set[str]:
    """Every kvlib module `path` imports, at module level or inside a function (TYPE_CHECKING blocks included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kvlib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("kvlib"):
                submodules = {f"{target}.{a.name}" for a in node.names
                              if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                              or (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/") / "__init__.py").exists()}
                found |= submodules or {target}  # `from . import x` imports x, not the package's other names
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the kvlib modules its import statements run: each target, and each package __init__ above the
    target that is not already being imported around the importer (the root package always is)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
        edges = set()
        for target in kvlib_imports(path):
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        graph[name] = {t for t in edges if t in modules and t != name and t not in own_parents}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming `module`'s group."""
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "kvlib" and module.startswith(prefix + "."))
            if matches and len(prefix) > depth:
                best, depth = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add its subpackage to LAYERS")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points from a lower layer to a higher one, as 'a (layer) imports b (layer)'."""
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                bad.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    for start in sorted(graph):
        cycle = cycle_through(graph, start)
        if cycle:
            return cycle
    return None


def test_every_module_belongs_to_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_circle_anywhere():
    # Lazy imports inside functions count, and so do the package __init__ files an import runs.
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_dependencies_point_one_way():
    assert upward_imports(import_graph()) == []


def test_the_library_imports_nothing_of_the_shakespeare_model_measuring_or_teaching():
    graph = import_graph()
    library = {m for m in graph if LAYERS[layer_of(m)][0] in LIBRARY}
    assert {"kvlib.model.gpt2", "kvlib.cache.contiguous", "kvlib.serving.engine", "kvlib"} <= library
    leaks = {(m, t) for m in library for t in graph[m] if LAYERS[layer_of(t)][0] not in LIBRARY}
    assert leaks == set()


def test_the_checks_catch_a_planted_circle_and_a_planted_upward_import():
    graph = import_graph()
    planted = {k: set(v) for k, v in graph.items()}
    planted["kvlib.model.generation"].add("kvlib.measure.memory")  # the library reaching up
    assert upward_imports(planted) == ["kvlib.model.generation (model) imports kvlib.measure.memory (measuring)"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["kvlib.config"].add("kvlib.cache.contiguous")  # config <- cache.contiguous already: a circle
    assert find_cycle(planted) is not None


def test_figures_are_written_only_when_asked(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    monkeypatch.setattr(figures, "FIGURES_DIR", tmp_path / "figures")
    monkeypatch.delenv(figures.WRITE_FIGURES_ENV, raising=False)
    assert plotting.save_figure(fig, "x") is None and not (tmp_path / "figures").exists()
    monkeypatch.setenv(figures.WRITE_FIGURES_ENV, "0")
    assert plotting.save_figure(fig, "x") is None
    monkeypatch.setenv(figures.WRITE_FIGURES_ENV, "1")
    assert plotting.save_figure(fig, "x") == tmp_path / "figures" / "x.png" and (tmp_path / "figures" / "x.png").exists()
    monkeypatch.delenv(figures.WRITE_FIGURES_ENV)
    assert plotting.save_figure(fig, "y", tmp_path) == tmp_path / "y.png"  # an explicit directory is asking
    plt.close(fig)
