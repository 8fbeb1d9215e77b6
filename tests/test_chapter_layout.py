"""How the chapters read in the rendered book: plumbing cells hide their code, live widgets their output."""

from __future__ import annotations

import ast
import json

from qpmlib.book.runner import chapters


def is_plumbing(source: str) -> bool:
    """A cell that only imports, starts the chapter (``prof = start(profile)``) or glues values for the prose."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False

    def called(node, name: str) -> bool:
        return isinstance(node, ast.Call) and getattr(node.func, "id", None) == name

    return bool(body) and all(
        isinstance(st, (ast.Import, ast.ImportFrom))
        or isinstance(st, ast.Expr) and called(st.value, "glue")
        or isinstance(st, ast.Assign) and called(st.value, "start")
        for st in body)


def test_is_plumbing():
    assert is_plumbing("%matplotlib inline\nimport numpy as np\nfrom x import y")
    assert is_plumbing("from qpmlib.book.chapter import start\n\nprof = start(profile)")
    assert is_plumbing("glue('a', 1)\nglue('b', 2)")
    assert not is_plumbing("import numpy as np\nnp.ones(3)")
    assert not is_plumbing("table = summarise(records)")
    assert not is_plumbing("")


def test_plumbing_cells_hide_their_code_and_widgets_their_output():
    hidden = 0
    for chapter in chapters():
        for cell in json.loads(chapter.source.read_text())["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])
            if cell["cell_type"] != "code" or "parameters" in tags:
                continue
            source = "".join(cell["source"])
            if is_plumbing(source):
                assert {"hide-input", "remove-input", "remove-cell"} & set(tags), (
                    f"{chapter.name}: plumbing cell {source[:50]!r} shows its code; tag it hide-input")
                hidden += 1
            if "remove-output" in tags:
                assert "hide-input" in tags, f"{chapter.name}: the live widget cell {source[:50]!r} shows its code"
    assert hidden >= len(chapters())  # at least every chapter's start cell
