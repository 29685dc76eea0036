"""How ``service/`` is layered: no import cycle among its modules (``TYPE_CHECKING`` imports aside,
function-level imports included), the store and the sources never reach up to the session
service or the API, and only the worker's runner and bank (and the registry, which builds
models) import torch."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "service"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                lines.add(getattr(child, "lineno", -1))
    return lines


def imports(name: str) -> set[str]:
    """The modules ``name`` imports (absolute names, ours or not), outside ``if TYPE_CHECKING``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                root = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{root}.{base}" if base else root
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def ours(names: set[str], self_name: str) -> set[str]:
    targets = set()
    for imported in names:
        parts = imported.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in MODULES:
                targets.add(".".join(parts[:end]))
                break
    targets.discard(self_name)
    # A package's __init__ is initialised before its children: importing a parent is no edge.
    return {t for t in targets if not self_name.startswith(t + ".")}


GRAPH = {name: ours(imports(name), name) for name in MODULES}


def test_no_import_cycle_in_the_service():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name)


def test_lower_layers_never_reach_up():
    for name, targets in GRAPH.items():
        if name.startswith(("service.store", "service.sources", "service.worker")):
            up = {t for t in targets if t.startswith(("service.api", "service.sessions", "service.hub"))}
            assert not up, f"{name} imports {up}"
        if name.startswith("service.store"):
            assert not {t for t in targets if t.startswith(("service.sources", "service.worker"))}, name


def test_only_the_runner_bank_and_registry_import_torch():
    torch_users = {name for name in MODULES if any(n == "torch" or n.startswith("torch.") for n in imports(name))}
    assert torch_users <= {"service.worker.runner", "service.worker.bank", "service.registry", "service.api.app"}, \
        torch_users
