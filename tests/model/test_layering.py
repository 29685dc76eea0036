"""How ``model/`` is layered: it never reaches the service, and its modules import one another one way.

The import graph is read from the source with ``ast``, function-level imports included, so a cycle
cannot hide behind an import inside a function. An edge goes to the module an import statement
names (``from .weights import save_weights`` -> ``model.io.weights``; ``from . import create_model``
-> ``model``). Parent packages are not edges: Python initialises them before their children, and
a package importing its own children is the normal direction.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "model"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str, path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, anywhere in it (``from P import n`` gives ``P.n`` and ``P``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """``model`` module -> the ``model`` modules it imports (the longest prefix that is one of ours)."""
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in imported_names(name, path):
            parts = imported.split(".")
            for end in range(len(parts), 0, -1):
                if ".".join(parts[:end]) in MODULES:
                    targets.add(".".join(parts[:end]))
                    break
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node) :] + [node]
        if node in done:
            return None
        stack.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "model.io.weights" in graph["model"]  # from .io.weights import ... (package __init__)
    assert {"model.io.tf_checkpoint", "model.io.weights", "model.registry"} <= graph["model.io.convert"]
    assert "model.io.fetch" in graph["model.weights"]  # absolute import in the entry point
    assert "model" in graph["model.ensemble"]  # `from . import create_model`, inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_model_modules_import_one_another_without_a_cycle():
    assert find_cycle(import_graph()) is None


def test_weight_io_goes_one_way():
    graph = import_graph()
    # the TF checkpoint reader is numpy alone: its modules import one another and nothing else
    reader = {"model.io.tf_checkpoint", "model.io.tf_bundle_index", "model.io.crc32c", "model.io.tf_saved_model"}
    assert {"model.io.tf_bundle_index", "model.io.crc32c"} <= graph["model.io.tf_checkpoint"]
    assert {"model.io.tf_checkpoint", "model.io.tf_bundle_index"} <= graph["model.io.tf_saved_model"]
    assert "model.io.tf_saved_model" in graph["model.io.convert"]
    assert "model.io.tf_saved_model" not in graph["model.io.tf_checkpoint"]
    assert all(graph[name] <= reader for name in reader)
    assert not {"model.io.convert", "model.io.fetch"} & graph["model.io.weights"]
    assert "model.io.fetch" not in graph["model.io.convert"]


def test_only_the_training_group_and_its_entry_points_import_it():
    entry_points = {"model.train", "model.evaluate"}
    for name, targets in import_graph().items():
        if name in entry_points or name.startswith("model.training"):
            continue
        assert not {t for t in targets if t.startswith("model.training")}, f"{name} imports training code"


def test_model_source_never_names_the_service():
    for name, path in MODULES.items():
        service = sorted(n for n in imported_names(name, path) if n.split(".")[0] == "service")
        assert not service, f"{name} imports {service}"


def test_importing_every_model_module_loads_nothing_of_the_service():
    script = (
        "import importlib, json, sys\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'service' or m.startswith('service.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
