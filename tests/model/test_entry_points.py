"""Every ``python -m model...`` command the documentation shows runs as written, without a warning.

``python -m model.X`` warns (``'model.X' found in sys.modules``) when importing the package
``model`` already imported ``model.X``: the entry points must stay out of ``model/__init__``'s
imports, which the import graph shows without running anything.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .test_layering import MODULES, REPO, import_graph

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m (model(?:\.\w+)*)")
DOCUMENTED = sorted({name for path in DOCUMENTS for name in COMMAND.findall(path.read_text())})


def reachable_from(start: str) -> set[str]:
    graph, seen, todo = import_graph(), set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_documented_commands_are_found():
    assert {"model.convert", "model.evaluate", "model.train", "model.weights"} <= set(DOCUMENTED)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_entry_point_is_a_main_module_that_the_package_does_not_import(name):
    assert name in MODULES, f"the documentation runs `python -m {name}`, which does not exist"
    assert '__name__ == "__main__"' in MODULES[name].read_text(), f"{name} has no __main__ block"
    assert name not in reachable_from("model"), f"`import model` imports {name}: `-m {name}` would warn"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_entry_point_prints_its_help_without_a_warning(name):
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", name, "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {name} ")
    assert "Warning" not in result.stderr, result.stderr
