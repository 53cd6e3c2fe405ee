"""Imports point one way: ``dfseg.reporting`` may use ``dfseg.evaluation``, never the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dfseg.evaluation

EVALUATION = Path(dfseg.evaluation.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names, function-local ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_evaluation_module_names_reporting():
    for path in sorted(EVALUATION.glob("*.py")):
        offending = sorted(n for n in _imported_modules(path) if n.split(".")[:2] == ["dfseg", "reporting"])
        assert not offending, f"{path.name} imports {offending}"


def test_importing_all_of_evaluation_loads_no_reporting_module():
    code = ("import importlib, pkgutil, sys, dfseg.evaluation as e\n"
            "for m in pkgutil.iter_modules(e.__path__): importlib.import_module(f'dfseg.evaluation.{m.name}')\n"
            "print(sorted(n for n in sys.modules if n.startswith('dfseg.reporting')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"
