"""The shape of the code base: thin Snakemake scripts, modules and stage functions of a
readable size.

The import rules between the library's modules are import-linter contracts
(``[tool.importlinter]`` in pyproject.toml, run by ``lint-imports``); these checks read
the sources with :mod:`ast` alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
LIBRARY = ROOT / "src" / "kappadiff"
STAGES = LIBRARY / "stages"

#: The most lines a module of the library may have.
MAX_MODULE_LINES = 700
#: The most lines a function of a stage module may have, ``def`` to its last line.
MAX_STAGE_FUNCTION_LINES = 80


def _kappadiff_imports(tree: ast.Module) -> Iterator[str]:
    """Every kappadiff module a source imports, as a dotted name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "kappadiff":
            # `from kappadiff import stats` imports the module kappadiff.stats
            names = [f"kappadiff.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        yield from (n for n in names if n == "kappadiff" or n.startswith("kappadiff."))


def _is_adapter_import(name: str) -> bool:
    return name in ("kappadiff.logs", "kappadiff.stages") or name.startswith("kappadiff.stages.")


def test_scripts_are_thin_adapters():
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert scripts
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in scripts
        for name in _kappadiff_imports(ast.parse(path.read_text(), str(path)))
        if not _is_adapter_import(name)
    ]
    assert not wrong, (
        "scripts import only kappadiff.logs and kappadiff.stages.*; the science lives below "
        "the stages:\n" + "\n".join(wrong)
    )


def test_no_library_module_is_over_the_size_limit():
    lines = {path: len(path.read_text().splitlines()) for path in LIBRARY.rglob("*.py")}
    assert lines
    too_long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path, n in sorted(lines.items())
        if n > MAX_MODULE_LINES
    ]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(too_long)


def test_no_stage_function_is_over_the_size_limit():
    modules = sorted(STAGES.glob("*.py"))
    assert modules
    too_long = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_STAGE_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n}")
    message = f"stage functions over {MAX_STAGE_FUNCTION_LINES} lines:\n" + "\n".join(too_long)
    assert not too_long, message
