"""House rules: kvlib's modules import each other without circles, and figures are written only when asked."""
import ast
from pathlib import Path

import matplotlib
import pytest

from kvlib import plotting
from kvlib.plotting import common

matplotlib.use("Agg")

PACKAGE = Path(__file__).resolve().parent.parent / "kvlib"


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
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {t for t in kvlib_imports(path) if t in modules and t != name}
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


@pytest.mark.parametrize("module", ["kvlib.compiled", "kvlib.timing.sweeps", "kvlib.timing.clock", "kvlib.widgets",
                                    "kvlib.stepgrid", "kvlib.plotting.concepts", "kvlib.plotting.measured",
                                    "kvlib.bugs", "kvlib.trace", "kvlib.paged.block_view"])
def test_no_import_circle(module):
    # An import of a package runs its __init__, which imports its children: those edges count too.
    graph = import_graph()
    assert cycle_through(graph, module) is None, f"import circle: {' -> '.join(cycle_through(graph, module))}"


def test_figures_are_written_only_when_asked(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    monkeypatch.setattr(common, "FIGURES_DIR", tmp_path / "figures")
    monkeypatch.delenv(common.WRITE_FIGURES_ENV, raising=False)
    assert plotting.save_figure(fig, "x") is None and not (tmp_path / "figures").exists()
    monkeypatch.setenv(common.WRITE_FIGURES_ENV, "0")
    assert plotting.save_figure(fig, "x") is None
    monkeypatch.setenv(common.WRITE_FIGURES_ENV, "1")
    assert plotting.save_figure(fig, "x") == tmp_path / "figures" / "x.png" and (tmp_path / "figures" / "x.png").exists()
    monkeypatch.delenv(common.WRITE_FIGURES_ENV)
    assert plotting.save_figure(fig, "y", tmp_path) == tmp_path / "y.png"  # an explicit directory is asking
    plt.close(fig)
