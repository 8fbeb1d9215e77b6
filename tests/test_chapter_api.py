"""The chapters are thin and use only the chapter-facing names that qpmlib/__init__.py lists."""

import ast
import importlib
import json
from pathlib import Path

import pytest

import qpmlib
from qpmlib.paper import paper_values

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "chapters").glob("*.ipynb"))


def chapter_code(path: Path) -> str:
    """The code cells of a notebook as one module (IPython magics dropped)."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [line for c in cells for line in "".join(c["source"]).splitlines() + [""]]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module of this checkout's qpmlib (looked up as a file, not imported)."""
    path = Path(qpmlib.__file__).parent.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def used_names(code: str) -> set[tuple[str, str]]:
    """(qpmlib module, name) for every name the code imports from qpmlib or reads off a qpmlib module."""
    tree = ast.parse(code)
    modules: dict[str, str] = {}  # local alias -> qpmlib module
    used: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qpmlib"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if _is_module(full):
                    modules[alias.asname or alias.name] = full
                else:
                    used.add((node.module, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qpmlib") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            module = modules[node.value.id]
            used.add((module, node.attr))
            if _is_module(f"{module}.{node.attr}"):
                raise AssertionError(f"use {module}.{node.attr} through an import of the module itself")
    return used


def test_used_names_finds_imports_and_attributes():
    code = "from qpmlib.analysis import summary\nfrom qpmlib.book.chapter import start\nsummary.summarise(x)\n"
    assert used_names(code) == {("qpmlib.book.chapter", "start"), ("qpmlib.analysis.summary", "summarise")}


def test_every_name_a_chapter_uses_is_in_the_index():
    used = set().union(*(used_names(chapter_code(p)) for p in CHAPTERS))
    listed = {(module, name) for module, names in qpmlib.CHAPTER_API.items() for name in names}
    assert not used - listed, f"add to qpmlib.CHAPTER_API: {sorted(used - listed)}"
    assert not listed - used, f"no chapter uses these any more; remove them from qpmlib.CHAPTER_API: " \
                              f"{sorted(listed - used)}"
    for module, name in listed:
        assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_define_only_one_statement_display_helpers(path):
    for node in ast.walk(ast.parse(chapter_code(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            ok = (isinstance(node, ast.FunctionDef) and len(body) == 1 and isinstance(body[0], ast.Expr)
                  and isinstance(body[0].value, ast.Call) and getattr(body[0].value.func, "id", "") == "display")
            assert ok, f"{path.name} defines {node.name}: logic belongs in qpmlib (a chapter may only define " \
                       "a one-statement display(...) helper)"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_hold_no_paper_numbers(path):
    reported = {v for v in paper_values()["value"] if v == v and v != int(v)}  # 88.3, 95.0 is too common
    numbers = {node.value for node in ast.walk(ast.parse(chapter_code(path)))
               if isinstance(node, ast.Constant) and isinstance(node.value, float)}
    assert not numbers & reported, f"{path.name} hard-codes the paper's {sorted(numbers & reported)}; " \
                                   "read them from qpmlib.paper"
