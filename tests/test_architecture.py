"""The shape of the code: imports run one way, and the method knows nothing of files, BIDS or Nipype.

Every import is read with ``ast``, including those inside functions (a lazy import only hides a
circle), so a cycle anywhere in ``diffdeur_bids`` fails here with the modules that form it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffdeur_bids"
# What enhance/ must not import: BIDS, Nipype, image files, file and path handling, serialised weights.
FORBIDDEN_IN_ENHANCE = {"bids", "nipype", "nibabel", "pathlib", "os", "shutil", "io", "csv", "glob", "tempfile",
                        "pickle", "safetensors", "h5py", "click"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in the file; relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                target = f"{base}.{alias.name}"
                found.append((target if target in known else base, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: {m for m, _ in _imports(name, path, known) if m in known and m != name}
            for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = _graph()
    assert "diffdeur_bids.enhance.api" in graph and graph["diffdeur_bids.enhance.api"]  # the graph was read
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_enhance_imports_run_one_way():
    """The layers of the method, lowest first: a module imports only from layers below it."""
    layers = [
        {"errors", "linalg", "settings", "grids", "rigid", "progress"},
        {"devices", "normalise", "forward", "noise", "acquisition"},
        {"stacks"},
        {"inr", "prior", "registration"},
        {"fusion", "upsampler"},
        {"problem"},
        {"hqs", "alignment"},
        {"baselines", "start"},
        {"diffdeur"},
        {"methods"},
        {"api"},
    ]
    rank = {f"diffdeur_bids.enhance.{m}": i for i, layer in enumerate(layers) for m in layer}
    graph = _graph()
    enhance = {m for m in graph if m.startswith("diffdeur_bids.enhance.")}
    assert enhance == set(rank), f"modules missing from the layers above: {sorted(enhance ^ set(rank))}"
    upward = [(m, t) for m in enhance for t in graph[m] if t in rank and rank[t] >= rank[m]]
    assert not upward, f"imports that do not go down a layer: {upward}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "enhance").glob("*.py")), ids=lambda p: p.name)
def test_enhance_knows_nothing_of_files_bids_or_nipype(path):
    name = _module_name(path)
    modules = _modules()
    bad = []
    for target, line in _imports(name, path, set(modules)):
        top = target.split(".")[0]
        outside = target.startswith("diffdeur_bids") and not target.startswith("diffdeur_bids.enhance")
        if top in FORBIDDEN_IN_ENHANCE or outside:
            bad.append(f"line {line}: import {target}")
    tree = ast.parse(path.read_text())
    bad += [f"line {n.lineno}: open()" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"]
    assert not bad, f"{path.name}: " + "; ".join(bad)
