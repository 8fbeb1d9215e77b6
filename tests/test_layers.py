"""The library reads top-down: no module imports from a layer above its own (see qpmlib/__init__.py)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "qpmlib"

#: Layers, top-down; a module may import from its own layer and from the layers before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config", ("qpmlib", "qpmlib.config", "qpmlib.paths", "qpmlib.paper", "qpmlib.files", "qpmlib.meter")),
    ("data and features", ("qpmlib.data", "qpmlib.backbones", "qpmlib.embeddings")),
    ("core", ("qpmlib.model", "qpmlib.losses", "qpmlib.qp", "qpmlib.train", "qpmlib.glm", "qpmlib.sparse",
              "qpmlib.metrics", "qpmlib.heads", "qpmlib.pretrain")),
    ("runs", ("qpmlib.results", "qpmlib.runs")),
    ("analysis", ("qpmlib.analysis",)),
    ("figures", ("qpmlib.figures",)),
    ("book", ("qpmlib.book",)),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").is_file() or (ROOT.parent / rel / "__init__.py").is_file()


def layer_of(module: str) -> int:
    """Index into LAYERS of a qpmlib module (the longest matching prefix)."""
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix == "qpmlib"
            if (module == prefix or (not exact and module.startswith(prefix + "."))) and len(prefix) > best:
                best, found = len(prefix), i
    if found is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS here and to qpmlib/__init__.py")
    return found


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported qpmlib module, line, inside a function) for every import statement of a file."""
    module = _module_name(path)
    return source_imports(path.read_text(), module if path.name == "__init__.py" else module.rpartition(".")[0])


def source_imports(source: str, package: str) -> list[tuple[str, int, bool]]:
    """:func:`imports` of source code that lives in ``package`` (for relative imports)."""
    tree = ast.parse(source)
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: the package, less one level per dot after the first
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in in_function) for t in targets if t.split(".")[0] == "qpmlib"]
    return found


FILES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_no_module_imports_from_a_layer_above_it(path):
    module = _module_name(path)
    own = layer_of(module)
    above = [(t, line) for t, line, _ in imports(path) if layer_of(t) > own]
    assert not above, (f"{module} (layer {LAYERS[own][0]}) imports from higher layers: "
                       + ", ".join(f"{t} ({LAYERS[layer_of(t)][0]}, line {line})" for t, line in above))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_qpmlib_imports_sit_at_module_top(path):
    module = _module_name(path)
    inside = [(t, line) for t, line, nested in imports(path) if nested]
    assert not inside, f"{module} imports inside functions: {inside}; move them to the top"


def test_the_checks_see_upward_relative_and_nested_imports():
    source = "from qpmlib.runs import methods\nfrom . import losses\n\ndef f():\n    from qpmlib.analysis import tables\n"
    found = source_imports(source, "qpmlib")
    assert found == [("qpmlib.runs.methods", 1, False), ("qpmlib.losses", 2, False),
                     ("qpmlib.analysis.tables", 5, True)]
    assert [layer_of(t) > layer_of("qpmlib.model") for t, _, _ in found] == [True, False, True]
    assert layer_of("qpmlib.analysis.tables") > layer_of("qpmlib.runs.methods") > layer_of("qpmlib.train")
    assert layer_of("qpmlib") == 0 and layer_of("qpmlib.data.cub") == 1
    assert layer_of("qpmlib.files") == 0  # a low-level utility: the data, core and runs layers all use it
    assert layer_of("qpmlib.heads.klc") == layer_of("qpmlib.train")
    assert layer_of("qpmlib.runs.executor") == layer_of("qpmlib.runs.archive") == layer_of("qpmlib.results")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("qpmlib.nowhere")
